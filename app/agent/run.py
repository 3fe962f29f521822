"""What one agent run needs, and how the caller learns it cannot start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.agent.stream import AgentResult


@dataclass(frozen=True, slots=True)
class AgentRun:
    """One run of the CLI: the prompt and the limits it runs under."""

    prompt: str
    model: str
    max_budget_usd: float
    timeout_s: float
    agent: str | None = None
    resume_session_id: str | None = None


class AgentBusy(Exception):
    """Another run holds the workspace."""


RunAgent = Callable[[AgentRun], Awaitable[AgentResult]]
