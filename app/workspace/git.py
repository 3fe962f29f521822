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
_REJECTED = re.compile(r"\[rejected\]|\[remote rejected\]|non-fast-forward|fetch first")
DEFAULT_AUTHOR = ("Claude Agent Service", "agent-service@localhost")
PUSH_RETRIES = 3
SUBJECT_LIMIT = 72
FALLBACK_PREFIX = "agent-service/"
_PUSH = (
    "push",
    "--quiet",
    "--porcelain",
    "--no-verify",
    "--receive-pack=git-receive-pack",
    "origin",
)


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


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """The workspace repository's `config` as the service found it at start-up."""

    path: Path
    content: bytes


def snapshot_config(path: Path) -> ConfigSnapshot | None:
    """Read the work tree's repository config (None if there is none to read)."""
    config = path / ".git" / "config"
    try:
        return ConfigSnapshot(config, config.read_bytes())
    except OSError:
        return None


def restore_config(snapshot: ConfigSnapshot | None) -> None:
    """Put back the config the service started with, before its own git runs.

    `.git/config` is inside the agent's reach: a filter or merge driver, a
    signing program, a credential helper, another remote URL or work tree
    written there would otherwise run or act in the service's git.
    """
    if snapshot is None:
        return
    try:
        if snapshot.path.read_bytes() == snapshot.content:
            return
        snapshot.path.write_bytes(snapshot.content)
    except OSError as exc:  # .git removed or replaced: the git commands will say so
        logger.warning("could not restore %s: %s", snapshot.path, exc)
        return
    logger.warning("the workspace's git config was changed during the run; restored it")


def checked_out_branch(path: Path, timeout_s: float = 30) -> str | None:
    """The branch the work tree has checked out (None when detached): at
    start-up, the branch the service keeps the workspace on when GIT_BRANCH
    is not set, whatever branch an agent switches to later."""
    try:
        ref = _run_sync(path, "symbolic-ref", "--quiet", "HEAD", timeout_s=timeout_s)
    except WorkspaceError:
        return None  # detached
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


def _run_sync(cwd: Path, *args: str, timeout_s: float) -> str:
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


# -- running git -------------------------------------------------------------------


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
        markers = {
            "rebase-merge": "rebase",
            "rebase-apply": "rebase",
            "MERGE_HEAD": "merge",
            "CHERRY_PICK_HEAD": "cherry-pick",
            "REVERT_HEAD": "revert",
        }
        args = [arg for marker in markers for arg in ("--git-path", marker)]
        done = await self("rev-parse", *args)
        if not done.ok:
            return None
        for found, operation in zip(done.output.splitlines(), markers.values(), strict=False):
            if (self.path / found).exists():
                return operation
        return None

    async def stash_count(self) -> int:
        done = await self("stash", "list")
        return len(done.output.splitlines()) if done.ok else 0

    async def fetch(self, branch: str) -> str | None:
        """Fetch `origin/<branch>`; None on success or when the remote lacks the branch."""
        done = await self(
            "fetch", "--quiet", "--no-tags", "--upload-pack=git-upload-pack", "origin", branch
        )
        if done.ok or "couldn't find remote ref" in done.output:
            return None
        if done.returncode is None:  # timed out
            return f"{done.output} (GIT_SYNC_TIMEOUT_SECONDS)"
        return f"git fetch failed: {done.line}"

    async def rebase_onto(self, branch: str) -> str | None:
        """Rebase the local branch onto `origin/<branch>`; abort and report a failure."""
        if (
            await self.value("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}")
            is None
        ):
            return None  # nothing upstream yet
        head = await self.head()
        stashes = await self.stash_count()
        done = await self("rebase", "--autostash", f"refs/remotes/origin/{branch}")
        if done.ok and not await self.value("ls-files", "--unmerged"):
            return None
        # The rebase failed, or it worked but the stashed changes did not apply
        # cleanly (git says 0 then): go back to exactly where we were.
        if await self.in_progress() == "rebase":
            await self("rebase", "--abort")
        elif head is not None:
            await self("reset", "--quiet", "--hard", head)
            if await self.stash_count() > stashes:
                await self("stash", "pop", "--quiet")
        reason = done.line if not done.ok else "the local changes conflict with it"
        return f"rebase onto origin/{branch} failed, kept the local state: {reason}"


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
    if not await git.ready():
        return NOT_A_REPOSITORY
    if not await git.has_origin():
        return None
    operation = await git.in_progress()
    if operation is not None:
        return f"the workspace is in the middle of a {operation}; not syncing"
    current = await git.current_branch()
    name = branch or current
    if name is None or current is None:
        return "the workspace is not on a branch (detached HEAD); not syncing"
    if current != name:
        return f"the workspace is on branch {current}, not {name}; not syncing"
    if throttle is not None and not throttle.due(path, min_interval_s):
        return None
    error = await git.fetch(name)
    if error is not None:
        return error
    if throttle is not None:
        throttle.mark(path)
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
    if not await git.ready():
        report.push_error = NOT_A_REPOSITORY
        return
    current = await git.current_branch()
    name = branch or current
    operation = await git.in_progress()
    if operation is not None or current is None or current != name:
        why = (
            f"in the middle of a {operation}"
            if operation
            else f"on branch {current}"
            if current
            else "on a detached HEAD"
        )
        await _rescue(git, report, subject, run_id, name, operation, why, author)
        return
    assert name is not None
    status = await git.value(
        "status", "--porcelain", "--untracked-files=all", "--ignore-submodules=dirty"
    )
    if status:
        await git("add", "--all")
        done = await git(*_identity(author), "commit", "--quiet", "--no-verify", "-m", subject)
        if not done.ok:  # the agent's own commits still go out
            report.push_error = f"git commit failed: {done.line}"
    report.head_after = await git.head()
    if not await git.has_origin():
        report.push_error = "the workspace has no origin to push to"
        return
    for attempt in range(PUSH_RETRIES + 1):
        outgoing = await _outgoing(git)
        if not outgoing:
            return
        done = await git(*_PUSH, f"HEAD:refs/heads/{name}")
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
    done = await git(*_PUSH, f"HEAD:refs/heads/{aside}")
    if not done.ok:
        report.push_error = f"{report.push_error}; pushing to {aside} failed too: {done.line}"
        return
    report.pushed, report.branch, report.commits = True, aside, outgoing
    reset = await git("reset", "--quiet", "--hard", f"refs/remotes/origin/{name}")
    if not reset.ok:
        report.push_error = f"{report.push_error}; could not reset to origin/{name}: {reset.line}"
    report.head_after = await git.head()
    logger.warning("run %s: commits pushed to %s instead of %s", run_id, aside, name)


async def _rescue(
    git: Git,
    report: GitReport,
    subject: str,
    run_id: str,
    branch: str | None,
    operation: str | None,
    why: str,
    author: tuple[str, str],
) -> None:
    """The agent left the work tree mid-operation, detached or on another
    branch: save all of it (conflicts, untracked files) as one commit on
    `agent-service/<run_id>`, locally and on the remote, then put the
    workspace back on `branch`, clean."""
    aside = f"{FALLBACK_PREFIX}{run_id}"
    index = await git.value("rev-parse", "--git-path", "agent-service-index")
    if index is None:
        report.push_error = f"the agent left the workspace {why}; could not save it"
        return
    temp_index = {"GIT_INDEX_FILE": str(git.path / index)}
    await git("add", "--all", env=temp_index)
    tree = await git.value("write-tree", env=temp_index)
    (git.path / index).unlink(missing_ok=True)
    head = await git.head()
    parents = ["-p", head] if head else []
    saved = await git.value(
        *_identity(author),
        "commit-tree",
        str(tree),
        *parents,
        "-m",
        f"{subject}\n\nThe agent left the workspace {why}; this is its whole work tree.",
    )
    if tree is None or saved is None:
        report.push_error = f"the agent left the workspace {why}; could not save it"
        return
    await git("update-ref", f"refs/agent-service/{run_id}", saved)  # kept even if the push fails
    report.commits, report.branch = [saved], aside
    pushed = await git(*_PUSH, f"{saved}:refs/heads/{aside}")
    report.pushed = pushed.ok
    report.push_error = f"the agent left the workspace {why}; its work tree is on {aside}"
    if not pushed.ok:
        report.push_error += f" (local ref only, the push failed: {pushed.line})"
    if operation is not None:
        await git(operation, "--abort")
    if branch is not None:
        await git("checkout", "--quiet", "--force", branch)
        await git("reset", "--quiet", "--hard")
        await git("clean", "-fdq")
    report.head_after = await git.head()
    logger.warning("run %s: %s", run_id, report.push_error)
