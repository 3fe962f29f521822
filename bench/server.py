"""A real `python -m app serve` process on a loopback port, with its temp dirs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = ROOT / "tests" / "fakes" / "claude"
TOKEN = "bench-token"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 35.0  # the service's graceful shutdown takes up to 30 s
KILL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server() -> Iterator[Server]:
    """Start the service on a fresh git workspace and data dir; always stop and clean up."""
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        workspace, data_dir, log_path = root / "workspace", root / "data", root / "server.log"
        workspace.mkdir()
        subprocess.run(["git", "init", "--quiet"], cwd=workspace, check=True, timeout=30)
        env = {
            **os.environ,
            "API_BEARER_TOKEN": TOKEN,
            "WORKSPACE_DIR": str(workspace),
            "DATA_DIR": str(data_dir),
            "CLAUDE_BIN": str(FAKE_CLAUDE),
        }
        port = free_port()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=root,  # no stray .env from the caller's directory
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = Server(proc, f"http://127.0.0.1:{port}", data_dir)
        _wait_healthy(server, log_path)
        yield server
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_healthy(server: Server, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"the server did not become healthy in {START_TIMEOUT_S:g} s:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(KILL_TIMEOUT_S)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS over the process's life) of `pid`, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found
