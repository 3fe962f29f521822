"""Process groups: what a child's environment holds, how a group is killed,
whether it is gone, and this boot's id (a recorded group of another boot is
not ours).

The agent runs as the leader of a process group of its own, so that its
tools' processes can be killed with it; git runs the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# SIGTERM, this long for the group to go, SIGKILL, this long again.
TERM_GRACE_S = 5.0
KILL_WAIT_S = 2.0
_POLL_S = 0.05

# Never handed to the agent: a Bash tool could read the service's own secrets
# (its tokens, the remote's and the database's credentials), and CLAUDECODE
# makes a nested CLI think it runs inside another session.
_WITHHELD_ENV = frozenset(
    {
        "API_BEARER_TOKEN",
        "API_BEARER_TOKENS_FILE",
        "CLAUDECODE",
        "GIT_REPO_URL",
        "DATABASE_URL",
        "WEBHOOK_SECRET",
    }
)


def child_environment(
    environ: Mapping[str, str], dotenv: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The agent's environment: the service's own, with the agent's variables
    from `.env` under it (the environment wins, as for the settings), minus
    what the agent must not see."""
    merged = {**(dotenv or {}), **environ}
    return {k: v for k, v in merged.items() if k not in _WITHHELD_ENV}


async def terminate_group(proc: Any) -> None:
    """SIGTERM the process group, wait, SIGKILL, wait; reap the leader.

    Runs even when the leader has exited: its descendants share the group.
    A test double without an int pid has no group to signal.
    """
    pgid = proc.pid
    if not isinstance(pgid, int):
        return
    await _kill_group(pgid, proc)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_WAIT_S)


async def kill_group_by_id(pgid: int) -> bool:
    """Kill a group recorded earlier (by a previous service process). True if it lived."""
    return await _kill_group(pgid, None)


async def _kill_group(pgid: int, leader: Any) -> bool:
    if not _signal_group(pgid, signal.SIGTERM):
        return False
    if await _wait_gone(pgid, leader, TERM_GRACE_S):
        return True
    logger.warning("process group %d ignored SIGTERM for %.0fs; killing", pgid, TERM_GRACE_S)
    _signal_group(pgid, signal.SIGKILL)
    if not await _wait_gone(pgid, leader, KILL_WAIT_S):
        logger.error("process group %d survived SIGKILL", pgid)
    return True


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), to tell it from a later reuse of its id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses; count from the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs.

    A zombie does not: it has exited and only waits to be reaped, by its
    parent or, once reparented, by PID 1, which takes seconds where PID 1
    reaps slowly and forever in a container without an init. The CLI often
    leaves such a `git` child behind.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_running_member(pgid)


def _has_running_member(pgid: int) -> bool:
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # no /proc to tell: the signal said something is there
    for name in names:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command name (field 2) may hold spaces and parentheses; count from the last ")"
        state, _, group = stat[stat.rindex(")") + 2 :].split(maxsplit=3)[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.error("not allowed to signal process group %d", pgid)
        return False
    return True


async def _wait_gone(pgid: int, leader: Any, timeout_s: float) -> bool:
    """Wait until the leader (if ours) is reaped and no process of the group is left.

    Polls: nothing signals that a process group has emptied.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        leader_running = leader is not None and leader.returncode is None
        if not leader_running and not group_alive(pgid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if leader_running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leader.wait(), min(remaining, _POLL_S * 4))
        else:
            await asyncio.sleep(min(remaining, _POLL_S))


def boot_id() -> str | None:
    """This boot's id: a process group recorded under another boot is not ours."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
