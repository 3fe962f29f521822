"""The agent's git workspace: bootstrap at start-up, sync before a run, publish after.

Every git command runs bounded, without a terminal to prompt on, and every
piece of its output that leaves this module has credentials redacted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.agent.command import child_environment
from app.agent.process import terminate_group

logger = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_REJECTED = re.compile(r"\[rejected\]|\[remote rejected\]|non-fast-forward|fetch first")
DEFAULT_AUTHOR = ("Claude Agent Service", "agent-service@localhost")
PUSH_RETRIES = 3
SUBJECT_LIMIT = 72
FALLBACK_PREFIX = "agent-service/"


class WorkspaceError(Exception):
    """The workspace cannot be used; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int | None
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def line(self) -> str:
        return " ".join(self.output.split())


@dataclass(slots=True)
class GitReport:
    """What happened to the workspace around one run (the job record's `git`)."""

    head_before: str | None = None
    head_after: str | None = None
    commits: list[str] = field(default_factory=list)
    pushed: bool = False
    branch: str | None = None
    sync_error: str | None = None
    push_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact(text: str) -> str:
    """Hide `user:password@` in any URL in `text`."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def git_environment() -> dict[str, str]:
    env = child_environment(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _identity(author: tuple[str, str]) -> tuple[str, ...]:
    return ("-c", f"user.name={author[0]}", "-c", f"user.email={author[1]}")


# -- start-up --------------------------------------------------------------------


def ensure_workspace(
    path: Path,
    *,
    repo_url: str | None = None,
    branch: str | None = None,
    timeout_s: float = 300,
) -> None:
    """Make `path` a usable git work tree.

    Missing or empty: cloned from `repo_url` when set, else `git init` with an
    empty initial commit. A non-empty directory that is not a git work tree is
    refused rather than turned into one: it is somebody's data.
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
    if repo_url:
        clone = ["clone", "--quiet"]
        if branch:
            clone += ["--branch", branch]
        _run_sync(path.parent, *clone, "--", repo_url, str(path), timeout_s=timeout_s)
        logger.info("cloned %s into %s", redact(repo_url), path)
        return
    _run_sync(path, "init", "--quiet", timeout_s=timeout_s)
    if branch:
        _run_sync(path, "checkout", "--quiet", "-b", branch, timeout_s=timeout_s)
    _run_sync(
        path,
        *_identity(DEFAULT_AUTHOR),
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "Initial commit",
        timeout_s=timeout_s,
    )
    logger.info("initialised an empty git workspace in %s", path)


def _run_sync(cwd: Path, *args: str, timeout_s: float) -> None:
    try:
        done = subprocess.run(
            ("git", *args),
            cwd=cwd,
            env=git_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git {args[0]} timed out after {timeout_s:g}s") from None
    if done.returncode != 0:
        what = "clone" if "clone" in args else args[-1]
        raise WorkspaceError(f"git {what} failed: {redact(done.stderr.strip())}")


# -- running git -------------------------------------------------------------------


async def run_git(*args: str, cwd: Path, timeout_s: float) -> GitResult:
    """Run one git command, bounded; on timeout its process group is killed.

    A git that cannot start (no git, no workspace) is a failed command too.
    """
    try:
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
    except OSError as exc:
        return GitResult(-1, f"could not run git in {cwd}: {exc.strerror or exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        await terminate_group(proc)
        return GitResult(None, f"git {args[0]} timed out after {timeout_s:g}s")
    finally:
        if proc.returncode is None:
            await asyncio.shield(terminate_group(proc))
    return GitResult(proc.returncode, redact(out.decode(errors="replace").strip()))


class Git:
    """git in one work tree, every command bounded by `timeout_s`."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def __call__(self, *args: str) -> GitResult:
        return await run_git(*args, cwd=self.path, timeout_s=self.timeout_s)

    async def value(self, *args: str) -> str | None:
        done = await self(*args)
        return done.output.strip() if done.ok and done.output.strip() else None

    async def has_origin(self) -> bool:
        return (await self("remote", "get-url", "origin")).ok

    async def branch(self, configured: str | None) -> str | None:
        return configured or await self.value("symbolic-ref", "--quiet", "--short", "HEAD")

    async def head(self) -> str | None:
        return await self.value("rev-parse", "--verify", "--quiet", "HEAD")

    async def fetch(self, branch: str) -> str | None:
        """Fetch `origin/<branch>`; None on success or when the remote lacks the branch."""
        done = await self("fetch", "--quiet", "--no-tags", "origin", branch)
        if done.ok or "couldn't find remote ref" in done.output:
            return None
        if done.returncode is None:
            return done.output
        return f"git fetch failed: {done.line}"

    async def rebase_onto(self, branch: str) -> str | None:
        """Rebase the local branch onto `origin/<branch>`; abort and report a failure."""
        if (
            await self.value("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}")
            is None
        ):
            return None  # nothing upstream yet
        done = await self("rebase", "--autostash", f"origin/{branch}")
        if done.ok:
            return None
        git_dir = self.path / ".git"
        if (git_dir / "rebase-merge").exists() or (git_dir / "rebase-apply").exists():
            await self("rebase", "--abort")
        return f"rebase onto origin/{branch} failed, kept the local state: {done.line}"


# -- before a run ----------------------------------------------------------------------


class FetchThrottle:
    """Lets bursts of runs share one fetch: at most one per `min_interval_s`."""

    def __init__(self) -> None:
        self._last: dict[Path, float] = {}

    def due(self, path: Path, min_interval_s: float) -> bool:
        last = self._last.get(path)
        return last is None or time.monotonic() - last >= min_interval_s

    def mark(self, path: Path) -> None:
        self._last[path] = time.monotonic()


async def sync_workspace(
    path: Path,
    *,
    timeout_s: float,
    branch: str | None = None,
    min_interval_s: float = 0,
    throttle: FetchThrottle | None = None,
) -> str | None:
    """Fetch `origin/<branch>` and rebase the workspace onto it, with autostash.

    Returns None when the workspace is in sync (or has no `origin`), else a
    one-line error. A failed rebase is aborted: the local state is kept.
    """
    git = Git(path, timeout_s)
    if not await git.has_origin():
        return None
    name = await git.branch(branch)
    if name is None:
        return "the workspace is not on a branch (detached HEAD); not syncing"
    if throttle is not None and not throttle.due(path, min_interval_s):
        return None
    error = await git.fetch(name)
    if error is None and throttle is not None:
        throttle.mark(path)
    if error is not None:
        if error.startswith("git fetch timed out"):
            return f"git fetch timed out after {timeout_s:g}s (GIT_SYNC_TIMEOUT_SECONDS)"
        return error
    return await git.rebase_onto(name)


# -- after a run -----------------------------------------------------------------------


def commit_subject(text: str, label: str) -> str:
    """`agent: <first line, at most 72 characters> (<label>)`."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > SUBJECT_LIMIT:
        first = first[: SUBJECT_LIMIT - 1] + "…"
    return f"agent: {first} ({label})"


async def publish(
    path: Path,
    report: GitReport,
    *,
    branch: str | None,
    subject: str,
    run_id: str,
    author: tuple[str, str],
    timeout_s: float,
) -> None:
    """Commit what the agent left and push it, losing nothing; fill in `report`.

    A rejected push is retried after a fetch and a rebase, PUSH_RETRIES times.
    A rebase conflict, or a push still rejected, sends the commits to a branch
    `agent-service/<run_id>` instead and resets the local branch to
    `origin/<branch>`. A push that fails otherwise (the remote unreachable)
    keeps the commits local, for the next run to push.
    """
    git = Git(path, timeout_s)
    name = await git.branch(branch)
    if await git.value("status", "--porcelain", "--untracked-files=all"):
        await git("add", "--all")
        done = await git(*_identity(author), "commit", "--quiet", "--no-verify", "-m", subject)
        if not done.ok:
            report.push_error = f"git commit failed: {done.line}"
            report.head_after = await git.head()
            return
    report.head_after = await git.head()
    if not await git.has_origin():
        report.push_error = "the workspace has no origin to push to"
        return
    if name is None:
        report.push_error = "the workspace is not on a branch (detached HEAD); not pushing"
        return
    for attempt in range(PUSH_RETRIES + 1):
        outgoing = await _outgoing(git)
        if not outgoing:
            return
        done = await git("push", "--quiet", "--porcelain", "origin", f"HEAD:refs/heads/{name}")
        if done.ok:
            report.pushed, report.branch, report.commits = True, name, outgoing
            report.head_after = await git.head()
            return
        if not _REJECTED.search(done.output):
            report.push_error = f"git push failed: {done.line}"
            return
        if attempt == PUSH_RETRIES:
            report.push_error = f"push still rejected after {PUSH_RETRIES} retries"
            break
        error = await git.fetch(name) or await git.rebase_onto(name)
        if error is not None:
            report.push_error = error
            break
    await _push_aside(git, report, name, run_id)


async def _outgoing(git: Git) -> list[str]:
    """Local commits that no origin branch has yet, oldest first."""
    done = await git("rev-list", "--reverse", "HEAD", "--not", "--remotes=origin")
    return done.output.split() if done.ok else []


async def _push_aside(git: Git, report: GitReport, name: str, run_id: str) -> None:
    """Put the agent's commits on their own remote branch; reset to origin/<branch>."""
    outgoing = await _outgoing(git)
    aside = f"{FALLBACK_PREFIX}{run_id}"
    done = await git("push", "--quiet", "--porcelain", "origin", f"HEAD:refs/heads/{aside}")
    if not done.ok:
        report.push_error = f"{report.push_error}; pushing to {aside} failed too: {done.line}"
        return
    report.pushed, report.branch, report.commits = True, aside, outgoing
    reset = await git("reset", "--quiet", "--hard", f"origin/{name}")
    if not reset.ok:
        report.push_error = f"{report.push_error}; could not reset to origin/{name}: {reset.line}"
    report.head_after = await git.head()
    logger.warning("run %s: commits pushed to %s instead of %s", run_id, aside, name)
