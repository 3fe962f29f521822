"""The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import metrics
from app.agent.process import SpawnError
from app.agent.prompt import chat_prompt, message_images
from app.agent.run import AgentBusy, AgentRun, SyncFailed, log_end
from app.agent.stream import AgentResult, one_line
from app.api.controls import known_session, resolve_controls, unknown_session
from app.api.deps import RunAgentDep, SettingsDep, resolve_model
from app.api.routing import StrictJsonRoute
from app.errors import ExecutionFailed, ServiceError
from app.redact import redact
from app.schemas.errors import errors
from app.schemas.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from app.workspace.publish import GitReport

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJsonRoute)

# A prompt logged with LOG_PROMPTS=true: its beginning.
PROMPT_LOG_CHARS = 2000
# How often a running chat checks whether its client went away.
_DISCONNECT_POLL_S = 1.0
# Suggested wait before retrying when the agent is busy.
BUSY_RETRY_AFTER_S = 5


@router.get("/models", responses=errors(401))
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in settings.models])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=errors(400, 401, 413, 422, 499, 503),
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    settings: SettingsDep,
    run_agent: RunAgentDep,
) -> JSONResponse:
    if body.stream:
        raise ServiceError(
            "streaming not supported: send stream=false, or use /execute and its events",
            error="streaming not supported",
        )
    if body.n is not None and body.n != 1:
        raise ServiceError("only n=1 is supported", error="invalid request")
    model = resolve_model(body.model, settings)
    session = _session_to_resume(body, request)
    # A resumed session has the conversation: send only what follows its last answer.
    messages = _after_last_answer(body.messages) if session else body.messages
    prompt, request_text = chat_prompt(messages)
    images = [block for message in messages for block in message_images(message)]
    schema = body.answer_schema()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    run = AgentRun(
        prompt=prompt,
        model=model,
        max_budget_usd=settings.chat_max_budget_usd,
        timeout_s=settings.chat_timeout_seconds,
        agent=settings.chat_agent,
        resume_session_id=session,
        run_id=completion_id,
        label=f"chat {completion_id}",
        summary=request_text,
        content=({"type": "text", "text": prompt}, *images) if images else None,
        **resolve_controls(body, settings, json_schema=schema),
    )
    report = GitReport()
    chat = _Chat(f"chat {completion_id}", model)
    if settings.log_prompts:
        logger.info("%s prompt: %s", chat.name, prompt[:PROMPT_LOG_CHARS])
    try:
        result = await _until_disconnected(request, run_agent(run, report=report), chat)
    except AgentBusy as exc:
        logger.info("%s refused: %s", chat.name, exc)
        metrics.count_run("chat", "busy")
        raise ExecutionFailed(
            str(exc) or "agent is busy", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}
        ) from None
    except (SpawnError, SyncFailed) as exc:
        chat.ended("failed", redact(str(exc)))
        raise ExecutionFailed(one_line(str(exc))) from None
    if result.timed_out:
        error = (
            f"the agent run timed out after {settings.chat_timeout_seconds:g}s "
            "(CHAT_TIMEOUT_SECONDS)"
        )
        chat.ended("timeout", error, result)
        raise ExecutionFailed(error)
    if not result.ok:
        error = one_line(redact(result.text)) or "the agent run failed"
        chat.ended("failed", error, result)
        if session and error.startswith("No conversation found"):
            raise unknown_session(session)
        raise ExecutionFailed(error)
    chat.ended("completed", None, result)
    answer = result.text
    if schema is not None and result.structured_output is not None:
        answer = json.dumps(result.structured_output, separators=(",", ":"), ensure_ascii=False)
    completion = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=redact(answer)))],
        usage=openai_usage(result.usage),
    )
    headers = _accounting_headers(result)
    if report.pushed and report.commits:
        headers["X-Claude-Git-Commit"] = report.commits[-1]
    return JSONResponse(completion.model_dump(), headers=headers)


def openai_usage(usage: dict[str, Any] | None) -> Usage:
    """Map the CLI's token counts to OpenAI's: cache reads and writes are prompt tokens."""
    usage = usage or {}

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + count("cache_creation_input_tokens") + cached
    completion = count("output_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _accounting_headers(result: AgentResult) -> dict[str, str]:
    headers = {}
    if result.session_id:
        headers["X-Claude-Session-Id"] = result.session_id
    if result.total_cost_usd is not None:
        headers["X-Claude-Cost-USD"] = str(result.total_cost_usd)
    if result.num_turns is not None:
        headers["X-Claude-Num-Turns"] = str(result.num_turns)
    return headers


SESSION_HEADER = "x-claude-session-id"


def _session_to_resume(body: ChatCompletionRequest, request: Request) -> str | None:
    """The session the request continues (`session_id` or X-Claude-Session-Id),
    checked to exist; 400 `unknown session` otherwise."""
    header = request.headers.get(SESSION_HEADER)
    given = body.session_id or header
    if given is None:
        return None
    if body.session_id and header and body.session_id != header:
        raise ServiceError(
            "session_id and X-Claude-Session-Id name different sessions", error="invalid request"
        )
    try:
        session = str(uuid.UUID(given.strip()))
    except ValueError:
        raise ServiceError("a session id is a UUID", error="invalid request") from None
    return known_session(session)


def _after_last_answer(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The messages after the last assistant message: what the session lacks."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    rest = messages[last + 1 :]
    if not any(m.role == "user" for m in rest):
        raise ServiceError(
            "no user message after the last assistant message to send the session",
            error="invalid request",
        )
    return rest


@dataclass(slots=True)
class _Chat:
    """One chat completion's run, to log and count its end once."""

    name: str
    model: str
    started: float = field(default_factory=time.monotonic)

    def ended(self, status: str, error: str | None, result: AgentResult | None = None) -> None:
        cost = result.total_cost_usd if result is not None else None
        log_end(self.name, status, error, cost, self.model)
        metrics.count_run(
            "chat",
            status,
            duration_s=time.monotonic() - self.started,
            cost_usd=cost,
            usage=result.usage if result is not None else None,
        )


async def _until_disconnected(request: Request, work: Any, chat: _Chat) -> AgentResult:
    """Await the run; cancel it (killing the agent) if the client hangs up."""
    task: asyncio.Task[AgentResult] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done and task.cancelled():  # by the shutdown, not by this request
                error = "the service shut down during the run; it was cancelled"
                chat.ended("cancelled", error)
                raise ExecutionFailed(error, headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                error = "the client closed the connection; the run was cancelled"
                chat.ended("cancelled", error)
                raise ServiceError(error, error="client closed request", status_code=499)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
