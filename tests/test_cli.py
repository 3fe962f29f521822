"""The command line and start-up checks, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.workspace.git import WorkspaceError, ensure_workspace, redact
from tests.conftest import cli, git, start_server


def test_serve_refuses_to_start_without_a_token(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**service_env, "API_BEARER_TOKEN": ""}
    done = cli("serve", "--port", "0", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "API_BEARER_TOKEN is not set" in done.stderr


def test_serve_refuses_invalid_settings(service_env: dict[str, str], tmp_path: Path) -> None:
    done = cli("serve", env={**service_env, "CHAT_TIMEOUT_SECONDS": "soon"}, cwd=tmp_path)
    assert done.returncode == 2
    assert "chat_timeout_seconds" in done.stderr


def test_serve_refuses_a_non_empty_directory_that_is_not_a_repository(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "somebodys-data"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    done = cli("serve", env={**service_env, "WORKSPACE_DIR": str(data)}, cwd=tmp_path)
    assert done.returncode == 1
    assert "is not empty and is not a git repository" in done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]


def test_a_missing_workspace_is_created_as_a_repository_with_a_commit(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh" / "workspace"
    server = start_server({**service_env, "WORKSPACE_DIR": str(fresh)}, tmp_path / "s.log")
    try:
        assert git("rev-list", "--count", "HEAD", cwd=fresh) == "1"
    finally:
        server.stop()


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("API_BEARER_TOKEN=from-dotenv\nSUPPORTED_MODELS=haiku, opus\n")
    env = {k: v for k, v in os.environ.items() if k not in ("API_BEARER_TOKEN", "SUPPORTED_MODELS")}
    code = "from app.settings import get_settings as g; s = g(); print(s.bearer_token, s.models)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "from-dotenv ('haiku', 'opus', 'sonnet')"


def test_ensure_workspace_leaves_an_existing_repository_alone(workspace: Path) -> None:
    (workspace / "file.txt").write_text("x")
    ensure_workspace(workspace)
    assert (workspace / "file.txt").read_text() == "x"


def test_ensure_workspace_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(WorkspaceError, match="not a directory"):
        ensure_workspace(target)


def test_help_and_version(tmp_path: Path) -> None:
    done = cli("--help", env={}, cwd=tmp_path)
    assert done.returncode == 0 and "serve" in done.stdout
    version = subprocess.run(
        [Path(sys.executable).parent / "claude-agent-service", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.strip()
    assert cli(env={}, cwd=tmp_path).returncode == 2  # a command is required


def test_credentials_in_urls_are_redacted() -> None:
    text = "fatal: unable to access 'https://user:s3cret@example.com/repo.git/': failed"
    assert redact(text) == "fatal: unable to access 'https://***@example.com/repo.git/': failed"
    assert redact("git@github.com:org/repo.git") == "git@github.com:org/repo.git"
