"""The job store: what the worker and the API ask of it, whatever keeps the jobs.

`SQLiteJobStore` (app/jobs/sqlite.py) is the embedded default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal, Protocol

from app.errors import ServiceError
from app.jobs.models import Delivery, EventState, Job, JobEvent, JobStatus, NewJob, Outcome

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# An event page held for one stream: rows up to about this much data.
EVENT_PAGE_BYTES = 256 * 1024
# How long a webhook delivery is retried (WEBHOOK_RETRY_SECONDS).
DEFAULT_WEBHOOK_RETRY_S = 3600.0
# What a client is told to wait when the store cannot write.
STORE_RETRY_AFTER_S = 30


class QueueFull(Exception):
    """MAX_QUEUE_DEPTH jobs are already queued."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used, within its window, for a different request."""


class StoreUnavailable(ServiceError):
    """The store cannot read or write now (a full disk, a database gone); the
    message says why and is safe to show. Answered as 503, to retry later."""

    status_code = 503
    error = "store unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


class DatabaseError(Exception):
    """The job database cannot be used at start-up; the message names it and what to do."""


class LeaseLost(Exception):
    """The job is no longer this instance's to write (its lease expired and
    another instance interrupted it, or it ended meanwhile)."""


# What a store tells its listeners: a job changed (new events, a new status;
# with its id), a job was queued, a running job is asked to end (a cancel made
# on another instance; with its id), or notices may have been missed (after a
# lost connection: look at everything again).
Notice = Literal["changed", "queued", "cancel", "missed"]
Listener = Callable[[Notice, str], None]


class JobStore(Protocol):
    """Jobs and their events, shared by every instance that names the same store.

    A running job belongs to one instance (`owner`, its INSTANCE_ID) for as
    long as its lease lasts; the owner renews the lease while the run goes
    on, and every write it makes for the job is fenced: it takes effect only
    while the job is still running and still its own.
    """

    @property
    def write_error(self) -> str | None:
        """Why the last write failed, until a write succeeds again (None: healthy)."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other instances may use this store (then a restarting instance
        recovers only its own jobs)."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> None:
        """Try a small write, to learn whether a failing store is back (clears
        `write_error` when it is); raises StoreUnavailable when it is not."""
        ...

    def listen(self, listener: Listener) -> None:
        """Call `listener` for changes made by any instance (a store shared by
        several instances delivers them; an embedded one has only this one)."""
        ...

    # -- submitting and reading --------------------------------------------

    async def submit(self, new: NewJob, *, max_queued: int) -> tuple[Job, bool]:
        """Store a queued job; or, for a known Idempotency-Key, return that job.

        Returns the job and whether it was created now. Raises QueueFull,
        IdempotencyConflict, StoreUnavailable.
        """
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Job], int | None]:
        """Newest first; returns the page and the cursor of the next one (or None)."""
        ...

    async def status(self, job_id: str) -> JobStatus | None: ...

    async def has_queued(self) -> bool: ...

    async def queue_depth(self) -> int:
        """How many jobs are queued."""
        ...

    async def cost_since(self, since: str) -> float:
        """The CLI's total_cost_usd summed over jobs that finished at or after
        `since` (RFC 3339, UTC)."""
        ...

    async def events(
        self, job_id: str, *, after: int, limit: int, max_bytes: int = EVENT_PAGE_BYTES
    ) -> list[JobEvent]:
        """Events with `seq` > `after`, in order; at most `limit` of them, and no
        more once `max_bytes` of data is reached (at least one)."""
        ...

    # -- the worker's side ---------------------------------------------------

    async def claim_next(self, *, slot: int, owner: str, lease_s: float) -> Job | None:
        """Atomically move the oldest queued job to `running` in workspace
        `slot`, owned by `owner` for `lease_s`, and return it."""
        ...

    async def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend `owner`'s leases on `job_ids`; return those it still holds."""
        ...

    async def set_process_group(
        self, job_id: str, pgid: int, boot_id: str | None, leader_start: int | None
    ) -> None:
        """Remember the run's process group, to kill it after a crash of the service."""
        ...

    async def event_state(self, job_id: str) -> EventState:
        """Where the job's event log stands, for the run that appends to it."""
        ...

    async def append_events(
        self,
        job_id: str,
        events: Sequence[JobEvent],
        state: EventState,
        *,
        owner: str,
        session_id: str | None = None,
    ) -> None:
        """Store events numbered by the caller, and the log's `state` after them;
        record `session_id` on the job if it has none yet, in the same
        transaction. Raises LeaseLost when the job is not `owner`'s running job."""
        ...

    async def finish(self, job_id: str, outcome: Outcome, *, owner: str) -> bool:
        """Record how `owner`'s running job ended, with its final status event
        after every event before it; False if it was not (any more)."""
        ...

    async def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued (any more)."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Ask the owner of a running job to end it (cancelled); False if it is
        not running. The owner learns it from `listen` ("cancel") or
        `cancel_requests`."""
        ...

    async def cancel_requests(self, owner: str) -> list[str]:
        """`owner`'s running jobs that someone asked to cancel."""
        ...

    async def interrupt_running(self, error: str, *, owner: str | None) -> list[Job]:
        """At start-up: mark the running jobs of `owner` (None: every running
        job) interrupted, their session ids recovered from their stored
        events; return them."""
        ...

    async def interrupt_expired(self, error: str, *, except_owner: str) -> list[Job]:
        """Mark interrupted the running jobs whose lease expired (their instance
        stopped while they ran), but `except_owner`'s; return them."""
        ...

    async def prune(self, older_than: timedelta) -> int:
        """Delete finished jobs (and their events) that finished before now - `older_than`."""
        ...

    # -- webhook deliveries --------------------------------------------------
    # A job with a webhook_url gets a delivery with its final status event (in
    # the same transaction): stored before the first attempt, so never lost.

    async def due_deliveries(self, *, limit: int, hold_s: float) -> list[Delivery]:
        """Take deliveries whose next attempt is due, for `hold_s` (no other
        instance takes them meanwhile)."""
        ...

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        payload: str,
        status: int | None,
        error: str | None,
        delivered: bool,
        retry_at: str | None,
    ) -> None:
        """Record an attempt: delivered; or to retry at `retry_at`; or, with
        neither, given up."""
        ...


def status_event(job_id: str, status: JobStatus, at: str, error: str | None = None) -> str:
    """The JSON of a status change event."""
    body: dict[str, Any] = {"type": "status", "status": status.value, "job_id": job_id, "at": at}
    if error is not None:
        body["error"] = error
    return json.dumps(body)


def truncated_marker(max_bytes: int) -> str:
    """The JSON of the event that marks where a job's events were cut."""
    return json.dumps(
        {
            "type": "truncated",
            "detail": f"this job's events reached JOB_MAX_EVENT_BYTES ({max_bytes} bytes); "
            "later events are not stored, except status changes and the result",
        }
    )
