"""Request and response models of the job API."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, WithJsonSchema, field_validator

from app.jobs.models import Job, JobStatus
from app.schemas.controls import AgentControls
from app.text import text_problem

MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/-]{0,127}$")


class ExecuteRequest(AgentControls):
    """`POST /execute`: a prompt for the agent and the limits of its run."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    agent: StrictStr | None = None
    model: StrictStr | None = None
    max_budget_usd: Annotated[float, Field(strict=True, gt=0)] | None = None
    timeout_seconds: Annotated[float, Field(strict=True, ge=1)] | None = None
    metadata: dict[str, Any] | None = None
    session_id: StrictStr | None = None
    # Any here, checked by the route: a schema the CLI cannot use is a 400, as
    # in chat's response_format, not the 422 of a body that does not parse.
    json_schema: Annotated[
        Any, WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]})
    ] = None
    """A JSON Schema the answer must follow; the job's `structured_output` holds it."""
    webhook_url: StrictStr | None = Field(default=None, max_length=2048)
    """Called (POST, the job's JSON) when the job ends; its host must be allowed."""

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        problem = text_problem(value)
        if problem:
            raise ValueError(f"prompt {problem}")
        return value

    @field_validator("agent")
    @classmethod
    def _agent_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("agent must be a name: letters, digits and _.:@/- only")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if _depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata must nest at most {MAX_METADATA_DEPTH} levels deep")
        try:
            size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode())
        except UnicodeEncodeError:
            raise ValueError("metadata must be valid Unicode (it holds a lone surrogate)") from None
        except ValueError:
            raise ValueError("metadata must not hold NaN or Infinity") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @field_validator("session_id")
    @classmethod
    def _session_is_uuid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("session_id must be a UUID") from None


def _depth(value: Any) -> int:
    """How deep JSON containers nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    queue_position: int | None


class WebhookView(BaseModel):
    """A job's webhook delivery."""

    url: str
    attempts: int
    last_status: int | None
    last_error: str | None
    delivered_at: str | None
    next_attempt_at: str | None
    failed: bool


class JobView(BaseModel):
    """A job as `GET /jobs/{job_id}` shows it; null where not known yet."""

    job_id: str
    status: JobStatus
    prompt: str
    agent: str | None
    model: str
    max_budget_usd: float
    timeout_seconds: float
    metadata: dict[str, Any] | None
    queue_position: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: str | None
    is_error: bool | None
    error: str | None
    session_id: str | None
    total_cost_usd: float | None
    num_turns: int | None
    duration_ms: int | None
    usage: dict[str, Any] | None
    permission_denials: list[Any] | None
    exit_code: int | None
    stderr_tail: str | None
    git: dict[str, Any] | None
    slot: int | None
    instance: str | None
    submitted_by: str | None
    request_id: str | None
    allowed_tools: list[str] | None
    disallowed_tools: list[str] | None
    append_system_prompt: str | None
    max_turns: int | None
    json_schema: dict[str, Any] | None
    structured_output: Any
    webhook_url: str | None
    webhook: WebhookView | None
    events_truncated: bool

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls.model_validate({"job_id": job.id, **_fields(job), **_options(job)})


_OPTIONS = ("allowed_tools", "disallowed_tools", "append_system_prompt", "max_turns", "json_schema")


def _fields(job: Job) -> dict[str, Any]:
    return {
        name: getattr(job, name)
        for name in JobView.model_fields
        if name != "job_id" and name not in _OPTIONS
    }


def _options(job: Job) -> dict[str, Any]:
    """The run's controls, as the request named them (allowed_tools ...)."""
    options = job.options or {}
    shown: dict[str, Any] = {name: options.get(name) for name in _OPTIONS}
    if isinstance(shown["json_schema"], str):
        shown["json_schema"] = json.loads(shown["json_schema"])
    for name in ("allowed_tools", "disallowed_tools"):
        shown[name] = list(shown[name]) if shown[name] else None
    return shown


class JobList(BaseModel):
    jobs: list[JobView]
    next: str | None
