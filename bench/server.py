"""Processes the benchmarks start: the service (`python -m app serve` on a
free loopback port), a baseline uvicorn, git remotes and clones; each one
stopped with its process group and its descendants, each temp dir removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = ROOT / "tests" / "fakes" / "claude"
REAL_CLAUDE = ROOT / ".cache" / "claude-cli" / "node_modules" / ".bin" / "claude"
TOKEN = "bench-token-0123456789"
START_TIMEOUT_S = 60.0
# The service's graceful shutdown: SHUTDOWN_GRACE_SECONDS (set low below) plus
# its kills (5 s) and last writes.
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 5.0
GIT_TIMEOUT_S = 60.0
# Settings of the caller's environment that must not reach a benchmark's service.
_SERVICE_PREFIXES = (
    "API_BEARER_",
    "ANTHROPIC_",
    "CLAUDE_",
    "CHAT_",
    "DATABASE_URL",
    "DATA_DIR",
    "DEFAULT_MODEL",
    "GIT_",
    "HOST",
    "PORT",
    "INSTANCE_ID",
    "JOB_",
    "LOG_",
    "MAX_",
    "METRICS_",
    "SHUTDOWN_",
    "SUPPORTED_MODELS",
    "WORKSPACE_DIR",
    "HEADER_TIMEOUT",
    "BODY_TIMEOUT",
    "FAKE_CLAUDE_LOG",
    "CLAUDECODE",
)


def clean_environ() -> dict[str, str]:
    """This process's environment without anything that configures the service."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path) -> str:
    """Run git (bounded); its stdout."""
    done = subprocess.run(
        ("git", *args),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=GIT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip()


def make_remote(root: Path, branch: str = "main") -> Path:
    """A bare repository with one commit (README) on `branch`, under `root`."""
    bare = root / "remote.git"
    git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare), cwd=root)
    seed = root / "seed"
    git("clone", "--quiet", str(bare), str(seed), cwd=root)
    git("checkout", "--quiet", "-B", branch, cwd=seed)
    (seed / "README").write_text("benchmark remote\n")
    git("add", "README", cwd=seed)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-m", "one", cwd=seed)
    git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=seed)
    shutil.rmtree(seed)
    return bare


def clone(remote: Path, dest: Path) -> Path:
    """A clone of `remote` at `dest`."""
    git("clone", "--quiet", str(remote), str(dest), cwd=dest.parent)
    return dest


@contextlib.contextmanager
def temp_dir(prefix: str = "bench-") -> Iterator[Path]:
    """A temp dir, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_groups(pids: Sequence[int]) -> None:
    """SIGKILL each pid's process group, and the pid itself (either may be gone)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to its group and to whatever it
    started that is still alive (agents run in process groups of their own)."""
    if proc.poll() is None:
        offspring = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            offspring += descendants(proc.pid)
            _kill_groups([proc.pid])
            proc.wait(KILL_TIMEOUT_S)
        _kill_groups([p for p in offspring if _alive(p)])
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS over the process's life) of `pid`, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def taskset(cpus: str | None) -> list[str]:
    """The `taskset -c CPUS` prefix of a command (nothing when not pinning or
    when taskset is missing)."""
    if cpus is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


@dataclass(frozen=True)
class Service:
    """A running service process and where it keeps things."""

    proc: subprocess.Popen[bytes]
    base_url: str
    root: Path
    data_dir: Path
    workspace: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        """An HTTP client with the bearer token."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Poll `url` until it answers 200 (bounded); fail if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it answered")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:g} s")


@contextlib.contextmanager
def service(
    root: Path,
    name: str = "svc",
    *,
    env: Mapping[str, str] | None = None,
    remote: Path | None = None,
    claude_bin: Path = FAKE_CLAUDE,
    cpus: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """Start the service under `root/name` (workspace, DATA_DIR, log) and stop it
    afterwards. With `remote`, WORKSPACE_DIR is cloned from it (GIT_REPO_URL);
    else it is a fresh `git init`. `env` is added last; `base_env` replaces the
    caller's (cleaned) environment."""
    home = root / name
    home.mkdir(parents=True, exist_ok=True)  # a benchmark may have filled its DATA_DIR
    workspace, data_dir, log_path = home / "workspace", home / "data", home / "server.log"
    if remote is None:
        workspace.mkdir()
        git("init", "--quiet", cwd=workspace)
    full_env = {
        **(base_env if base_env is not None else clean_environ()),
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(workspace),
        "DATA_DIR": str(data_dir),
        "CLAUDE_BIN": str(claude_bin),
        "SHUTDOWN_GRACE_SECONDS": "2",
        **({"GIT_REPO_URL": str(remote)} if remote is not None else {}),
        **(env or {}),
    }
    port = free_port()
    argv = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*taskset(cpus), *argv],
                env=full_env,
                cwd=home,  # no stray .env from the caller's directory
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        svc = Service(proc, f"http://127.0.0.1:{port}", home, data_dir, workspace, log_path)
        try:
            wait_http(f"{svc.base_url}/health", proc, START_TIMEOUT_S, f"the service {name}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{svc.log_tail()}") from None
        yield svc
    finally:
        if proc is not None:
            stop_process(proc)


@contextlib.contextmanager
def baseline_uvicorn(root: Path, *, cpus: str | None = None) -> Iterator[str]:
    """The minimal Starlette app (bench/baseline_app.py) on plain uvicorn with
    httptools and uvicorn's default loop; yields its base URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "auto",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    log_path = root / f"baseline-{port}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*taskset(cpus), *argv],
                env=clean_environ(),
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, START_TIMEOUT_S, "the baseline uvicorn")
        yield url
    finally:
        if proc is not None:
            stop_process(proc, timeout_s=10)
