"""One service process per DATA_DIR, and the start-up checks that touch nothing.

A second process on the same DATA_DIR would mark the first one's running
jobs interrupted and kill their agents, so the first takes an exclusive
`flock` on `DATA_DIR/service.lock` before anything else and holds it for its
life. The kernel releases it when the process ends, however it ends, so a
crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from app.auth import TokensFileError, tokens_of
from app.settings import CLI_INSTALL_HINT, Settings, find_cli

LOCK_NAME = "service.lock"
# Listening sockets the service binds itself: the backlog uvicorn uses.
BACKLOG = 2048

_held: dict[Path, int] = {}


class DataDirLocked(Exception):
    """Another process serves this DATA_DIR."""


def lock_data_dir(data_dir: Path) -> None:
    """Hold the DATA_DIR lock for the rest of this process (a no-op once held).

    Raises DataDirLocked naming the holder, or OSError when DATA_DIR cannot be
    created.
    """
    path = data_dir.resolve()
    if path in _held:
        return
    path.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (Python's default): an agent that outlives us must not hold it
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirLocked(
            f"another claude-agent-service (pid {holder}) is serving DATA_DIR {path}; "
            "stop it first, or give this one a DATA_DIR of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = fd


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (OSError when it cannot be had)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=BACKLOG)


def setting_problems(settings: Settings) -> list[str]:
    """What in valid settings still cannot work: no token, no CLI to run."""
    problems = []
    try:
        tokens = tokens_of(settings)
    except TokensFileError as exc:
        problems.append(str(exc))
    else:
        if not tokens:
            problems.append(
                "API_BEARER_TOKEN is not set (nor API_BEARER_TOKENS_FILE); refusing to serve "
                "without auth. Set it in the environment or in .env."
            )
    if find_cli(settings.claude_bin) is None:
        given = settings.claude_bin
        if os.sep in given and Path(given).exists():
            problems.append(f"CLAUDE_BIN {given} is not an executable file")
        else:
            problems.append(
                f"the Claude CLI {given!r} was not found (CLAUDE_BIN, PATH): {CLI_INSTALL_HINT}"
            )
    return problems
