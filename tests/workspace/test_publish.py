"""The agent's work committed and pushed: real git, local bare remotes, real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    FAKE_CLAUDE,
    TOKEN,
    Server,
    cli,
    free_port,
    git,
    make_remote,
    push_change,
    start_server,
    wait_until,
)
from tests.jobs.helpers import submit, wait_for


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


def env_for(tmp_path: Path, remote: Path, name: str = "a", **extra: str) -> dict[str, str]:
    return {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(tmp_path / f"ws-{name}"),
        "DATA_DIR": str(tmp_path / f"data-{name}"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "GIT_REPO_URL": str(remote),
        "GIT_PUSH": "true",
        **extra,
    }


@pytest.fixture
def served(tmp_path: Path, remote: Path) -> Iterator[tuple[Server, Path]]:
    env = env_for(tmp_path, remote)
    server = start_server(env, tmp_path / "server.log")
    yield server, Path(env["WORKSPACE_DIR"])
    server.stop()


def log_of(remote: Path, ref: str = "main") -> list[str]:
    """`subject|author name <email>` of each commit on `ref`, newest first."""
    out = git("log", "--format=%s|%an <%ae>", ref, cwd=remote)
    return out.splitlines()


def test_the_workspace_is_cloned_and_kept_in_sync(
    served: tuple[Server, Path], remote: Path, tmp_path: Path
) -> None:
    server, ws = served
    assert (ws / "README").read_text() == "one\n"
    push_change(remote, tmp_path, "news.txt", "pushed by someone else\n")
    with server.client() as client:
        job = wait_for(client, submit(client, "@fake:read=news.txt"))
    assert job["status"] == "completed"
    assert job["result"] == "pushed by someone else\n"
    assert job["git"]["sync_error"] is None
    assert job["git"]["pushed"] is False and job["git"]["commits"] == []  # nothing written


def test_a_run_that_writes_files_lands_as_one_commit(
    served: tuple[Server, Path], remote: Path
) -> None:
    server, ws = served
    with server.client() as client:
        job_id = submit(client, "Add the notes file\nwith more detail @fake:write=notes/a.txt")
        job = wait_for(client, job_id)
    assert job["status"] == "completed"
    subject = f"agent: Add the notes file ({'job ' + job_id})"
    assert log_of(remote)[0] == f"{subject}|Claude Agent Service <agent-service@localhost>"
    head = git("rev-parse", "main", cwd=remote)
    assert job["git"] == {
        "head_before": job["git"]["head_before"],
        "head_after": head,
        "commits": [head],
        "pushed": True,
        "branch": "main",
        "sync_error": None,
        "push_error": None,
    }
    assert job["git"]["head_before"] == git("rev-parse", "main~1", cwd=remote)
    assert git("show", "main:notes/a.txt", cwd=remote) == "written by fake claude"
    assert git("status", "--porcelain", cwd=ws) == ""


def test_long_first_lines_are_cut_to_72_characters(
    served: tuple[Server, Path], remote: Path
) -> None:
    with served[0].client() as client:
        job_id = submit(client, "x" * 100 + " @fake:write=long.txt")
        wait_for(client, job_id)
    subject = log_of(remote)[0].split("|")[0]
    assert subject == f"agent: {'x' * 71}… (job {job_id})"


def test_a_non_conflicting_push_mid_run_is_rebased_over(
    served: tuple[Server, Path], remote: Path, tmp_path: Path
) -> None:
    server, ws = served
    with server.client() as client:
        job_id = submit(client, "race\n@fake:write=agent.txt @fake:sleep=1.5")
        # mid-run: after the sync, once the agent is at work
        wait_until(lambda: (ws / "agent.txt").exists(), "the agent wrote agent.txt")
        theirs = push_change(remote, tmp_path, "theirs.txt", "theirs\n")
        job = wait_for(client, job_id)
    assert job["git"]["pushed"] is True and job["git"]["branch"] == "main"
    assert job["git"]["push_error"] is None
    subjects = [line.split("|")[0] for line in log_of(remote)]
    assert subjects[:2] == [f"agent: race ({'job ' + job_id})", "theirs.txt"]
    assert git("merge-base", "--is-ancestor", theirs, "main", cwd=remote) == ""
    assert job["git"]["commits"] == [git("rev-parse", "main", cwd=remote)]
    assert (ws / "theirs.txt").exists() and (ws / "agent.txt").exists()


def test_a_conflicting_push_mid_run_lands_on_its_own_branch(
    served: tuple[Server, Path], remote: Path, tmp_path: Path
) -> None:
    server, ws = served
    with server.client() as client:
        job_id = submit(client, "conflict @fake:write=README @fake:sleep=1.5")
        # mid-run: after the sync, once the agent is at work
        wait_until(
            lambda: (ws / "README").read_text() == "written by fake claude\n",
            "the agent wrote README",
        )
        theirs = push_change(remote, tmp_path, "README", "theirs\n")
        job = wait_for(client, job_id)
    aside = f"agent-service/{job_id}"
    assert job["git"]["pushed"] is True and job["git"]["branch"] == aside
    assert "rebase onto origin/main failed" in job["git"]["push_error"]
    assert git("rev-parse", "main", cwd=remote) == theirs
    assert git("show", f"{aside}:README", cwd=remote) == "written by fake claude"
    assert job["git"]["commits"] == [git("rev-parse", aside, cwd=remote)]
    assert git("rev-parse", "HEAD", cwd=ws) == theirs  # the local branch is origin/main
    assert git("status", "--porcelain", cwd=ws) == ""
    with server.client() as client:  # and the next run starts clean and lands on main
        after = wait_for(client, submit(client, "next @fake:write=next.txt"))
    assert after["git"]["branch"] == "main"


def test_an_agent_that_switches_branch_is_set_aside_and_the_workspace_kept_on_its_branch(
    served: tuple[Server, Path], remote: Path
) -> None:
    """GIT_BRANCH unset: the branch checked out at start-up is the one kept."""
    server, ws = served
    with server.client() as client:
        job = wait_for(client, submit(client, "feature @fake:branch=feature @fake:write=f.txt"))
        aside = f"agent-service/{job['job_id']}"
        assert job["git"]["pushed"] is True and job["git"]["branch"] == aside
        assert "on branch feature" in job["git"]["push_error"]
        assert git("show", f"{aside}:f.txt", cwd=remote) == "written by fake claude"
        assert git("symbolic-ref", "--short", "HEAD", cwd=ws) == "main"
        assert git("status", "--porcelain", cwd=ws) == ""
        after = wait_for(client, submit(client, "next @fake:write=next.txt"))
    assert after["git"]["branch"] == "main"
    assert git("show", "main:next.txt", cwd=remote) == "written by fake claude"


def test_git_config_the_agent_wrote_is_undone_before_the_service_runs_git(
    served: tuple[Server, Path], remote: Path, tmp_path: Path
) -> None:
    server, ws = served
    marker = tmp_path / "filter-ran"
    config = (ws / ".git" / "config").read_text()
    with server.client() as client:
        job = wait_for(client, submit(client, f"plant @fake:plant={marker} @fake:write=w.txt"))
    assert job["git"]["pushed"] is True and job["git"]["branch"] == "main"
    assert not marker.exists()  # the service's `git add` ran no filter of the agent's
    assert (ws / ".git" / "config").read_text() == config
    assert git("show", "main:w.txt", cwd=remote) == "written by fake claude"
    assert git("show", "main:.gitattributes", cwd=remote) == "* filter=planted"


def test_a_cancelled_run_still_has_its_work_pushed(
    served: tuple[Server, Path], remote: Path
) -> None:
    server, ws = served
    with server.client() as client:
        job_id = submit(client, "unfinished @fake:write=partial.txt @fake:sleep=60")
        wait_for(client, job_id, {"running"})
        wait_until(lambda: (ws / "partial.txt").exists(), "the agent wrote partial.txt")
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
        job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["git"]["pushed"] is True
    assert git("show", "main:partial.txt", cwd=remote) == "written by fake claude"


def test_a_chat_completion_commits_and_names_the_commit(
    served: tuple[Server, Path], remote: Path
) -> None:
    with served[0].client() as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Write the file @fake:write=chat.txt\nplease"},
                ]
            },
        )
    assert response.status_code == 200, response.text
    completion_id = response.json()["id"]
    assert response.headers["X-Claude-Git-Commit"] == git("rev-parse", "main", cwd=remote)
    assert log_of(remote)[0].split("|")[0] == (
        f"agent: Write the file @fake:write=chat.txt (chat {completion_id})"
    )


def test_two_instances_pushing_to_one_remote_lose_no_commit(tmp_path: Path, remote: Path) -> None:
    servers = [
        start_server(env_for(tmp_path, remote, name), tmp_path / f"{name}.log")
        for name in ("a", "b")
    ]
    try:
        clients = [s.client() for s in servers]
        ids = [
            submit(c, f"{name}-{i} @fake:write={name}-{i}.txt")
            for i in range(10)
            for name, c in zip("ab", clients, strict=True)
        ]
        jobs = [wait_for(clients[n % 2], job_id, timeout_s=60) for n, job_id in enumerate(ids)]
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
    assert all(j["git"]["pushed"] for j in jobs), [j["git"] for j in jobs if not j["git"]["pushed"]]
    subjects = git("log", "--all", "--format=%s", cwd=remote).splitlines()
    landed = {s.split()[1] for s in subjects if s.startswith("agent: ")}
    assert landed == {f"{name}-{i}" for name in "ab" for i in range(10)}


def test_an_unreachable_remote_is_reported_without_its_password(
    tmp_path: Path, remote: Path
) -> None:
    port = free_port()  # nothing listens there
    secret_url = f"http://agent:hunter2@127.0.0.1:{port}/repo.git"
    env = env_for(tmp_path, remote, GIT_SYNC_TIMEOUT_SECONDS="10")
    ws = Path(env["WORKSPACE_DIR"])
    git("clone", "--quiet", str(remote), str(ws), cwd=tmp_path)
    git("remote", "set-url", "origin", secret_url, cwd=ws)  # before start-up: it is kept
    server = start_server(env, tmp_path / "server.log")
    bodies = []
    try:
        with server.client() as client:
            job = wait_for(client, submit(client, "offline @fake:write=offline.txt"))
            bodies.append(client.get(f"/jobs/{job['job_id']}").text)
            bodies.append(client.get("/jobs").text)
            assert job["status"] == "completed"  # the run went on with the local state
            assert "127.0.0.1" in job["git"]["sync_error"]
            assert job["git"]["pushed"] is False and "git push failed" in job["git"]["push_error"]
            assert git("log", "-1", "--format=%s", cwd=ws).startswith("agent: offline")
    finally:
        server.stop()
    required = start_server({**env, "GIT_SYNC_REQUIRED": "true"}, tmp_path / "server2.log")
    try:
        with required.client() as client:
            job = wait_for(client, submit(client, "must sync"))
            bodies.append(client.get(f"/jobs/{job['job_id']}").text)
            assert job["status"] == "failed"
            assert job["error"].startswith("git sync failed (GIT_SYNC_REQUIRED): git fetch failed")
            chat = client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            )
            bodies.append(chat.text)
            assert chat.status_code == 503 and "git fetch failed" in chat.json()["detail"]
    finally:
        required.stop()
    logs = (tmp_path / "server.log").read_text() + (tmp_path / "server2.log").read_text()
    assert "git fetch failed" in logs
    for text in [*bodies, logs]:
        assert "hunter2" not in text


def test_a_failed_clone_refuses_to_start_with_credentials_redacted(tmp_path: Path) -> None:
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "WORKSPACE_DIR": str(tmp_path / "ws"),
        "GIT_REPO_URL": f"http://user:s3cret@127.0.0.1:{free_port()}/nope.git",
    }
    done = cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "git clone failed" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_bootstrap_honours_git_branch(tmp_path: Path) -> None:
    bare = make_remote(tmp_path, branch="trunk")
    env = env_for(tmp_path, bare, GIT_BRANCH="trunk")
    server = start_server(env, tmp_path / "server.log")
    try:
        with server.client() as client:
            job = wait_for(client, submit(client, "on trunk @fake:write=t.txt"))
        assert job["git"]["branch"] == "trunk"
        assert git("show", "trunk:t.txt", cwd=bare) == "written by fake claude"
    finally:
        server.stop()
