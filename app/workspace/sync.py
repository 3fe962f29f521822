"""Before a run: bring the workspace up to date with its remote."""

from __future__ import annotations

import time
from pathlib import Path

from app.workspace.git import DEFAULT_AUTHOR, NOT_A_REPOSITORY, Git


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
    has_origin: bool | None = None,
    author: tuple[str, str] = DEFAULT_AUTHOR,
) -> str | None:
    """Fetch `origin/<branch>` and rebase the workspace onto it, with autostash
    (`author` commits the rebased commits and the stash: the machine's own git
    identity, if it has one, is not needed).

    Returns None when the workspace is in sync (or has no `origin`), else a
    one-line error. A failed rebase is aborted: the local state is kept.
    `has_origin`, when the caller knows it (the config it restores before the
    sync decides it), saves asking git.

    Up to date, it costs two git processes (the fetch, and a count of what
    came in); throttled, none.
    """
    git = Git(path, timeout_s)
    state = await git.state()
    if state is None:
        return NOT_A_REPOSITORY
    if not (has_origin if has_origin is not None else await git.has_origin()):
        return None
    if state.operation is not None:
        return f"the workspace is in the middle of a {state.operation}; not syncing"
    current = state.branch
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
    if not await git.behind(name):
        return None
    return await git.rebase_onto(name, author)
