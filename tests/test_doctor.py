"""`claude-agent-service doctor` against good and broken set-ups, and /health/ready."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAKE_CLAUDE, cli, git, make_remote, start_server

GOOD_TOKEN = "a-token-of-sixteen-or-more-characters"


@pytest.fixture
def good(tmp_path: Path) -> dict[str, str]:
    """A set-up where every check passes: the (fake) CLI, a key, a clone of a
    reachable remote, a writable DATA_DIR, a long token."""
    remote = make_remote(tmp_path)
    workspace = tmp_path / "ws"
    git("clone", "--quiet", str(remote), str(workspace), cwd=tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    return {
        "API_BEARER_TOKEN": GOOD_TOKEN,
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "WORKSPACE_DIR": str(workspace),
        "DATA_DIR": str(tmp_path / "data"),
        "HOME": str(home),
        "CLAUDE_PERMISSION_MODE": "acceptEdits",
    }


def doctor(env: dict[str, str | None], cwd: Path) -> tuple[int, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    full = {k: v for k, v in {**base, **env}.items() if v is not None}
    done = cli("doctor", "--json", env=full, cwd=cwd)
    return done.returncode, json.loads(done.stdout)


def failing(result: dict) -> dict[str, dict]:
    return {c["name"]: c for c in result["checks"] if not c["ok"]}


def test_a_good_set_up_passes_every_check(good: dict[str, str], tmp_path: Path) -> None:
    code, result = doctor(good, tmp_path)
    assert code == 0 and result["ok"] is True, result
    checks = {c["name"]: c["detail"] for c in result["checks"]}
    assert "2.1.330 (Claude Code) (the version the tests pin)" in checks["claude cli"]
    assert checks["credential"] == "ANTHROPIC_API_KEY is set"
    assert checks["workspace"].endswith("on branch main")
    assert checks["remote"].endswith("answers")
    text = cli("doctor", env={**good}, cwd=tmp_path)
    assert text.returncode == 0 and "✓ token:" in text.stdout
    assert text.stdout.strip().endswith("all checks passed")


@pytest.mark.parametrize(
    ("broken", "check", "fix"),
    [
        ({"CLAUDE_BIN": "no-such-claude"}, "claude cli", "make claude-cli"),
        ({"ANTHROPIC_API_KEY": None}, "credential", "ANTHROPIC_API_KEY"),
        ({"API_BEARER_TOKEN": "short"}, "token", "openssl rand -hex 32"),
    ],
)
def test_each_broken_part_fails_with_its_fix(
    good: dict[str, str], tmp_path: Path, broken: dict[str, str | None], check: str, fix: str
) -> None:
    code, result = doctor({**good, **broken}, tmp_path)
    assert code == 1 and result["ok"] is False
    assert set(failing(result)) == {check}
    assert fix in failing(result)[check]["fix"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the CLI refuses bypassPermissions only as root")
def test_root_with_bypass_permissions_needs_is_sandbox(
    good: dict[str, str], tmp_path: Path
) -> None:
    env = {**good, "CLAUDE_PERMISSION_MODE": "bypassPermissions", "IS_SANDBOX": None}
    code, result = doctor(env, tmp_path)
    assert code == 1 and "IS_SANDBOX=1" in failing(result)["permissions"]["fix"]
    assert doctor({**env, "IS_SANDBOX": "1"}, tmp_path)[0] == 0


def test_a_workspace_that_is_not_a_repository_fails(good: dict[str, str], tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("data")
    code, result = doctor({**good, "WORKSPACE_DIR": str(plain)}, tmp_path)
    assert code == 1
    assert failing(result)["workspace"]["detail"] == f"{plain} is not a git repository"
    assert "point WORKSPACE_DIR at a git work tree" in failing(result)["workspace"]["fix"]


def test_an_unreachable_remote_fails(good: dict[str, str], tmp_path: Path) -> None:
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=Path(good["WORKSPACE_DIR"]))
    code, result = doctor(good, tmp_path)
    assert code == 1
    assert "cannot be reached" in failing(result)["remote"]["detail"]
    assert "check the URL and its credentials" in failing(result)["remote"]["fix"]


def test_readiness_answers_503_with_the_failing_checks(
    good: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(good, tmp_path / "s.log")
    try:
        ready = httpx.get(f"{server.base_url}/health/ready")  # no token needed
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        (Path(good["WORKSPACE_DIR"]) / ".git").rename(tmp_path / "moved-git")
        not_ready = httpx.get(f"{server.base_url}/health/ready")
        assert not_ready.status_code == 503
        body = not_ready.json()
        assert body["error"] == "not ready" and body["detail"].startswith("workspace: ")
        assert [c["name"] for c in body["checks"] if not c["ok"]] == ["workspace"]
    finally:
        server.stop()
