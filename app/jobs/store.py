"""The job store: what the worker and the API ask of it, whatever keeps the jobs.

`SQLiteJobStore` (app/jobs/sqlite.py) is the embedded default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from app.errors import ServiceError
from app.jobs.models import EventState, Job, JobEvent, JobStatus, NewJob, Outcome

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# An event page held for one stream: rows up to about this much data.
EVENT_PAGE_BYTES = 256 * 1024
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


class JobStore(Protocol):
    """Jobs and their events."""

    @property
    def write_error(self) -> str | None:
        """Why the last write failed, until a write succeeds again (None: healthy)."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> None:
        """Try a small write, to learn whether a failing store is back (clears
        `write_error` when it is); raises StoreUnavailable when it is not."""
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

    async def claim_next(self, *, slot: int = 0) -> Job | None:
        """Atomically move the oldest queued job to `running` in workspace
        `slot` and return it."""
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
        session_id: str | None = None,
    ) -> None:
        """Store events numbered by the caller, and the log's `state` after them;
        record `session_id` on the job if it has none yet, in the same transaction."""
        ...

    async def finish(self, job_id: str, outcome: Outcome) -> bool:
        """Record how a running job ended, with its final status event after
        every event before it; False if it was no longer running."""
        ...

    async def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued (any more)."""
        ...

    async def interrupt_running(self, error: str) -> list[Job]:
        """At start-up: mark every job still `running` as interrupted (its
        session id recovered from its stored events); return them."""
        ...

    async def prune(self, older_than: timedelta) -> int:
        """Delete finished jobs (and their events) that finished before now - `older_than`."""
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
