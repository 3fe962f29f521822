"""The workspaces ("slots") agents run in: N isolated clones of one repository.

A run holds one slot for its whole life (sync, CLI, publish). Slot 0 is
WORKSPACE_DIR; slots 1..N-1 are separate clones under DATA_DIR/workspaces,
so that nothing an agent does with git in its slot (commit, reset, stash,
config, even `rm -rf .git`) reaches another slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.workspace.bootstrap import (
    ConfigSnapshot,
    checked_out_branch,
    ensure_workspace,
    has_commits,
    origin_url,
    snapshot_config,
)
from app.workspace.git import WorkspaceError, run_sync
from app.workspace.sync import FetchThrottle

logger = logging.getLogger(__name__)

SLOTS_DIR = "workspaces"


@dataclass(eq=False)
class Workspace:
    """One slot: its work tree, the lock a run holds while it uses it, the
    branch it is kept on, its git config as found at start-up, its fetch
    throttle."""

    slot: int
    path: Path
    lock_of: Callable[[], asyncio.Lock]
    """Where its lock is read at call time (slot 0's is `app.main.execution_lock`)."""
    branch: str | None = None
    config: ConfigSnapshot | None = None
    throttle: FetchThrottle = field(default_factory=FetchThrottle)
    has_origin: bool | None = None
    """Whether its start-up config (put back before each sync) has an origin;
    None: not known, ask git."""

    @property
    def lock(self) -> asyncio.Lock:
        return self.lock_of()

    @property
    def busy(self) -> bool:
        return self.lock.locked()


class WorkspacePool:
    """Hands out free slots, at once or not at all: a run never queues on a lock."""

    def __init__(self, workspaces: Sequence[Workspace]) -> None:
        if not workspaces:
            raise ValueError("a pool needs a workspace")
        self.workspaces = list(workspaces)
        self._on_release: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self.workspaces)

    @property
    def in_use(self) -> int:
        return sum(1 for workspace in self.workspaces if workspace.busy)

    @property
    def full(self) -> bool:
        """No slot is free."""
        return all(workspace.busy for workspace in self.workspaces)

    async def try_acquire(self) -> Workspace | None:
        """The first free slot, now held; None when every slot is in use.

        Taking a free asyncio.Lock does not suspend, so no other task can
        take the same slot between the look and the take.
        """
        for workspace in self.workspaces:
            lock = workspace.lock
            if not lock.locked():
                await lock.acquire()
                return workspace
        return None

    def release(self, workspace: Workspace) -> None:
        workspace.lock.release()
        for listener in self._on_release:
            listener()

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a slot is given back (the worker wakes)."""
        self._on_release.append(listener)


@dataclass(frozen=True, slots=True)
class Slot:
    """A workspace as start-up prepared it."""

    path: Path
    branch: str | None
    config: ConfigSnapshot | None
    has_origin: bool


def slot_path(data_dir: Path, slot: int, workspace_dir: Path) -> Path:
    """Where slot `slot` lives: WORKSPACE_DIR for 0, DATA_DIR/workspaces/<slot> else."""
    return workspace_dir if slot == 0 else data_dir / SLOTS_DIR / str(slot)


def prepare_slots(
    *,
    count: int,
    workspace_dir: Path,
    data_dir: Path,
    repo_url: str | None,
    branch: str | None,
) -> list[Slot]:
    """Set up every slot at start-up (blocking: run it in a thread).

    Slot 0 is made a work tree (cloned from `repo_url`, or `git init`-ed);
    the others are cloned from the same remote on the same branch, once, and
    kept across restarts. Returns each slot's path, kept branch and config.
    Raises WorkspaceError (N > 1 without a remote has nothing to merge at).
    """
    ensure_workspace(workspace_dir, repo_url=repo_url, branch=branch)
    kept = branch or checked_out_branch(workspace_dir)
    origin = origin_url(workspace_dir)
    slots = [Slot(workspace_dir, kept, snapshot_config(workspace_dir), origin is not None)]
    if count == 1:
        return slots
    remote = repo_url or origin
    if remote is None:
        raise WorkspaceError(
            f"MAX_CONCURRENT_RUNS={count} needs a remote the slots share and push to, and "
            f"WORKSPACE_DIR {workspace_dir} has no origin: set GIT_REPO_URL (a local bare "
            "repository works: git init --bare /srv/agents.git) or MAX_CONCURRENT_RUNS=1"
        )
    # An empty remote (`git init --bare`) has no branch to clone: the slots
    # start as slot 0 did, on the same branch, yet to be born.
    born = has_commits(workspace_dir)
    for slot in range(1, count):
        path = slot_path(data_dir, slot, workspace_dir)
        fresh = not path.exists() or not any(path.iterdir())
        ensure_workspace(path, repo_url=remote, branch=kept if born else None)
        if fresh:
            if not born and kept:
                run_sync(path, "symbolic-ref", "HEAD", f"refs/heads/{kept}", timeout_s=30)
            logger.info("slot %d: cloned into %s", slot, path)
        slot_branch = branch or kept or checked_out_branch(path)
        slots.append(Slot(path, slot_branch, snapshot_config(path), origin_url(path) is not None))
    return slots
