"""Running git in a workspace: bounded, never prompting, never trusting the work tree.

Every git command runs bounded, without a terminal to prompt on, with the
agent's own git configuration overridden where it could run a program, and
every piece of its output that leaves this package has credentials redacted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from app.proc import child_environment, terminate_group
from app.redact import redact

logger = logging.getLogger(__name__)

# The work tree and its .git are the agent's: what it may have configured
# there to run commands, or to fail every commit, is overridden (command-line
# config wins). Hooks, fsmonitor, signing, ext:: transports; the pack programs
# (multi-valued, where the first wins) are named on the fetch and the push.
_UNTRUSTED_CONFIG = (
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "core.fsmonitor=false"),
    *("-c", "commit.gpgSign=false"),
    *("-c", "tag.gpgSign=false"),
    *("-c", "protocol.ext.allow=never"),
)
NOT_A_REPOSITORY = (
    "the workspace is no longer a git repository (its .git was removed or broken); "
    "nothing was synced or committed, its files are left as they are"
)
DEFAULT_AUTHOR = ("Claude Agent Service", "agent-service@localhost")


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


def git_environment(work_tree: Path | None = None) -> dict[str, str]:
    """git's environment: no prompts; the work tree is `work_tree` whatever
    core.worktree or core.bare say; never a repository above it (if the agent
    deleted `.git`, git must not find the service's own)."""
    env = child_environment(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if work_tree is not None:
        root = work_tree.resolve()
        env["GIT_WORK_TREE"] = str(root)
        env["GIT_CEILING_DIRECTORIES"] = str(root.parent)
    return env


def _read_state(work_tree: Path) -> TreeState | None:
    """TreeState from a plain `.git` directory, or None to ask git instead."""
    repo = work_tree / ".git"
    try:
        if repo.is_symlink() or not repo.is_dir():
            return None
        head = (repo / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref: refs/heads/"):
        branch: str | None = head.removeprefix("ref: refs/heads/")
    elif _SHA.match(head):
        branch = None  # detached
    else:
        return None
    lock = repo / "index.lock"
    if lock.is_file() and not lock.is_symlink():
        lock.unlink(missing_ok=True)
        logger.warning("removed a stale %s from the workspace", lock)
    operation = next(
        (name for marker, name in _IN_PROGRESS.items() if (repo / marker).exists()), None
    )
    return TreeState(branch, operation)


def identity(author: tuple[str, str]) -> tuple[str, ...]:
    """The `-c` options that make `author` the author and committer."""
    return ("-c", f"user.name={author[0]}", "-c", f"user.email={author[1]}")


def run_sync(cwd: Path, *args: str, timeout_s: float) -> str:
    """Run git at start-up; its output, or WorkspaceError."""
    try:
        done = subprocess.run(
            ("git", *_UNTRUSTED_CONFIG, *args),
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
    return done.stdout.strip()


async def run_git(
    *args: str, cwd: Path, timeout_s: float, env: dict[str, str] | None = None
) -> GitResult:
    """Run one git command, bounded; on timeout its process group is killed.

    A git that cannot start (no git, no workspace) is a failed command too.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *_UNTRUSTED_CONFIG,
            *args,
            cwd=cwd,
            env={**git_environment(cwd), **(env or {})},
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


# Markers of an operation under way, in the repository directory.
_IN_PROGRESS = {
    "rebase-merge": "rebase",
    "rebase-apply": "rebase",
    "MERGE_HEAD": "merge",
    "CHERRY_PICK_HEAD": "cherry-pick",
    "REVERT_HEAD": "revert",
}
_SHA = re.compile(r"^[0-9a-f]{40,64}$")


@dataclass(frozen=True, slots=True)
class TreeState:
    """Where a work tree stands: its branch (None when detached) and the
    operation it is in the middle of (None when none)."""

    branch: str | None
    operation: str | None


class Git:
    """git in one work tree, every command bounded by `timeout_s`."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> GitResult:
        return await run_git(*args, cwd=self.path, timeout_s=self.timeout_s, env=env)

    async def value(self, *args: str, env: dict[str, str] | None = None) -> str | None:
        done = await self(*args, env=env)
        return done.output.strip() if done.ok and done.output.strip() else None

    async def has_origin(self) -> bool:
        return (await self("remote", "get-url", "origin")).ok

    async def head(self) -> str | None:
        return await self.value("rev-parse", "--verify", "--quiet", "HEAD")

    async def current_branch(self) -> str | None:
        # the full ref: --short would say "heads/main" if a tag were named main
        ref = await self.value("symbolic-ref", "--quiet", "HEAD")
        return ref.removeprefix("refs/heads/") if ref and ref.startswith("refs/heads/") else None

    async def ready(self) -> bool:
        """Whether the work tree is still a repository; if it is, remove an
        `index.lock` left behind: between runs no git of the agent can still
        hold it (its process group is gone), and one left would fail every
        later commit."""
        lock = await self.value("rev-parse", "--git-path", "index.lock")
        if lock is None:
            return False
        if (self.path / lock).is_file():
            (self.path / lock).unlink(missing_ok=True)
            logger.warning("removed a stale %s from the workspace", lock)
        return True

    async def in_progress(self) -> str | None:
        """The operation the work tree is in the middle of ("rebase", "merge", ...)."""
        args = [arg for marker in _IN_PROGRESS for arg in ("--git-path", marker)]
        done = await self("rev-parse", *args)
        if not done.ok:
            return None
        for found, operation in zip(done.output.splitlines(), _IN_PROGRESS.values(), strict=False):
            if (self.path / found).exists():
                return operation
        return None

    async def state(self) -> TreeState | None:
        """The work tree's branch and operation under way, and a stale
        `index.lock` removed (see `ready`); None when it is no repository.

        A plain `.git` directory is read directly: spawning git costs about
        7 ms a process, and these are a few files. Anything else (a `.git`
        file of a linked worktree, a symlink, an odd HEAD) asks git.
        """
        direct = _read_state(self.path)
        if direct is not None:
            return direct
        if not await self.ready():
            return None
        return TreeState(await self.current_branch(), await self.in_progress())

    async def behind(self, branch: str) -> bool:
        """Whether `origin/<branch>` has commits the local branch lacks (a
        rebase is due); False when there is nothing upstream."""
        done = await self("rev-list", "--count", f"HEAD..refs/remotes/origin/{branch}")
        return done.ok and done.output.strip() not in ("", "0")

    async def stash_count(self) -> int:
        done = await self("stash", "list")
        return len(done.output.splitlines()) if done.ok else 0

    async def fetch(self, branch: str) -> str | None:
        """Fetch `origin/<branch>`; None on success or when the remote lacks the branch."""
        # --no-auto-maintenance: not one more git process per run (`maintenance
        # run --auto`); the commits the service makes still run the auto gc.
        done = await self(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-auto-maintenance",
            "--upload-pack=git-upload-pack",
            "origin",
            branch,
        )
        if done.ok or "couldn't find remote ref" in done.output:
            return None
        if done.returncode is None:  # timed out
            return f"{done.output} (GIT_SYNC_TIMEOUT_SECONDS)"
        return f"git fetch failed: {done.line}"

    async def rebase_onto(self, branch: str, author: tuple[str, str]) -> str | None:
        """Rebase the local branch onto `origin/<branch>` as `author` (the
        committer of what it replays and stashes); abort and report a failure."""
        if (
            await self.value("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}")
            is None
        ):
            return None  # nothing upstream yet
        head = await self.head()
        stashes = await self.stash_count()
        done = await self(
            *identity(author), "rebase", "--autostash", f"refs/remotes/origin/{branch}"
        )
        if done.ok and not await self.value("ls-files", "--unmerged"):
            return None
        # The rebase failed, or it worked but the stashed changes did not apply
        # cleanly (git says 0 then): go back to exactly where we were.
        if await self.in_progress() == "rebase":
            await self("rebase", "--abort")
        elif head is not None:
            await self("reset", "--quiet", "--hard", head)
            if await self.stash_count() > stashes:
                await self(*identity(author), "stash", "pop", "--quiet")
        reason = done.line if not done.ok else "the local changes conflict with it"
        return f"rebase onto origin/{branch} failed, kept the local state: {reason}"
