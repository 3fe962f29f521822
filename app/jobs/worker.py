"""The worker: runs queued jobs, one per free workspace, and records every
event and outcome.

One worker per service process. It takes a free workspace before it claims a
job, so a job never shows `running` without a workspace to run in; chat
completions get 503 only while every workspace is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from app import logs, metrics
from app.agent.process import OnLine, OnStart, SpawnError
from app.agent.run import AgentRun, SyncFailed, log_end
from app.agent.stream import AgentResult
from app.jobs.events import RETRY_FIRST_S, RETRY_MAX_S, EventSink, JobEvents
from app.jobs.models import Job, JobStatus, Outcome
from app.jobs.store import JobStore, Notice, StoreUnavailable
from app.proc import boot_id, kill_group_by_id, start_ticks
from app.redact import redact
from app.workspace.pool import Workspace, WorkspacePool
from app.workspace.publish import GitReport

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
LEASE_EXPIRED_ERROR = "its instance stopped while it ran (its lease expired)"
# How often cancels asked on other instances are looked for (behind the
# notifications), at most.
CANCEL_POLL_S = 1.0
# A prompt logged with LOG_PROMPTS=true: its beginning.
PROMPT_LOG_CHARS = 2000
_UNSTORABLE = "internal error: the outcome could not be stored: "


class Execute(Protocol):
    """Runs the agent in a workspace the caller holds."""

    def __call__(
        self,
        run: AgentRun,
        *,
        workspace: Workspace,
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
        structured_output=result.structured_output,
    )


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


@dataclass(slots=True, eq=False)
class _Running:
    """A claimed job in this process: its run (once started), and why it is
    being ended early, if it is."""

    task: asyncio.Task[AgentResult] | None = None
    cancel_reason: JobStatus | None = None


class Worker:
    """Claims queued jobs in submission order, one per free workspace, and runs them."""

    def __init__(
        self,
        store: JobStore,
        hub: JobEvents,
        *,
        execute: Execute,
        pool: WorkspacePool,
        max_event_bytes: int,
        retention: timedelta,
        owner: str = "local",
        lease_s: float = 30.0,
        log_prompts: bool = False,
    ) -> None:
        self.log_prompts = log_prompts
        self._store = store
        self.owner = owner
        self._lease_s = lease_s
        self._hub = hub
        self._execute = execute
        self._pool = pool
        self._max_event_bytes = max_event_bytes
        self._retention = retention
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._waiting_for_slot = False
        self._running: dict[str, _Running] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._recorded: dict[str, asyncio.Event] = {}
        self._sinks: set[EventSink] = set()
        self._on_end: list[Callable[[], None]] = []
        self._leases: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._runs_cancels: set[asyncio.Task[bool]] = set()
        # (taken as a failure at start: the reaper first gives owners a lease to renew)
        self._store_failed_at = time.monotonic()
        pool.on_release(self.wake)
        store.listen(self._heard)

    # -- life cycle ----------------------------------------------------------

    async def recover(self) -> None:
        """Mark jobs a dead predecessor left `running` as interrupted; kill their groups.

        A store of this process alone: every running job was its predecessor's.
        A shared one: only this instance's own (the others' are theirs, or
        interrupted once their leases expire).
        """
        owner = self.owner if self._store.shared else None
        jobs = await self._store.interrupt_running(INTERRUPTED_ERROR, owner=owner)
        await self._interrupted(jobs, "was running when the service stopped")

    async def _interrupted(self, jobs: list[Job], why: str) -> None:
        this_boot = boot_id()
        for job in jobs:
            logger.warning("job %s %s: interrupted", job.id, why)
            if _still_ours(job, this_boot) and job.pgid and await kill_group_by_id(job.pgid):
                logger.warning("killed process group %d left by job %s", job.pgid, job.id)
            self._hub.notify(job.id)

    def on_end(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a job's end is recorded here."""
        self._on_end.append(listener)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="job-worker")
        self._leases = asyncio.create_task(self._keep_leases(), name="job-leases")

    def _heard(self, notice: Notice, job_id: str) -> None:
        """A change any instance made: wake watchers; end a run asked to cancel."""
        if notice == "changed":
            self._hub.notify(job_id)
        elif notice == "queued":
            self.wake()
        elif notice == "missed":
            self._hub.notify_all()
            self.wake()
        elif notice == "cancel" and job_id in self._running:
            task = asyncio.create_task(self.cancel(job_id))
            self._runs_cancels.add(task)
            task.add_done_callback(self._runs_cancels.discard)

    async def _keep_leases(self) -> None:
        """Renew the leases of the jobs running here; interrupt the jobs of
        instances whose leases expired; act on cancels asked elsewhere (the
        poll behind the notifications)."""
        next_lease = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if loop.time() >= next_lease:
                    await self._renew()
                    await self._reap()
                    next_lease = loop.time() + self._lease_s / 3
                for job_id in await self._store.cancel_requests(self.owner):
                    self._heard("cancel", job_id)
            except StoreUnavailable as exc:
                self._store_failed_at = time.monotonic()
                logger.warning("leases not renewed: %s", exc)
            except Exception:
                logger.exception("keeping the leases failed; going on")
            if self._store.write_error is not None:
                self._store_failed_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), CANCEL_POLL_S)

    async def _renew(self) -> None:
        ids = [job_id for job_id, run in self._running.items() if run.task is not None]
        held = await self._store.renew(self.owner, ids, self._lease_s)
        for job_id in set(ids) - held:
            run = self._running.get(job_id)
            if run is not None and run.task is not None and not run.task.done():
                logger.warning("job %s is no longer this instance's (its lease was taken)", job_id)
                run.cancel_reason = JobStatus.INTERRUPTED
                run.task.cancel()

    async def _reap(self) -> None:
        # Right after an outage of the store every lease looks expired: give
        # their owners one lease period to renew before taking any.
        if time.monotonic() - self._store_failed_at < self._lease_s:
            return
        jobs = await self._store.interrupt_expired(LEASE_EXPIRED_ERROR, except_owner=self.owner)
        await self._interrupted(jobs, "outlived its instance's lease")

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; give the running jobs `grace_s`, then interrupt them."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._hub.close()
        running = {job_id: r for job_id, r in self._running.items() if r.task is not None}
        if running:
            tasks = {r.task for r in running.values() if r.task is not None}
            await asyncio.wait(tasks, timeout=grace_s)
            for job_id, run in running.items():
                if run.task is not None and not run.task.done():
                    logger.warning("shutting down: interrupting job %s", job_id)
                    run.cancel_reason = JobStatus.INTERRUPTED
                    run.task.cancel()
        # bounded: a run's clean-up (kill the group, push its work, record the
        # outcome) is bounded by its own timeouts; this is the backstop
        waits: set[asyncio.Task[None]] = set(self._runs)
        if self._task is not None:
            waits.add(self._task)
        if self._leases is not None:
            waits.add(self._leases)
        if waits:
            _, late = await asyncio.wait(waits, timeout=STOP_WAIT_S)
            if late:
                logger.error("the job worker did not stop in %.0fs; cancelling it", STOP_WAIT_S)
                for task in late:
                    task.cancel()

    # -- cancelling ----------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel `job_id` if this worker runs it; wait (bounded) until it is
        recorded, or until the store refuses to record it."""
        run = self._running.get(job_id)
        if run is None:
            return False
        recorded = self._recorded.setdefault(job_id, asyncio.Event())
        if run.cancel_reason is None:  # a second cancel only waits for the first
            run.cancel_reason = JobStatus.CANCELLED
            if run.task is not None:
                run.task.cancel()
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
                if await self._start_next():
                    continue
            except StoreUnavailable as exc:
                logger.error("the job store cannot be written: %s", exc)
            except Exception:
                logger.exception("the job worker hit an error; going on")
            # A slot given back wakes the worker; a lock released by hand (as
            # tests do with execution_lock) is seen by the short poll.
            wait_s = LOCK_POLL_S if self._waiting_for_slot else IDLE_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

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

    async def _start_next(self) -> bool:
        """Start the oldest queued job in a free workspace; False when there is
        no job, or no free workspace (then `_waiting_for_slot`).

        The worker never waits on a workspace's lock: a waiter would queue
        ahead of chat requests, which must see a free workspace as free.
        """
        if not await self._store.has_queued():
            self._waiting_for_slot = False
            return False
        workspace = await self._pool.try_acquire()
        self._waiting_for_slot = workspace is None
        if workspace is None:
            return False
        handed_over = False
        try:
            if self._stopping:
                return False
            job = await self._store.claim_next(
                slot=workspace.slot, owner=self.owner, lease_s=self._lease_s
            )
            if job is None:
                return False
            self._running[job.id] = _Running()
            self._hub.notify(job.id)
            task = asyncio.create_task(self._run(job, workspace), name=f"job-{job.id}")
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)
            handed_over = True
            return True
        finally:
            if not handed_over:
                self._pool.release(workspace)

    async def _prune(self) -> None:
        try:
            pruned = await self._store.prune(self._retention)
        except Exception:
            logger.exception("pruning old jobs failed")
            return
        if pruned:
            logger.info("deleted %d jobs older than the retention period", pruned)

    async def _run(self, job: Job, workspace: Workspace) -> None:
        """Run a claimed job in `workspace`, record its outcome, give the workspace back."""
        logs.job_id.set(job.id)  # this task's log lines (and its children's) name the job
        try:
            await self._run_in(job, workspace)
        finally:
            self._running.pop(job.id, None)
            self._pool.release(workspace)

    async def _run_in(self, job: Job, workspace: Workspace) -> None:
        job_id = job.id
        running = self._running[job_id]
        state = await self._store.event_state(job_id)

        def lost() -> None:  # another instance took the job: end the run here
            if running.task is not None and not running.task.done():
                running.cancel_reason = JobStatus.INTERRUPTED
                running.task.cancel()

        sink = EventSink(
            self._store,
            self._hub,
            job_id,
            self._max_event_bytes,
            state,
            owner=self.owner,
            on_lost=lost,
        )
        self._hub.attach(job_id, sink)
        self._sinks.add(sink)
        options = job.options or {}
        run = AgentRun(
            prompt=job.prompt,
            model=job.model,
            max_budget_usd=job.max_budget_usd,
            timeout_s=job.timeout_seconds,
            agent=job.agent,
            resume_session_id=job.resume_session_id,
            run_id=job_id,
            label=f"job {job_id}",
            json_schema=options.get("json_schema"),
            allowed_tools=tuple(options.get("allowed_tools") or ()),
            disallowed_tools=tuple(options.get("disallowed_tools") or ()),
            append_system_prompt=options.get("append_system_prompt"),
            max_turns=options.get("max_turns"),
        )
        report = GitReport()
        current_boot = boot_id()

        async def on_start(pgid: int) -> None:
            try:
                await self._store.set_process_group(job_id, pgid, current_boot, start_ticks(pgid))
            except StoreUnavailable as exc:  # only needed after a crash; the run goes on
                logger.warning("job %s: its process group is not recorded: %s", job_id, exc)

        task = asyncio.create_task(
            self._execute(
                run, workspace=workspace, report=report, on_line=sink.on_line, on_start=on_start
            )
        )
        running.task = task
        if running.cancel_reason is not None:  # cancelled between its claim and now
            task.cancel()
        started = time.monotonic()
        logger.info("job %s started in slot %d", job_id, workspace.slot)
        if self.log_prompts:
            logger.info("job %s prompt: %s", job_id, job.prompt[:PROMPT_LOG_CHARS])
        outcome: Outcome | None = None
        try:
            outcome = outcome_of(await task, run.timeout_s)
        except asyncio.CancelledError:
            reason = running.cancel_reason or JobStatus.INTERRUPTED
            cancelled = reason is JobStatus.CANCELLED
            error = "cancelled while running" if cancelled else INTERRUPTED_ERROR
            outcome = Outcome(status=reason, is_error=True, error=error)
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                task.cancel()  # this task itself is being cancelled: end the run with it
                raise  # recorded below all the same
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
            if outcome is not None:
                outcome.git = report.as_dict()
            await asyncio.shield(self._record(job_id, sink, outcome, started, job.model))

    async def _record(
        self,
        job_id: str,
        sink: EventSink,
        outcome: Outcome | None,
        started: float | None = None,
        model: str | None = None,
    ) -> None:
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
                if not await self._store.finish(job_id, final, owner=self.owner):
                    logger.warning(
                        "job %s ended %s here, but it is no longer this instance's: not recorded",
                        job_id,
                        final.status,
                    )
                break
            except StoreUnavailable as exc:
                self._settled(job_id)  # a cancel waiting for it answers now (503)
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
        for listener in self._on_end:
            listener()
        log_end(
            f"job {job_id}", final.status, redact(final.error or ""), final.total_cost_usd, model
        )
        metrics.count_run(
            "job",
            final.status,
            duration_s=None if started is None else time.monotonic() - started,
            cost_usd=final.total_cost_usd,
            usage=final.usage,
        )
        self._settled(job_id)

    def _settled(self, job_id: str) -> None:
        """Wake the cancels waiting for `job_id`: its outcome is recorded, or
        the store refused it (the outcome is retried; the cancel says so)."""
        recorded = self._recorded.pop(job_id, None)
        if recorded is not None:
            recorded.set()


@dataclass(frozen=True, slots=True)
class JobRuntime:
    """What the job API needs: the store, the event hub, the worker."""

    store: JobStore
    hub: JobEvents
    worker: Worker
