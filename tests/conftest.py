"""Shared fixtures: the fake `claude`, a git workspace, settings, a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from app import main as app_main
from app.cli import ExitCode
from app.settings import get_settings

# The throwaway PostgreSQL server and a database per test (postgres_url).
pytest_plugins = ["tests.pgserver"]

FAKES = Path(__file__).parent / "fakes"
FAKE_CLAUDE = FAKES / "claude"
FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "test-token"


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose real part (a CLI, a database server, a mount) cannot be
    had here; where CI requires every real part (REQUIRE_REAL_PARTS=1), fail."""
    if os.environ.get("REQUIRE_REAL_PARTS") == "1":
        pytest.fail(f"REQUIRE_REAL_PARTS=1, but {reason}")
    pytest.skip(reason)


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ("git", *args), cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` with `env` added, bounded, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Poll `condition` until it holds (bounded); fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout_s}s")
        time.sleep(0.05)


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def living(pids: list[int]) -> list[int]:
    """The pids among `pids` that are still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out and not out.startswith("Z"):
            alive.append(pid)
    return alive


def group_members(pgid: int) -> list[int]:
    """Running processes of a process group, from `ps`."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    members = []
    for line in out.splitlines():
        pid, group, stat = line.split(maxsplit=2)
        if int(group) == pgid and not stat.startswith("Z"):
            members.append(int(pid))
    return members


def make_remote(root: Path, branch: str = "main") -> Path:
    """A bare repository with one commit (README) on `branch`."""
    bare = root / "remote.git"
    git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare), cwd=root)
    seed = root / "seed-clone"
    git("clone", "--quiet", str(bare), str(seed), cwd=root)
    git("checkout", "--quiet", "-B", branch, cwd=seed)
    (seed / "README").write_text("one\n")
    git("add", "README", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "one", cwd=seed)
    git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=seed)
    return bare


def push_change(remote: Path, root: Path, name: str, text: str, branch: str = "main") -> str:
    """Commit `name` with `text` from another clone and push it; return the commit."""
    other = root / f"other-{uuid.uuid4().hex[:8]}"
    git("clone", "--quiet", "--branch", branch, str(remote), str(other), cwd=root)
    (other / name).write_text(text)
    git("add", name, cwd=other)
    git("-c", "user.name=o", "-c", "user.email=o@o", "commit", "--quiet", "-m", name, cwd=other)
    git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=other)
    return git("rev-parse", "HEAD", cwd=other)


@pytest.fixture(scope="session", autouse=True)
def own_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A HOME of the tests' own: the CLIs they run (the fake as the real one)
    keep their sessions' transcripts under $HOME/.claude, never the user's."""
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    yield
    if before is None:
        del os.environ["HOME"]
    else:
        os.environ["HOME"] = before


@pytest.fixture(autouse=True)
def fresh_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module-level asyncio.Lock binds to the first loop that waits on it."""
    monkeypatch.setattr(app_main, "execution_lock", asyncio.Lock())


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    git("init", "--quiet", cwd=path)
    return path


@pytest.fixture
def fake_log(tmp_path: Path) -> Path:
    return tmp_path / "fake-claude.jsonl"


@pytest.fixture
def service_env(workspace: Path, tmp_path: Path, fake_log: Path) -> dict[str, str]:
    """Environment of a service that runs the fake `claude` in `workspace`."""
    return {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(workspace),
        "DATA_DIR": str(tmp_path / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "FAKE_CLAUDE_LOG": str(fake_log),
        "CLAUDECODE": "1",
    }


@pytest.fixture
def settings_env(
    monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]
) -> Iterator[dict[str, str]]:
    """Point the in-process settings at the fake `claude` and a temp workspace."""
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield service_env
    get_settings.cache_clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A service process on a loopback port."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(env: Mapping[str, str | None], log_path: Path, cwd: Path | None = None) -> Server:
    """Start `python -m app serve` and wait (bounded) until /health answers.

    `env` is added to this process's environment; a None value removes a name.

    A free port can be taken between finding it and binding it (by any
    outgoing connection's local port); then it tries another, three times.
    """
    for _ in range(3):
        server = _start_once(env, log_path, cwd)
        if server is not None:
            return server
    raise RuntimeError(f"no free port after three tries:\n{log_path.read_text()}")


def _start_once(env: Mapping[str, str | None], log_path: Path, cwd: Path | None) -> Server | None:
    port = free_port()
    full_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == ExitCode.ADDRESS:  # the port was taken meanwhile
                return None
            raise RuntimeError(f"server exited {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start in 30 s:\n{server.log()}")


@pytest.fixture
def server(service_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    srv = start_server(service_env, tmp_path / "server.log")
    yield srv
    srv.stop()
