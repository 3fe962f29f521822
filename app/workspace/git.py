"""The agent's git workspace: bootstrap at start-up, sync before a run."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from app.agent.command import child_environment
from app.agent.process import terminate_group

logger = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_AUTHOR = ("-c", "user.name=Claude Agent Service", "-c", "user.email=agent-service@localhost")


class WorkspaceError(Exception):
    """The workspace cannot be used; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int | None
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def redact(text: str) -> str:
    """Hide `user:password@` in any URL in `text`."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def git_environment() -> dict[str, str]:
    env = child_environment(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def ensure_workspace(path: Path) -> None:
    """Make `path` a usable git work tree, creating it if missing or empty.

    A non-empty directory that is not a git work tree is refused rather than
    turned into one: it is somebody's data.
    """
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"WORKSPACE_DIR {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not (path / ".git").exists():
            raise WorkspaceError(
                f"WORKSPACE_DIR {path} is not empty and is not a git repository; "
                "point WORKSPACE_DIR at a git work tree or an empty directory"
            )
        return
    path.mkdir(parents=True, exist_ok=True)
    for args in (
        ("init", "--quiet"),
        (*_AUTHOR, "commit", "--quiet", "--allow-empty", "-m", "Initial commit"),
    ):
        done = subprocess.run(
            ("git", *args),
            cwd=path,
            env=git_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise WorkspaceError(f"git {args[-1]} failed in {path}: {redact(done.stderr.strip())}")
    logger.info("initialised an empty git workspace in %s", path)


async def run_git(*args: str, cwd: Path, timeout_s: float) -> GitResult:
    """Run one git command, bounded; on timeout its process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        await terminate_group(proc)
        return GitResult(None, f"git {args[0]} timed out after {timeout_s:g}s")
    finally:
        if proc.returncode is None:
            await asyncio.shield(terminate_group(proc))
    return GitResult(proc.returncode, redact(out.decode(errors="replace").strip()))


async def sync_workspace(path: Path, *, timeout_s: float) -> str | None:
    """Pull the workspace's branch with rebase and autostash.

    Returns None when the workspace is in sync or has no `origin`, else a
    one-line error. A failed rebase is aborted: the run goes on with the
    local state.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    origin = await run_git("remote", "get-url", "origin", cwd=path, timeout_s=timeout_s)
    if not origin.ok:
        return None
    pull = await run_git(
        "pull",
        "--rebase",
        "--autostash",
        "--quiet",
        cwd=path,
        timeout_s=max(deadline - loop.time(), 0.1),
    )
    if pull.ok:
        return None
    if pull.returncode is None:
        return f"git pull timed out after {timeout_s:g}s (GIT_SYNC_TIMEOUT_SECONDS)"
    if (path / ".git" / "rebase-merge").exists() or (path / ".git" / "rebase-apply").exists():
        await run_git("rebase", "--abort", cwd=path, timeout_s=30)
    return " ".join(pull.output.split()) or f"git pull exited {pull.returncode}"
