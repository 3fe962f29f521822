"""The worker: runs queued jobs one at a time, records every event and outcome.

One worker per service process. It takes the workspace lock before it claims a
job, so a job never shows `running` while a chat completion holds the
workspace, and chat completions get 503 while a job runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from app.agent.process import OnLine, OnStart, SpawnError, kill_group_by_id, start_ticks
from app.agent.run import AgentRun, SyncFailed, log_end
from app.agent.stream import AgentResult
from app.jobs.events import RETRY_FIRST_S, RETRY_MAX_S, EventSink, JobEvents
from app.jobs.models import Job, JobStatus, Outcome
from app.jobs.store import JobStore, StoreUnavailable
from app.redact import redact
from app.workspace.git import GitReport

logger = logging.getLogger(__name__)

# How long the worker sleeps when nothing wakes it (a safety net, not the path).
IDLE_POLL_S = 5.0
# While the store cannot write, how often the worker tries a small write.
STORE_PROBE_S = 2.0
LOCK_POLL_S = 0.1
STOP_WAIT_S = 300.0
PRUNE_INTERVAL_S = 3600.0
# How long a cancel request waits for the killed run to be recorded.
CANCEL_WAIT_S = 15.0
ERROR_TEXT_LIMIT = 4000
INTERRUPTED_ERROR = "the service stopped while this job was running"
_UNSTORABLE = "internal error: the outcome could not be stored: "


class Execute(Protocol):
    """Runs the agent in the workspace; the caller already holds the lock."""

    def __call__(
        self,
        run: AgentRun,
        *,
        report: GitReport,
        on_line: OnLine | None,
        on_start: OnStart | None,
    ) -> Coroutine[Any, Any, AgentResult]: ...


def outcome_of(result: AgentResult, timeout_s: float) -> Outcome:
    """The job record of a finished run."""
    if result.timed_out:
        status = JobStatus.TIMEOUT
        error: str | None = f"the run timed out after {timeout_s:g}s (timeout_seconds)"
    elif result.ok:
        status, error = JobStatus.COMPLETED, None
    else:
        status, error = JobStatus.FAILED, (result.text or "the agent run failed")[:ERROR_TEXT_LIMIT]
    answer = result.result.get("result") if result.result else None
    if result.ok and answer is None:
        answer = result.text
    return Outcome(
        status=status,
        result=redact(answer) if isinstance(answer, str) else None,
        is_error=status is not JobStatus.COMPLETED,
        error=redact(error) if error else None,
        session_id=result.session_id,
        total_cost_usd=result.total_cost_usd,
        num_turns=result.num_turns,
        duration_ms=result.duration_ms,
        usage=result.usage,
        permission_denials=result.permission_denials,
        exit_code=result.exit_code,
        stderr_tail=redact(result.stderr_tail) or None,
    )


def boot_id() -> str | None:
    """This boot's id: a process group recorded under another boot is not ours."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _still_ours(job: Job, this_boot: str | None) -> bool:
    """Whether the process group recorded for a job can only be that job's.

    Same boot, and the leader is either gone (its id stays taken while the
    group lives) or the very process we started (same start time).
    """
    pgid = job.pgid
    if pgid is None or pgid <= 1 or this_boot is None or job.boot_id != this_boot:
        return False
    now = start_ticks(pgid)
    return now is None or now == job.leader_start


class Worker:
    """Claims queued jobs in order and runs each under the workspace lock."""

    def __init__(
        self,
        store: JobStore,
        hub: JobEvents,
        *,
        execute: Execute,
        workspace_lock: Callable[[], asyncio.Lock],
        max_event_bytes: int,
        retention: timedelta,
    ) -> None:
        self._store = store
        self._hub = hub
        self._execute = execute
        self._workspace_lock = workspace_lock
        self._max_event_bytes = max_event_bytes
        self._retention = retention
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._current: tuple[str, asyncio.Task[AgentResult]] | None = None
        self._cancel_reason: JobStatus | None = None
        self._recorded: dict[str, asyncio.Event] = {}
        self._sinks: set[EventSink] = set()

    # -- life cycle ----------------------------------------------------------

    async def recover(self) -> None:
        """Mark jobs a dead predecessor left `running` as interrupted; kill their groups."""
        this_boot = boot_id()
        for job in await self._store.interrupt_running(INTERRUPTED_ERROR):
            logger.warning("job %s was running when the service stopped: interrupted", job.id)
            if _still_ours(job, this_boot) and job.pgid and await kill_group_by_id(job.pgid):
                logger.warning("killed process group %d left by job %s", job.pgid, job.id)
            self._hub.notify(job.id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="job-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; give the running job `grace_s`, then interrupt it."""
        self._stopping = True
        self._wake.set()
        self._hub.close()
        current = self._current
        if current is not None:
            _, run = current
            done, _ = await asyncio.wait({run}, timeout=grace_s)
            if not done:
                logger.warning("shutting down: interrupting job %s", current[0])
                self._cancel_reason = JobStatus.INTERRUPTED
                run.cancel()
        if self._task is not None:
            # bounded: the run's clean-up (kill the group, push its work) is
            # bounded by its own timeouts; this is the backstop
            stopped, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
            if not stopped:
                logger.error("the job worker did not stop in %.0fs; cancelling it", STOP_WAIT_S)
                self._task.cancel()

    # -- cancelling ----------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel `job_id` if this worker runs it; wait (bounded) until it is recorded."""
        current = self._current
        if current is None or current[0] != job_id:
            return False
        recorded = self._recorded.setdefault(job_id, asyncio.Event())
        if self._cancel_reason is None:  # a second cancel only waits for the first
            self._cancel_reason = JobStatus.CANCELLED
            current[1].cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorded.wait(), CANCEL_WAIT_S)
        return True

    # -- the loop --------------------------------------------------------------

    async def _loop(self) -> None:
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if loop.time() >= next_prune:
                await self._prune()
                next_prune = loop.time() + PRUNE_INTERVAL_S
            self._wake.clear()
            if not await self._store_writes():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), STORE_PROBE_S)
                continue
            try:
                if await self._run_next():
                    continue
            except StoreUnavailable as exc:
                logger.error("the job store cannot be written: %s", exc)
            except Exception:
                logger.exception("the job worker hit an error; going on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def _store_writes(self) -> bool:
        """Whether the store takes writes; while it does not, probe it (so that
        /health and submissions learn when it is back) rather than claim.

        A run retrying its own events is the better probe: a small write may
        fit where its batch does not, and the state would flap.
        """
        if self._store.write_error is None:
            return True
        if not any(sink.waiting for sink in self._sinks):
            with contextlib.suppress(StoreUnavailable):
                await self._store.probe()
        return self._store.write_error is None

    async def _run_next(self) -> bool:
        """Run the oldest queued job, if any; False when the queue is empty."""
        if not await self._store.has_queued():
            return False
        # Never wait on the lock itself: a waiter would queue ahead of chat
        # requests, which must see a free workspace as free (or get 503).
        while self._workspace_lock().locked():
            if self._stopping:
                return False
            await asyncio.sleep(LOCK_POLL_S)
        async with self._workspace_lock():
            if self._stopping:
                return False
            job = await self._store.claim_next()
            if job is None:
                return False
            self._hub.notify(job.id)
            await self._run(job)
        return True

    async def _prune(self) -> None:
        try:
            pruned = await self._store.prune(self._retention)
        except Exception:
            logger.exception("pruning old jobs failed")
            return
        if pruned:
            logger.info("deleted %d jobs older than the retention period", pruned)

    async def _run(self, job: Job) -> None:
        job_id = job.id
        state = await self._store.event_state(job_id)
        sink = EventSink(self._store, self._hub, job_id, self._max_event_bytes, state)
        self._hub.attach(job_id, sink)
        self._sinks.add(sink)
        run = AgentRun(
            prompt=job.prompt,
            model=job.model,
            max_budget_usd=job.max_budget_usd,
            timeout_s=job.timeout_seconds,
            agent=job.agent,
            resume_session_id=job.resume_session_id,
            run_id=job_id,
            label=f"job {job_id}",
        )
        report = GitReport()
        current_boot = boot_id()

        async def on_start(pgid: int) -> None:
            try:
                await self._store.set_process_group(job_id, pgid, current_boot, start_ticks(pgid))
            except StoreUnavailable as exc:  # only needed after a crash; the run goes on
                logger.warning("job %s: its process group is not recorded: %s", job_id, exc)

        task = asyncio.create_task(
            self._execute(run, report=report, on_line=sink.on_line, on_start=on_start)
        )
        self._current = (job_id, task)
        self._cancel_reason = None
        logger.info("job %s started", job_id)
        outcome: Outcome | None = None
        try:
            outcome = outcome_of(await task, run.timeout_s)
        except asyncio.CancelledError:
            reason = self._cancel_reason or JobStatus.INTERRUPTED
            cancelled = reason is JobStatus.CANCELLED
            error = "cancelled while running" if cancelled else INTERRUPTED_ERROR
            outcome = Outcome(status=reason, is_error=True, error=error)
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                raise  # the worker itself is being cancelled; recorded below all the same
        except SpawnError as exc:
            outcome = Outcome(status=JobStatus.FAILED, is_error=True, error=str(exc))
        except SyncFailed as exc:
            error = f"git sync failed (GIT_SYNC_REQUIRED): {exc}"
            outcome = Outcome(status=JobStatus.FAILED, is_error=True, error=error)
        except Exception as exc:
            logger.exception("job %s: the run raised", job_id)
            error = f"internal error: {exc}"
            outcome = Outcome(status=JobStatus.FAILED, is_error=True, error=error)
        finally:
            self._current = None
            if outcome is not None:
                outcome.git = report.as_dict()
            await asyncio.shield(self._record(job_id, sink, outcome))

    async def _record(self, job_id: str, sink: EventSink, outcome: Outcome | None) -> None:
        """Store the run's last events, then its outcome: after every event, and
        however long a failing store takes to come back (bounded backoff)."""
        await sink.close()
        self._hub.detach(job_id)
        self._sinks.discard(sink)
        final = outcome or Outcome(
            status=JobStatus.INTERRUPTED, is_error=True, error=INTERRUPTED_ERROR
        )
        if final.session_id is None:
            final.session_id = sink.session_id
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._store.finish(job_id, final)
                break
            except StoreUnavailable as exc:
                logger.error(
                    "job %s ended %s; its outcome waits for the store (%s); retrying in %.1fs",
                    job_id,
                    final.status,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:  # never leave a job `running`: record that much
                logger.exception("could not store the outcome of job %s", job_id)
                if final.error and final.error.startswith(_UNSTORABLE):
                    break  # not even that could be stored; a restart marks it interrupted
                error = f"{_UNSTORABLE}{exc}"
                final = Outcome(status=JobStatus.FAILED, is_error=True, error=error)
        self._hub.notify(job_id)
        log_end(f"job {job_id}", final.status, redact(final.error or ""), final.total_cost_usd)
        recorded = self._recorded.pop(job_id, None)
        if recorded is not None:
            recorded.set()


@dataclass(frozen=True, slots=True)
class JobRuntime:
    """What the job API needs: the store, the event hub, the worker."""

    store: JobStore
    hub: JobEvents
    worker: Worker
