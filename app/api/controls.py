"""A request's controls, narrowed against the operator's settings: a request can
take tools away, add to the system prompt and lower the turns, never the
reverse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.agent import sessions
from app.agent.command import current_child_environment
from app.errors import ServiceError
from app.schemas.controls import AgentControls
from app.settings import Settings


def resolve_controls(
    body: AgentControls, settings: Settings, *, json_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The AgentRun fields of `body` under the settings; raises 400 when the
    request would widen what the operator allows."""
    allowed = tuple(settings.allowed_tools)
    if body.allowed_tools is not None:
        wider = [t for t in body.allowed_tools if allowed and t not in allowed]
        if wider:
            raise ServiceError(
                f"allowed_tools may only narrow ALLOWED_TOOLS ({', '.join(allowed)}); "
                f"not allowed: {', '.join(wider)}",
                error="invalid request",
            )
        allowed = tuple(dict.fromkeys(body.allowed_tools))
        if not allowed:
            raise ServiceError(
                "allowed_tools must name at least one tool (use disallowed_tools to take "
                "tools away)",
                error="invalid request",
            )
    disallowed = tuple(dict.fromkeys((*settings.disallowed_tools, *(body.disallowed_tools or ()))))
    max_turns = body.max_turns or settings.job_max_turns
    if max_turns > settings.job_max_turns:
        raise ServiceError(
            f"max_turns must be at most {settings.job_max_turns} (JOB_MAX_TURNS)",
            error="invalid request",
        )
    prompts = [p for p in (settings.append_system_prompt, body.append_system_prompt) if p]
    return {
        "allowed_tools": allowed,
        "disallowed_tools": disallowed,
        "append_system_prompt": "\n\n".join(prompts) or None,
        "max_turns": max_turns,
        "json_schema": None if json_schema is None else json.dumps(json_schema),
    }


def known_session(session: str) -> str:
    """`session`, if the CLI has a transcript of it here; 400 `unknown session`
    otherwise (a resume would fail, or worse, start afresh)."""
    home = current_child_environment().get("HOME")
    if home is None or sessions.find(session, home=Path(home)) is None:
        raise unknown_session(session)
    return session


def unknown_session(session: str) -> ServiceError:
    return ServiceError(
        f"no session {session} to resume (it never existed here, or it was removed); "
        "start a new conversation without a session id",
        error="unknown session",
    )
