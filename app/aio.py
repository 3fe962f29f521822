"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Clean-ups still running after their caller was cancelled; see `drain`.
_unfinished: set[asyncio.Future[Any]] = set()


async def complete_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled, then re-raise.

    For clean-ups that must not be cut short and must not run on after their
    caller has let go of a lock (killing a process group, pushing the agent's
    commits). `work` must itself be bounded.
    """
    task = asyncio.ensure_future(work)
    _unfinished.add(task)
    task.add_done_callback(_unfinished.discard)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def drain(timeout_s: float) -> int:
    """Wait (bounded) for clean-ups whose callers were cancelled; return how many
    were still running at the end. Call at shutdown, before the loop closes and
    would cancel them."""
    if _unfinished:
        await asyncio.wait(set(_unfinished), timeout=timeout_s)
    return len(_unfinished)
