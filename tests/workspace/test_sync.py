"""`run_git_sync` against real git: a local bare remote and a second clone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import main as app_main
from app.workspace.sync import FetchThrottle, sync_workspace
from tests.conftest import git, make_remote, push_change


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare remote with one commit on main, and the workspace (ws) cloned from it."""
    bare = make_remote(tmp_path)
    git("clone", "--quiet", str(bare), str(tmp_path / "ws"), cwd=tmp_path)
    return bare


async def test_sync_picks_up_a_commit_pushed_by_someone_else(remote: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    push_change(remote, tmp_path, "news.txt", "fresh\n")
    assert await sync_workspace(ws, timeout_s=30) is None
    assert (ws / "news.txt").read_text() == "fresh\n"


async def test_local_uncommitted_changes_survive_the_sync(remote: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "draft.txt").write_text("mine\n")
    (ws / "README").write_text("one\nlocal edit\n")
    push_change(remote, tmp_path, "news.txt", "fresh\n")
    assert await sync_workspace(ws, timeout_s=30) is None
    assert (ws / "news.txt").exists()
    assert (ws / "README").read_text() == "one\nlocal edit\n"
    assert (ws / "draft.txt").read_text() == "mine\n"


async def test_a_conflict_aborts_the_rebase_and_keeps_the_local_state(
    remote: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    (ws / "README").write_text("local\n")
    git("-c", "user.name=l", "-c", "user.email=l@l", "commit", "--quiet", "-am", "local", cwd=ws)
    head = git("rev-parse", "HEAD", cwd=ws)
    push_change(remote, tmp_path, "README", "theirs\n")
    error = await sync_workspace(ws, timeout_s=30)
    assert error and "conflict" in error.lower()
    assert git("rev-parse", "HEAD", cwd=ws) == head
    assert git("status", "--porcelain", cwd=ws) == ""
    assert not (ws / ".git" / "rebase-merge").exists()


async def test_a_workspace_without_origin_is_left_alone(workspace: Path) -> None:
    assert await sync_workspace(workspace, timeout_s=5) is None


async def test_an_unreachable_remote_is_an_error_not_a_failure(
    remote: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=ws)
    error = await sync_workspace(ws, timeout_s=30)
    assert error and "gone.git" in error


async def test_a_hanging_remote_is_bounded_by_the_timeout(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    hang = tmp_path / "ssh-that-hangs"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(hang))
    git("remote", "set-url", "origin", "ssh://git.example.invalid/repo.git", cwd=ws)
    started = time.monotonic()
    error = await sync_workspace(ws, timeout_s=1)
    assert error == "git fetch timed out after 1s (GIT_SYNC_TIMEOUT_SECONDS)"
    assert time.monotonic() - started < 10


async def test_run_git_sync_honours_git_sync_false(
    remote: Path, tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    monkeypatch.setenv("WORKSPACE_DIR", str(ws))
    monkeypatch.setenv("GIT_SYNC", "false")
    app_main.get_settings.cache_clear()
    push_change(remote, tmp_path, "news.txt", "fresh\n")
    await app_main.run_git_sync()
    assert not (ws / "news.txt").exists()
    monkeypatch.setenv("GIT_SYNC", "true")
    app_main.get_settings.cache_clear()
    await app_main.run_git_sync()
    assert (ws / "news.txt").exists()


async def test_bursts_share_one_fetch_within_the_minimum_interval(
    remote: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    throttle = FetchThrottle()
    assert await sync_workspace(ws, timeout_s=30, min_interval_s=3600, throttle=throttle) is None
    push_change(remote, tmp_path, "news.txt", "fresh\n")
    assert await sync_workspace(ws, timeout_s=30, min_interval_s=3600, throttle=throttle) is None
    assert not (ws / "news.txt").exists()  # the burst reused the first fetch
    assert await sync_workspace(ws, timeout_s=30, min_interval_s=0, throttle=throttle) is None
    assert (ws / "news.txt").exists()


async def test_a_failed_fetch_does_not_count_for_the_interval(remote: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    throttle = FetchThrottle()
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=ws)
    assert await sync_workspace(ws, timeout_s=30, min_interval_s=3600, throttle=throttle)
    git("remote", "set-url", "origin", str(remote), cwd=ws)
    push_change(remote, tmp_path, "news.txt", "fresh\n")
    assert await sync_workspace(ws, timeout_s=30, min_interval_s=3600, throttle=throttle) is None
    assert (ws / "news.txt").exists()
