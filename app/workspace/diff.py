"""A run's commits and their diffs, read without trusting the workspace.

The commits a run made are in its slot's repository, and on the remote once
pushed. The slot's `.git` is the agent's: its config could name a program
for git to run (an external diff or textconv driver, a pager, a signature
check), and another run may be using the slot right now. So git never runs
in it here. It runs in a bare repository of the service's own,
`DATA_DIR/diff-cache.git`, whose config the service wrote, and reads the
slot's objects from there, read-only (`GIT_ALTERNATE_OBJECT_DIRECTORIES`):
nothing in the slot is read but objects, and nothing in it is written.
Commits the slot no longer has (a slot re-cloned, a `.git` the agent
removed) are fetched from the remote into that repository.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.redact import redact
from app.workspace.bootstrap import ConfigSnapshot
from app.workspace.git import WorkspaceError, run_git, run_sync

CACHE_NAME = "diff-cache.git"
# A job's record names a handful of commits; a longer list is cut here.
MAX_COMMITS = 100
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
# A branch as the service names them (GIT_BRANCH, agent-service/<id>); never an option.
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,255}$")
# One commit as `git format-patch` writes it (`git am` and `git apply` read it):
# headers, message, stat, diff. No program of any config runs for it.
_SHOW = (
    "show",
    "--no-color",
    "--format=email",
    "--patch-with-stat",
    "--no-ext-diff",
    "--no-textconv",
    "--diff-merges=first-parent",
)
_FIELD, _RECORD = "\x1f", "\x1e"

_origins: dict[ConfigSnapshot, str | None] = {}


class DiffUnavailable(Exception):
    """The commits cannot be read (gone from the workspace, the remote
    unreachable or without them); the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit of a run, with its patch (possibly cut at the byte budget)."""

    sha: str
    author: str
    date: str
    """The author date, RFC 3339."""
    subject: str
    patch: bytes
    """As `git format-patch` writes it; credentials redacted."""
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.patch.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class RunDiff:
    """A run's commits, oldest first."""

    commits: list[Commit]

    @property
    def truncated(self) -> bool:
        return any(commit.truncated for commit in self.commits)

    def series(self) -> bytes:
        """The patches one after another: what `git am` applies."""
        return b"".join(commit.patch for commit in self.commits)


async def read_diff(
    shas: Sequence[str],
    *,
    repo: Path | None,
    remote: str | None,
    branch: str | None,
    data_dir: Path,
    timeout_s: float,
    max_bytes: int,
) -> RunDiff:
    """The commits `shas` (oldest first) with their patches, at most
    `max_bytes` of patch in all: read from `repo`'s objects, else fetched
    from `branch` of `remote`. Raises DiffUnavailable."""
    wanted = [sha for sha in shas if isinstance(sha, str) and _SHA.match(sha)][:MAX_COMMITS]
    if not wanted:
        raise DiffUnavailable("the job's record names no commit")
    cache = await _cache(data_dir, timeout_s)
    env = {"GIT_DIR": str(cache)}
    objects = repo / ".git" / "objects" if repo is not None else None
    if objects is not None and objects.is_dir():
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(objects.resolve())
    described = await _describe(cache, env, wanted, timeout_s)
    if described is None:
        why = await _fetch(cache, env, remote, branch, timeout_s)
        described = await _describe(cache, env, wanted, timeout_s)
        if described is None:
            where = "the workspace does not have them"
            raise DiffUnavailable(f"the job's commits cannot be read: {where}, and {why}")
    commits = []
    budget = max_bytes
    for sha, author, date, subject in described:
        patch, cut = await _patch(cache, env, sha, budget, timeout_s)
        budget -= len(patch)
        commits.append(Commit(sha, author, date, subject, patch, cut))
    return RunDiff(commits)


async def origin_of(
    snapshot: ConfigSnapshot | None, data_dir: Path, timeout_s: float
) -> str | None:
    """`remote.origin.url` of a workspace's config as the service found it at
    start-up (never the config the agent may have changed since)."""
    if snapshot is None:
        return None
    if snapshot in _origins:  # a snapshot is taken once, at start-up
        return _origins[snapshot]
    path = await asyncio.to_thread(_temp_file, data_dir, snapshot.content)
    try:
        done = await run_git(
            *("config", "--file", str(path), "--get", "remote.origin.url"),
            cwd=data_dir,
            timeout_s=timeout_s,
        )
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    url = (done.output.strip() or None) if done.ok else None
    _origins[snapshot] = url
    return url


async def _cache(data_dir: Path, timeout_s: float) -> Path:
    """The service's own bare repository (made on first use)."""
    cache = data_dir / CACHE_NAME
    if not await asyncio.to_thread((cache / "objects").is_dir):
        try:
            # git init refuses GIT_WORK_TREE, which run_git sets: the plain runner
            await asyncio.to_thread(_init_bare, cache, timeout_s)
        except (OSError, WorkspaceError) as exc:
            raise DiffUnavailable(f"could not make {cache}: {exc}") from None
    return cache


def _init_bare(cache: Path, timeout_s: float) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    run_sync(cache.parent, "init", "--bare", "--quiet", str(cache), timeout_s=timeout_s)


async def _describe(
    cache: Path, env: dict[str, str], shas: list[str], timeout_s: float
) -> list[tuple[str, str, str, str]] | None:
    """sha, author, date and subject of each commit, in order; None if one is missing."""
    done = await run_git(
        "show",
        "--no-patch",
        "--no-show-signature",
        f"--format=%H{_FIELD}%an <%ae>{_FIELD}%aI{_FIELD}%s{_RECORD}",
        *shas,
        cwd=cache,
        timeout_s=timeout_s,
        env=env,
    )
    if not done.ok:
        return None
    found = []
    for record in done.output.split(_RECORD):
        fields = record.strip("\n").split(_FIELD)
        if len(fields) == 4:
            found.append((fields[0], fields[1], fields[2], fields[3]))
    return found if [sha for sha, *_ in found] == shas else None


async def _fetch(
    cache: Path, env: dict[str, str], remote: str | None, branch: str | None, timeout_s: float
) -> str:
    """Fetch `branch` of `remote` into the cache; say what happened, for the error."""
    if remote is None:
        return "there is no remote to fetch them from"
    if branch is None or not _BRANCH.match(branch):
        return "the job's record names no branch to fetch them from"
    done = await run_git(
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--upload-pack=git-upload-pack",
        "--end-of-options",
        remote,
        f"+refs/heads/{branch}:refs/fetched/{branch}",
        cwd=cache,
        timeout_s=timeout_s,
        env=env,
    )
    if not done.ok:
        return f"fetching {branch} from the remote failed: {done.line}"
    return f"the remote's {branch} does not have them (rewritten or deleted)"


async def _patch(
    cache: Path, env: dict[str, str], sha: str, budget: int, timeout_s: float
) -> tuple[bytes, bool]:
    """One commit's patch, at most `budget` bytes, and whether it was cut.

    git writes it to a file rather than a pipe: a patch may be far larger
    than the budget, and only the budget is read into memory.
    """
    if budget <= 0:
        return b"", True
    path = await asyncio.to_thread(_temp_file, cache, b"")
    try:
        done = await run_git(
            *_SHOW, f"--output={path}", sha, cwd=cache, timeout_s=timeout_s, env=env
        )
        if not done.ok:
            raise DiffUnavailable(f"git show {sha[:12]} failed: {done.line}")
        raw, size = await asyncio.to_thread(_read_at_most, path, budget)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    cut = size > budget
    if cut:  # end on a whole line
        raw = raw[: raw.rfind(b"\n") + 1]
    # the agent may have written a secret into a file: no text leaves unredacted
    text = redact(raw.decode(errors="surrogateescape"))
    return text.encode(errors="surrogateescape"), cut


def _temp_file(where: Path, content: bytes) -> Path:
    """A new file of the service's own (0600) in `where`, holding `content`."""
    where.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=where, prefix=".diff-", suffix=".tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    return Path(name)


def _read_at_most(path: Path, limit: int) -> tuple[bytes, int]:
    """The first `limit` bytes of a file, and its size."""
    with path.open("rb") as file:
        return file.read(limit), os.fstat(file.fileno()).st_size
