"""Running the CLI: spawn it in its own process group, read it, bound it, reap it.

Everything that waits here has a limit. The agent runs as the leader of a new
process group (`start_new_session=True`) so that its tools' processes can be
killed with it: on timeout, on cancellation, and after every run, since a
grandchild that outlives the CLI would otherwise hold the pipes and orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

from app.agent.command import AgentCommand
from app.agent.stream import (
    STDERR_TAIL_BYTES,
    AgentResult,
    Event,
    LineFramer,
    StreamCollector,
)
from app.aio import complete_even_if_cancelled
from app.proc import KILL_WAIT_S, terminate_group

logger = logging.getLogger(__name__)

# The CLI's lines are often longer than asyncio's 64 KiB line limit, so lines
# are framed here; one over this is dropped (and logged), never buffered whole.
STDOUT_LINE_LIMIT_BYTES = 16 * 2**20
_CHUNK_BYTES = 64 * 1024
# After the CLI's leader exits, stdout is read while it still yields lines, and
# given up after this long with none (a grandchild may hold the pipe open).
DRAIN_IDLE_S = 1.0
# How long the CLI may take to exit after printing its result.
EXIT_GRACE_S = 5.0
_POLL_S = 0.05

Spawn = Callable[..., Awaitable[Any]]
OnLine = Callable[[bytes, Event | None], Awaitable[None]]
OnStart = Callable[[int], Awaitable[None]]


class SpawnError(Exception):
    """The CLI could not be started at all (missing binary, bad workspace)."""


async def run_agent_process(
    command: AgentCommand,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    spawn: Spawn,
    on_line: OnLine | None = None,
    on_start: OnStart | None = None,
    max_turns: int | None = None,
) -> AgentResult:
    """Run one CLI process to its end and return the outcome.

    `spawn` is `asyncio.create_subprocess_exec` (passed in by the caller so the
    seam stays where the tests patch it). A timeout ends the run with
    `timed_out`; a cancellation kills the group and propagates.
    """
    try:
        proc = await spawn(
            *command.argv,
            stdin=asyncio.subprocess.PIPE
            if command.stdin is not None
            else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise SpawnError(_spawn_error_text(exc, command.argv[0], cwd)) from exc

    collector = StreamCollector(max_turns=max_turns)
    stderr = bytearray()
    helpers = [asyncio.create_task(_drain_tail(proc.stderr, stderr))]
    if command.stdin is not None:
        helpers.append(asyncio.create_task(_feed_stdin(proc.stdin, command.stdin)))
    exit_code: int | None = None
    timed_out = False
    try:
        if on_start is not None and isinstance(proc.pid, int):
            await on_start(proc.pid)
        async with asyncio.timeout(timeout_s):
            exit_code = await _read_until_done(proc, collector, on_line)
    except TimeoutError:
        timed_out = True
    finally:
        await complete_even_if_cancelled(_finish(proc, helpers))
    if exit_code is None and isinstance(proc.returncode, int):
        exit_code = proc.returncode
    return collector.finish(exit_code=exit_code, stderr=bytes(stderr), timed_out=timed_out)


async def _read_until_done(
    proc: Any, collector: StreamCollector, on_line: OnLine | None
) -> int | None:
    """Read stdout to the first `result` or EOF, and wait for the leader's exit.

    Returns the exit code, or None when the CLI lingers after its result.
    """
    reader = asyncio.create_task(_read_lines(proc.stdout, collector, on_line))
    waiter = asyncio.create_task(_leader_exit(proc))
    try:
        await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            # The leader is gone; read what it left, while it keeps coming.
            while not reader.done():
                seen = collector.lines
                await asyncio.wait({reader}, timeout=DRAIN_IDLE_S)
                if not reader.done() and collector.lines == seen:
                    logger.warning("stdout still open after the CLI exited; a descendant holds it")
                    break
        if reader.done():
            reader.result()
        if collector.fatal is not None and collector.result is None:
            logger.warning("ending the run: %s", collector.fatal)
            return None  # the group is killed now, not after the CLI's retries
        done, _ = await asyncio.wait({waiter}, timeout=EXIT_GRACE_S if collector.done else None)
        if not done:
            logger.warning("the CLI did not exit %.0fs after its result", EXIT_GRACE_S)
            return None
        return waiter.result()
    finally:
        for task in (reader, waiter):
            if not task.done():
                task.cancel()
        await asyncio.gather(reader, waiter, return_exceptions=True)


async def _leader_exit(proc: Any) -> int | None:
    """The leader's exit code, as soon as it is reaped.

    `Process.wait()` alone is not enough: on Python 3.11 it also waits for the
    pipes to close, which a descendant holding them may never do.
    """
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=_POLL_S)
            if done:
                code = waiter.result()
                return code if isinstance(code, int) else None
            if isinstance(proc.returncode, int):
                return int(proc.returncode)
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)


async def _read_lines(stdout: Any, collector: StreamCollector, on_line: OnLine | None) -> None:
    async with contextlib.aclosing(_lines(stdout)) as lines:
        async for line in lines:
            event = collector.feed(line)
            if on_line is not None:
                await on_line(line, event)
            if collector.done:
                return


async def _lines(stdout: Any) -> AsyncGenerator[bytes, None]:
    """stdout line by line, in bounded memory however long a line is.

    A StreamReader is read in chunks and framed here, so its own buffer stays
    small (it pauses the pipe at twice its 64 KiB limit) and a line over
    STDOUT_LINE_LIMIT_BYTES is dropped, not buffered. Anything else that
    iterates lines (a wrapped pipe, a test double) is iterated.
    """
    if not isinstance(stdout, asyncio.StreamReader):
        async for line in stdout:
            yield line
        return
    framer = LineFramer(STDOUT_LINE_LIMIT_BYTES)
    try:
        while chunk := await stdout.read(_CHUNK_BYTES):
            for line in framer.feed(chunk):
                yield line
        last = framer.close()
        if last is not None:
            yield last
    finally:
        if framer.oversized:
            logger.warning(
                "dropped %d stdout lines over %d bytes", framer.oversized, STDOUT_LINE_LIMIT_BYTES
            )


async def _drain_tail(stream: Any, sink: bytearray) -> None:
    """Read a stream to EOF so its pipe never fills, keeping only its tail."""
    if isinstance(stream, asyncio.StreamReader):
        while chunk := await stream.read(_CHUNK_BYTES):
            sink += chunk
            del sink[:-STDERR_TAIL_BYTES]
    else:  # anything else that offers read() (a wrapped pipe, a test double)
        sink += (await stream.read())[-STDERR_TAIL_BYTES:]


async def _feed_stdin(stdin: Any, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        logger.warning("the CLI closed stdin before reading the whole prompt")
    finally:
        stdin.close()


async def _finish(proc: Any, helpers: list[asyncio.Task[None]]) -> None:
    """Kill what is left of the group, reap the leader, end the pipe readers."""
    await terminate_group(proc)
    _, pending = await asyncio.wait(helpers, timeout=KILL_WAIT_S) if helpers else ((), ())
    for task in pending:
        task.cancel()
    await asyncio.gather(*helpers, return_exceptions=True)


def _spawn_error_text(exc: OSError, binary: str, cwd: Path) -> str:
    if not cwd.is_dir():
        return f"the workspace {cwd} does not exist or is not a directory"
    if isinstance(exc, PermissionError):
        return f"the Claude CLI {binary!r} is not executable"
    return f"the Claude CLI {binary!r} was not found (set CLAUDE_BIN)"
