"""What the agent may leave behind in its git workspace, handled without loss.

Real git, local bare remotes; `publish` and `sync_workspace` called directly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from app.redact import redact
from app.workspace.git import NOT_A_REPOSITORY
from app.workspace.publish import GitReport, publish
from app.workspace.sync import sync_workspace
from tests.conftest import git, make_remote, push_change

AUTHOR = ("Claude Agent Service", "agent-service@localhost")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace cloned from a bare remote (README "one") on main."""
    remote = make_remote(tmp_path)
    path = tmp_path / "ws"
    git("clone", "--quiet", str(remote), str(path), cwd=tmp_path)
    return path


def commit(path: Path, name: str, text: str, message: str) -> None:
    (path / name).write_text(text)
    git("add", name, cwd=path)
    git("-c", "user.name=a", "-c", "user.email=a@a", "commit", "--quiet", "-m", message, cwd=path)


async def run_publish(ws: Path, run_id: str = "run-1") -> GitReport:
    report = GitReport()
    await publish(
        ws,
        report,
        branch="main",
        subject=f"agent: test ({run_id})",
        run_id=run_id,
        author=AUTHOR,
        timeout_s=30,
    )
    return report


async def test_a_sync_whose_stashed_changes_conflict_restores_the_local_state(
    ws: Path, tmp_path: Path
) -> None:
    head = git("rev-parse", "HEAD", cwd=ws)
    (ws / "README").write_text("local edit\n")
    push_change(tmp_path / "remote.git", tmp_path, "README", "theirs\n")
    error = await sync_workspace(ws, timeout_s=30)
    assert error is not None and "kept the local state" in error
    assert (ws / "README").read_text() == "local edit\n"  # no conflict markers
    assert git("rev-parse", "HEAD", cwd=ws) == head
    assert git("stash", "list", cwd=ws) == ""
    assert git("ls-files", "--unmerged", cwd=ws) == ""


async def test_a_rebase_left_in_progress_is_saved_whole_and_undone(
    ws: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    commit(ws, "README", "mine\n", "mine")
    push_change(remote, tmp_path, "README", "theirs\n")
    git("fetch", "--quiet", cwd=ws)
    with pytest.raises(subprocess.CalledProcessError):  # the agent's rebase hit a conflict
        git("rebase", "origin/main", cwd=ws)
    (ws / "new.txt").write_text("written mid-rebase\n")
    report = await run_publish(ws)
    aside = "agent-service/run-1"
    assert report.pushed and report.branch == aside
    assert "in the middle of a rebase" in (report.push_error or "")
    assert git("show", f"{aside}:new.txt", cwd=remote) == "written mid-rebase"
    assert "<<<<<<<" in git("show", f"{aside}:README", cwd=remote)  # the conflict, as left
    assert git("rev-parse", "refs/agent-service/run-1", cwd=ws) == report.commits[0]
    assert git("symbolic-ref", "--short", "HEAD", cwd=ws) == "main"
    assert git("status", "--porcelain", cwd=ws) == ""
    assert not (ws / ".git" / "rebase-merge").exists()


async def test_a_detached_head_is_saved_and_the_branch_restored(ws: Path, tmp_path: Path) -> None:
    git("checkout", "--quiet", "--detach", cwd=ws)
    commit(ws, "detached.txt", "on no branch\n", "detached work")
    report = await run_publish(ws, "run-2")
    assert report.pushed and report.branch == "agent-service/run-2"
    assert "detached HEAD" in (report.push_error or "")
    saved = git("show", "agent-service/run-2:detached.txt", cwd=tmp_path / "remote.git")
    assert saved == "on no branch"
    assert git("symbolic-ref", "--short", "HEAD", cwd=ws) == "main"


async def test_the_agents_hooks_and_fsmonitor_never_run(ws: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "prepare-commit-msg", "post-commit", "pre-push"):
        script = ws / ".git" / "hooks" / hook
        script.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        script.chmod(0o755)
    git("config", "core.fsmonitor", f"echo fsmonitor >> {marker}; false", cwd=ws)
    (ws / "work.txt").write_text("agent work\n")
    report = await run_publish(ws)
    assert report.pushed and report.branch == "main"
    assert not marker.exists()


async def test_a_deleted_git_dir_never_leads_git_to_a_parent_repository(tmp_path: Path) -> None:
    parent = tmp_path / "service-checkout"
    parent.mkdir()
    git("init", "--quiet", cwd=parent)
    commit(parent, "config.py", "SECRET = 1\n", "service")
    (parent / "local.txt").write_text("operator's uncommitted file\n")
    workspace = parent / "workspace"
    workspace.mkdir()  # no .git: the agent deleted it
    (workspace / "agent.txt").write_text("x\n")
    before = git("status", "--porcelain", cwd=parent)
    assert await sync_workspace(workspace, timeout_s=30) == NOT_A_REPOSITORY
    report = await run_publish(workspace)
    assert not report.pushed and report.commits == []
    assert report.push_error == NOT_A_REPOSITORY
    assert (workspace / "agent.txt").read_text() == "x\n"
    assert git("status", "--porcelain", cwd=parent) == before
    assert git("rev-list", "--count", "HEAD", cwd=parent) == "1"


async def test_a_failed_commit_still_pushes_the_agents_own_commits(
    ws: Path, tmp_path: Path
) -> None:
    commit(ws, "own.txt", "committed by the agent\n", "agent's own commit")
    (ws / "loose.txt").write_text("uncommitted\n")
    git("init", "--quiet", str(ws / "nested"), cwd=ws)  # git cannot add a repo with no commit
    report = await run_publish(ws)
    assert report.push_error and report.push_error.startswith("git commit failed")
    assert report.pushed and report.branch == "main"
    assert git("show", "main:own.txt", cwd=tmp_path / "remote.git") == "committed by the agent"
    assert (ws / "loose.txt").exists()  # kept, for the next run to commit


async def test_a_stale_index_lock_is_cleared_and_the_work_committed(
    ws: Path, tmp_path: Path
) -> None:
    (ws / "loose.txt").write_text("uncommitted\n")
    (ws / ".git" / "index.lock").write_text("")  # a git the agent killed left its lock
    report = await run_publish(ws)
    assert report.push_error is None and report.pushed
    assert git("show", "main:loose.txt", cwd=tmp_path / "remote.git") == "uncommitted"
    assert not (ws / ".git" / "index.lock").exists()


async def test_config_the_agent_planted_neither_runs_nor_blocks_commits(
    ws: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.sh"
    planted.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\nexit 1\n')
    planted.chmod(0o755)
    for key, value in [
        ("commit.gpgSign", "true"),  # with a signing program that fails
        ("gpg.program", str(planted)),
        ("remote.origin.receivepack", str(planted)),
        ("remote.origin.uploadpack", str(planted)),
        ("core.worktree", str(tmp_path)),  # would commit the service's files
        ("core.bare", "true"),
    ]:
        git("config", key, value, cwd=ws)
    (ws / "work.txt").write_text("the agent's work\n")
    report = await run_publish(ws)
    assert await sync_workspace(ws, timeout_s=30) is None
    remote = tmp_path / "remote.git"
    assert report.pushed and report.push_error is None, report
    assert git("show", "main:work.txt", cwd=remote) == "the agent's work"
    assert git("ls-tree", "--name-only", "main", cwd=remote).split() == ["README", "work.txt"]
    assert not marker.exists()


def test_redaction_covers_at_signs_in_passwords_and_keeps_json_intact() -> None:
    assert redact("https://u:p@ss@host/x.git") == "https://***@host/x.git"
    assert redact("ssh://git:pw@host:22/r") == "ssh://***@host:22/r"
    assert redact("https://github.com/org/repo") == "https://github.com/org/repo"
    line = json.dumps({"a": "https://x.com", "b": "me@y.org"}, separators=(",", ":"))
    assert redact(line) == line  # never across a quote
    event = json.dumps({"text": "cloned https://bot:hunter2@git.example/r.git"})
    assert json.loads(redact(event))["text"] == "cloned https://***@git.example/r.git"


async def test_a_rescue_whose_push_fails_keeps_the_work_in_a_local_ref(
    ws: Path, tmp_path: Path
) -> None:
    git("checkout", "--quiet", "--detach", cwd=ws)
    (ws / "stranded.txt").write_text("only here\n")
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=ws)
    report = await run_publish(ws, "run-3")
    assert not report.pushed
    assert "local ref only" in (report.push_error or "")
    saved = report.commits[0]
    assert git("rev-parse", "refs/agent-service/run-3", cwd=ws) == saved
    assert git("show", f"{saved}:stranded.txt", cwd=ws) == "only here"
    assert git("symbolic-ref", "--short", "HEAD", cwd=ws) == "main"
    assert git("status", "--porcelain", cwd=ws) == ""


async def test_refs_the_agent_names_like_the_branch_do_not_shadow_it(
    ws: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    root = git("rev-list", "--max-parents=0", "HEAD", cwd=ws)
    push_change(remote, tmp_path, "theirs.txt", "pushed meanwhile\n")
    git("tag", "main", root, cwd=ws)  # `main` is now ambiguous
    git("branch", "origin/main", root, cwd=ws)  # and so is `origin/main`
    (ws / "work.txt").write_text("the agent's work\n")
    report = await run_publish(ws)
    assert report.pushed and report.branch == "main" and report.push_error is None, report
    assert git("show", "main:work.txt", cwd=remote) == "the agent's work"
    assert git("show", "main:theirs.txt", cwd=remote) == "pushed meanwhile"
    assert await sync_workspace(ws, timeout_s=30, branch="main") is None
    assert (ws / "theirs.txt").exists()
