"""The job API: submit (`POST /execute`), inspect, list, cancel, and watch events."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.controls import known_session, resolve_controls
from app.api.deps import JobsDep, SettingsDep, resolve_model
from app.api.routing import StrictJsonRoute
from app.errors import ServiceError
from app.jobs.events import events_after, wait_ended
from app.jobs.models import Job, JobStatus, NewJob
from app.jobs.store import IdempotencyConflict, JobStore, QueueFull, StoreUnavailable
from app.jobs.worker import CANCEL_WAIT_S, JobRuntime
from app.schemas.controls import schema_problem
from app.schemas.errors import errors
from app.schemas.jobs import ExecuteRequest, JobAccepted, JobList, JobView
from app.settings import Settings, webhook_problem
from app.shutdown import SHUTDOWN_MARGIN_S

router = APIRouter(tags=["jobs"], route_class=StrictJsonRoute)

QUEUE_FULL_RETRY_AFTER_S = 30
# Cursors and event ids: plain ASCII digits that fit SQLite's 64-bit integers.
_COUNTER = re.compile(r"^[0-9]{1,18}$")
SSE_PING_S = 15
# One event of the stream (OpenAPI 3.2 style: its fields; `data` a JSON object).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event's sequence number in the job"},
        "event": {"type": "string", "description": "the CLI event's type, or `status`, ..."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "properties": {"type": {"type": "string"}},
                "required": ["type"],
            },
        },
    },
    "required": ["id", "event", "data"],
}


class NotFound(ServiceError):
    status_code = 404
    error = "not found"


@router.post(
    "/execute",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": "An Idempotency-Key repeat: that job"},
        **errors(400, 401, 413, 422, 429, 503),
    },
)
async def execute(
    body: ExecuteRequest,
    request: Request,
    settings: SettingsDep,
    jobs: JobsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JSONResponse:
    new = new_job(
        body,
        settings,
        idempotency_key=idempotency_key,
        submitted_by=getattr(request.state, "token_name", None),
        request_id=getattr(request.state, "request_id", None),
    )
    job, created = await submit_job(jobs, settings, new)
    accepted = JobAccepted(job_id=job.id, status=job.status, queue_position=job.queue_position)
    return JSONResponse(
        accepted.model_dump(mode="json"),
        status_code=202 if created else 200,
        headers={"Location": f"/jobs/{job.id}"},
    )


def new_job(
    body: ExecuteRequest,
    settings: Settings,
    *,
    idempotency_key: str | None = None,
    submitted_by: str | None = None,
    request_id: str | None = None,
) -> NewJob:
    """A submission checked against the settings (model, caps) and ready to store."""
    model = resolve_model(body.model, settings)
    budget = body.max_budget_usd or settings.job_max_budget_usd
    if budget > settings.job_max_budget_usd:
        raise ServiceError(
            f"max_budget_usd must be at most {settings.job_max_budget_usd:g} (JOB_MAX_BUDGET_USD)",
            error="invalid request",
        )
    timeout_s = body.timeout_seconds or settings.job_timeout_seconds
    if timeout_s > settings.job_timeout_seconds:
        raise ServiceError(
            f"timeout_seconds must be at most {settings.job_timeout_seconds:g} "
            "(JOB_TIMEOUT_SECONDS)",
            error="invalid request",
        )
    problem = None if body.json_schema is None else schema_problem(body.json_schema)
    if problem is not None:
        raise ServiceError(f"json_schema {problem}", error="invalid request")
    options = resolve_controls(body, settings, json_schema=body.json_schema)
    return NewJob(
        prompt=body.prompt,
        model=model,
        max_budget_usd=budget,
        timeout_seconds=timeout_s,
        agent=body.agent,
        metadata=body.metadata,
        resume_session_id=None if body.session_id is None else known_session(body.session_id),
        idempotency_key=idempotency_key,
        request_hash=_request_hash(body) if idempotency_key is not None else None,
        submitted_by=submitted_by,
        request_id=request_id,
        options={name: value for name, value in options.items() if value},
        webhook_url=_webhook_url(body.webhook_url, settings),
    )


def _webhook_url(requested: str | None, settings: Settings) -> str | None:
    """The URL to call when the job ends: the request's (its host allowed) or WEBHOOK_URL."""
    if requested is None:
        return settings.webhook_url
    problem = webhook_problem(requested, settings.webhook_allowed_hosts)
    if problem is not None:
        raise ServiceError(f"webhook_url {problem}", error="webhook not allowed")
    if settings.webhook_secret is None:
        raise ServiceError(
            "webhooks are off: the service has no WEBHOOK_SECRET to sign them with",
            error="webhook not allowed",
        )
    return requested


async def submit_job(jobs: JobRuntime, settings: Settings, new: NewJob) -> tuple[Job, bool]:
    """Store a submission (or find its Idempotency-Key's job) and wake the worker.

    Raises the API's errors: 429 queue full, 422 idempotency key reused, 503
    store unavailable.
    """
    if jobs.store.write_error is not None:  # not even tried: it would flap with the disk
        raise StoreUnavailable(jobs.store.write_error)
    try:
        job, created = await jobs.store.submit(new, max_queued=settings.max_queue_depth)
    except QueueFull:
        raise ServiceError(
            f"{settings.max_queue_depth} jobs are already queued (MAX_QUEUE_DEPTH)",
            error="queue full",
            status_code=429,
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        ) from None
    except IdempotencyConflict:
        raise ServiceError(
            "this Idempotency-Key was used for a different request in the last 24 hours",
            error="idempotency key reused",
            status_code=422,
        ) from None
    if created:
        jobs.worker.wake()
    return job, created


@router.get("/jobs", response_model=JobList, responses=errors(400, 401, 422, 503))
async def list_jobs(
    jobs: JobsDep,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: str | None = None,
) -> JobList:
    wanted = None
    if status is not None:
        try:
            wanted = JobStatus(status)
        except ValueError:
            raise ServiceError(
                f"unknown status {status!r}; one of: {', '.join(JobStatus)}",
                error="invalid request",
            ) from None
    cursor = None
    if before is not None:
        if not _COUNTER.match(before):
            raise ServiceError(
                "before must be a cursor from a previous page", error="invalid request"
            )
        cursor = int(before)
    found, next_cursor = await jobs.store.list_jobs(status=wanted, limit=limit, before=cursor)
    return JobList(
        jobs=[JobView.of(job) for job in found],
        next=None if next_cursor is None else str(next_cursor),
    )


@router.get("/jobs/{job_id}", response_model=JobView, responses=errors(401, 404, 503))
async def get_job(job_id: str, jobs: JobsDep) -> JobView:
    return JobView.of(await _get(jobs.store, job_id))


async def _get(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobView, responses=errors(401, 404, 409, 503))
async def cancel_job(job_id: str, jobs: JobsDep) -> JobView:
    return JobView.of(await cancel(jobs, job_id))


async def cancel(jobs: JobRuntime, job_id: str) -> Job:
    """Cancel a queued or running job; return it, cancelled. Raises the API's
    errors: 404, 409 job finished, 409 cancel pending, 503 store unavailable."""
    job = await _get(jobs.store, job_id)
    if job.status.terminal:
        raise _already_ended(job_id, job.status)
    if await jobs.store.cancel_queued(job_id):
        jobs.hub.notify(job_id)  # its event streams end now
    elif not await jobs.worker.cancel(job_id) and await jobs.store.request_cancel(job_id):
        # running on another instance: its owner ends it; wait (bounded) to see it
        await wait_ended(jobs.store, jobs.hub, job_id, CANCEL_WAIT_S)
    job = await _get(jobs.store, job_id)
    status = job.status
    if status is JobStatus.CANCELLED:
        return job
    if status.terminal:  # it ended on its own before the cancel reached it
        raise _already_ended(job_id, status)
    if jobs.store.write_error is not None:
        raise StoreUnavailable(
            f"{jobs.store.write_error}; the run was stopped, and its outcome is "
            "recorded once the store takes writes again"
        )
    raise ServiceError(
        f"job {job_id} is {status} and could not be cancelled yet; try again",
        error="cancel pending",
        status_code=409,
    )


def _already_ended(job_id: str, status: str) -> ServiceError:
    return ServiceError(
        f"job {job_id} already ended: {status}", error="job finished", status_code=409
    )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: one per CLI line and status change",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **errors(400, 401, 404, 503),
    },
)
async def job_events(
    job_id: str,
    jobs: JobsDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    if await jobs.store.status(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    after = 0
    if last_event_id is not None and last_event_id.strip():
        if not _COUNTER.match(last_event_id.strip()):
            raise ServiceError("Last-Event-ID must be an event id", error="invalid request")
        after = int(last_event_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        events = events_after(jobs.store, jobs.hub, job_id, after)
        async with contextlib.aclosing(events):
            async for seq, kind, data in events:
                yield ServerSentEvent(data=data, event=kind, id=str(seq))

    # At shutdown the stream goes on until the running job's end is recorded
    # (the grace, then the kill); it ends before uvicorn's own backstop.
    shutdown_grace_s = settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S - 2
    return EventSourceResponse(stream(), ping=SSE_PING_S, shutdown_grace_period=shutdown_grace_s)


def _request_hash(body: ExecuteRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
