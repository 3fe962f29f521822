"""After a run: commit what the agent left and push it, losing nothing."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.workspace.git import NOT_A_REPOSITORY, Git, identity

logger = logging.getLogger(__name__)

_REJECTED = re.compile(r"\[rejected\]|\[remote rejected\]|non-fast-forward|fetch first")
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
        done = await git(*identity(author), "commit", "--quiet", "--no-verify", "-m", subject)
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
        error = await git.fetch(name) or await git.rebase_onto(name, author)
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
        *identity(author),
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


def publish_result(report: GitReport) -> str:
    """One word for what a publish did: pushed, aside (on agent-service/<id>),
    failed, or nothing (nothing to push)."""
    if report.pushed:
        return "aside" if (report.branch or "").startswith(FALLBACK_PREFIX) else "pushed"
    return "failed" if report.push_error else "nothing"
