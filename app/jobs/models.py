"""What a job is, the states it moves through, and the events it records."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple


class JobStatus(enum.StrEnum):
    """The life of a job. Only `queued` and `running` ever change again."""

    QUEUED = "queued"
    """Accepted and waiting for the worker, in submission order."""
    RUNNING = "running"
    """Claimed by the worker: the git sync and the CLI run are under way."""
    COMPLETED = "completed"
    """The CLI printed a successful `result`; `result` holds the answer."""
    FAILED = "failed"
    """The CLI reported an error, exited non-zero without a result, or could not start."""
    TIMEOUT = "timeout"
    """The run outlived its `timeout_seconds`; its process group was killed."""
    CANCELLED = "cancelled"
    """A caller cancelled it: before it ran, or by killing its process group."""
    INTERRUPTED = "interrupted"
    """The service stopped (or died) while it ran; it is not retried."""

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


def utc_now() -> str:
    """Now, as RFC 3339 in UTC with microseconds (sorts as text)."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    """`moment` as RFC 3339 in UTC with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A submission, validated, ready to store."""

    prompt: str
    model: str
    max_budget_usd: float
    timeout_seconds: float
    agent: str | None = None
    metadata: dict[str, Any] | None = None
    resume_session_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    submitted_by: str | None = None
    request_id: str | None = None
    options: dict[str, Any] | None = None
    """How the agent runs: allowed_tools, disallowed_tools, append_system_prompt,
    max_turns, json_schema (as the run takes them)."""
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook call due for a finished job (kept until it is delivered or given up)."""

    id: str
    job_id: str
    url: str
    attempts: int
    created_at: str
    give_up_at: str
    payload: str | None = None
    """The body, fixed at the first attempt, so every retry sends the same bytes."""


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the store keeps it; None where not known yet."""

    id: str
    num: int
    """Its place in submission order (the list cursor)."""
    status: JobStatus
    prompt: str
    model: str
    max_budget_usd: float
    timeout_seconds: float
    created_at: str
    agent: str | None = None
    metadata: dict[str, Any] | None = None
    resume_session_id: str | None = None
    queue_position: int | None = None
    """Queued jobs ahead of it, while it is queued."""
    started_at: str | None = None
    finished_at: str | None = None
    result: str | None = None
    is_error: bool | None = None
    error: str | None = None
    session_id: str | None = None
    total_cost_usd: float | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    usage: dict[str, Any] | None = None
    permission_denials: list[Any] | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    git: dict[str, Any] | None = None
    slot: int | None = None
    """The workspace it ran in, once it is claimed."""
    submitted_by: str | None = None
    """The name of the token that submitted it."""
    instance: str | None = None
    """The instance (INSTANCE_ID) that claimed it."""
    request_id: str | None = None
    """The X-Request-ID of the request that submitted it."""
    options: dict[str, Any] | None = None
    structured_output: Any = None
    """The JSON the CLI returned for a json_schema."""
    webhook_url: str | None = None
    webhook: dict[str, Any] | None = None
    """Its webhook delivery: url, attempts, last_status, last_error,
    delivered_at, next_attempt_at, failed."""
    events_truncated: bool = False
    events_dropped: int = 0
    pgid: int | None = None
    """The run's process group, its boot and its leader's start time: after a
    crash of the service, what to kill (and how to know it is still ours)."""
    boot_id: str | None = None
    leader_start: int | None = None


class JobEvent(NamedTuple):
    """One stored event: its sequence number in the job, its type, its JSON text."""

    seq: int
    kind: str
    data: str


@dataclass(frozen=True, slots=True)
class EventState:
    """Where a job's event log stands: the last sequence number and the byte cap's count."""

    last_seq: int = 0
    used_bytes: int = 0
    truncated: bool = False
    dropped: int = 0


@dataclass(slots=True)
class Outcome:
    """How a run ended, as the job record keeps it."""

    status: JobStatus
    result: str | None = None
    is_error: bool | None = None
    error: str | None = None
    session_id: str | None = None
    total_cost_usd: float | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    usage: dict[str, Any] | None = None
    permission_denials: list[Any] | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    git: dict[str, Any] | None = None
    structured_output: Any = None
