"""The command line and start-up checks, run as a user runs them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli import EXIT_CODE_MEANINGS
from app.redact import redact
from app.settings import setting_rows
from app.workspace.bootstrap import ensure_workspace
from app.workspace.git import WorkspaceError
from tests.conftest import TOKEN, cli, free_port, git, read_log, start_server, wait_until
from tests.jobs.helpers import submit, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_serve_refuses_to_start_without_a_token(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**service_env, "API_BEARER_TOKEN": ""}
    done = cli("serve", "--port", "0", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "API_BEARER_TOKEN is not set" in done.stderr


@pytest.mark.parametrize(
    ("setting", "value", "line"),
    [
        (
            "CHAT_TIMEOUT_SECONDS",
            "soon",
            "CHAT_TIMEOUT_SECONDS: Input should be a valid number, unable to parse string "
            "as a number (got 'soon')",
        ),
        (
            "CLAUDE_PERMISSION_MODE",
            "yolo",
            "CLAUDE_PERMISSION_MODE: Input should be 'acceptEdits', 'auto', "
            "'bypassPermissions', 'manual', 'dontAsk' or 'plan' (got 'yolo')",
        ),
        (
            "DEFAULT_MODEL",
            "gpt-4o",
            "DEFAULT_MODEL 'gpt-4o' is not among SUPPORTED_MODELS (haiku, sonnet, opus): "
            "add it there, or choose one of them",
        ),
        ("CLAUDE_BIN", "README.md", "CLAUDE_BIN README.md is not an executable file"),
    ],
)
def test_serve_refuses_a_setting_that_cannot_work_with_one_readable_line(
    service_env: dict[str, str], tmp_path: Path, setting: str, value: str, line: str
) -> None:
    if setting == "CLAUDE_BIN":
        (tmp_path / value).write_text("not a program")
        value = str(tmp_path / value)
        line = line.replace("README.md", value)
    done = cli("serve", env={**service_env, setting: value}, cwd=tmp_path)
    assert done.returncode == 2
    assert f"claude-agent-service: {line}\n" in done.stderr
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before it touched anything


def test_serve_without_a_cli_says_how_to_get_one(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**service_env, "CLAUDE_BIN": "claude", "PATH": "/usr/bin:/bin"}
    done = cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "the Claude CLI 'claude' was not found (CLAUDE_BIN, PATH)" in done.stderr
    assert "make claude-cli" in done.stderr


def test_a_second_serve_on_the_same_data_dir_refuses_before_touching_anything(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    first = start_server(service_env, tmp_path / "first.log")
    try:
        with first.client() as client:
            job_id = submit(client, "@fake:sleep=2 first")
            wait_for(client, job_id, {"running"})
            second = cli("serve", "--port", "0", env=service_env, cwd=tmp_path)
            assert second.returncode == 4
            data_dir = (tmp_path / "data").resolve()
            assert (
                f"claude-agent-service: another claude-agent-service (pid {first.proc.pid}) "
                f"is serving DATA_DIR {data_dir}; stop it first, or give this one a DATA_DIR "
                "of its own\n"
            ) == second.stderr
            job = wait_for(client, job_id)
        assert job["status"] == "completed"  # no recovery ran: it was not interrupted
        assert "interrupted" not in first.log()
        assert len(read_log(fake_log)) == 1
    finally:
        first.stop()


def test_a_busy_port_refuses_before_any_recovery_runs(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--port", str(port), env=service_env, cwd=tmp_path)
    assert done.returncode == 5
    assert done.stderr == (
        f"claude-agent-service: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(HOST, PORT, --port)\n"
    )
    assert not (tmp_path / "data" / "jobs.sqlite3").exists()


def test_a_dotenv_gives_the_agent_its_variables_but_never_the_services_secrets(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    (tmp_path / ".env").write_text(
        "API_BEARER_TOKEN=from-dotenv\n"
        "ANTHROPIC_API_KEY=sk-ant-from-dotenv\n"
        "CLAUDE_CODE_MAX_RETRIES=2\n"
        "AWS_REGION=eu-west-1\n"
        "HTTPS_PROXY=http://proxy.example:3128\n"
        "GIT_REPO_URL=https://u:p@git.example.invalid/x.git\n"
        "SOMETHING_ELSE=no\n"
    )
    env: dict[str, str | None] = {**service_env, "API_BEARER_TOKEN": None}
    server = start_server(env, tmp_path / "s.log", cwd=tmp_path)
    try:
        headers = {"Authorization": "Bearer from-dotenv"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            assert wait_for(client, submit(client, "hi"))["status"] == "completed"
    finally:
        server.stop()
    (call,) = read_log(fake_log)
    assert call["anthropic_api_key"] == "sk-ant-from-dotenv"
    names = set(call["env_names"])
    assert {"CLAUDE_CODE_MAX_RETRIES", "AWS_REGION", "HTTPS_PROXY"} <= names
    assert not names & {"API_BEARER_TOKEN", "SOMETHING_ELSE", "GIT_REPO_URL"}


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
    env["DEFAULT_MODEL"] = "opus"
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
    assert done.stdout.strip() == "from-dotenv ('haiku', 'opus')"


def test_ensure_workspace_leaves_an_existing_repository_alone(workspace: Path) -> None:
    (workspace / "file.txt").write_text("x")
    ensure_workspace(workspace)
    assert (workspace / "file.txt").read_text() == "x"


def test_ensure_workspace_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(WorkspaceError, match="not a directory"):
        ensure_workspace(target)


def test_help_lists_every_setting_and_the_exit_codes(tmp_path: Path) -> None:
    done = cli("--help", env={}, cwd=tmp_path)
    assert done.returncode == 0 and "serve" in done.stdout
    serve_help = cli("serve", "--help", env={}, cwd=tmp_path)
    assert serve_help.returncode == 0
    for name, default, description in setting_rows():
        assert f"  {name} (default: {default})\n      {description}\n" in serve_help.stdout
    assert "  CHAT_TIMEOUT_SECONDS (default: 900)\n" in serve_help.stdout
    for code in (1, 2, 3, 4, 5):
        assert f"\n  {code}  " in serve_help.stdout
    version = subprocess.run(
        [Path(sys.executable).parent / "claude-agent-service", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.strip()
    assert cli(env={}, cwd=tmp_path).returncode == 2  # a command is required


def test_the_readme_documents_every_setting_and_exit_code() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name, _, _ in setting_rows():
        assert f"| `{name}` |" in readme or f"`{name}` /" in readme or f"/ `{name}` |" in readme
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert f"| {code.value} | {meaning} |" in readme


def test_credentials_in_urls_are_redacted() -> None:
    text = "fatal: unable to access 'https://user:s3cret@example.com/repo.git/': failed"
    assert redact(text) == "fatal: unable to access 'https://***@example.com/repo.git/': failed"
    assert redact("git@github.com:org/repo.git") == "git@github.com:org/repo.git"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_serve_without_a_cli_installs_the_pinned_one_and_serves(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """The README's first command on a machine with no `claude`: `make serve`
    installs the pinned CLI (from npm's cache, if it has it) and serves."""
    if shutil.which("npm") is None or shutil.which("make") is None:
        pytest.skip("needs make and npm")
    port = free_port()
    path = ":".join(d for d in os.environ["PATH"].split(":") if not (Path(d) / "claude").exists())
    env = {k: v for k, v in os.environ.items() if k != "CLAUDE_BIN"}
    env.update(
        PATH=path,
        API_BEARER_TOKEN=TOKEN,
        WORKSPACE_DIR=service_env["WORKSPACE_DIR"],
        DATA_DIR=service_env["DATA_DIR"],
        PORT=str(port),
    )
    cli_dir = tmp_path / "claude-cli"
    log = (tmp_path / "make.log").open("wb")
    make = subprocess.Popen(
        ["make", "-C", str(ROOT), "serve", f"CLAUDE_CLI_DIR={cli_dir}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: make.poll() is not None or _health(port),
            "make serve answers /health",
            timeout_s=240,
        )
        output = (tmp_path / "make.log").read_text()
        assert make.poll() is None, output
        assert "using the pinned CLI" in output
        assert (cli_dir / "node_modules/.bin/claude").exists()
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(30)
        log.close()


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
