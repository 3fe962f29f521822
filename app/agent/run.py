"""What one agent run needs, and how the caller learns it cannot start."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from app.agent.stream import AgentResult, one_line

if TYPE_CHECKING:
    from app.workspace.publish import GitReport

logger = logging.getLogger("app.runs")


@dataclass(frozen=True, slots=True)
class AgentRun:
    """One run of the CLI: the prompt, the limits it runs under, and its name.

    `run_id` names the run (a job id, a chat completion id) and `label` says
    what it is in a commit message ("job <id>"); `summary` is the text whose
    first line becomes the commit subject (the prompt when None).
    """

    prompt: str
    model: str
    max_budget_usd: float
    timeout_s: float
    agent: str | None = None
    resume_session_id: str | None = None
    run_id: str = "run"
    label: str = "run"
    summary: str | None = None
    json_schema: str | None = None
    """A JSON Schema (as JSON text) the answer must follow (`--json-schema`)."""
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    append_system_prompt: str | None = None
    max_turns: int | None = None
    """Model turns at most; the run ends when the agent starts one more."""
    content: tuple[dict[str, Any], ...] | None = None
    """The user message as content blocks (text and images): sent as stream-json."""


class AgentBusy(Exception):
    """Another run holds the workspace."""


class SyncFailed(Exception):
    """The pre-run git sync failed and GIT_SYNC_REQUIRED says not to run."""


class RunAgent(Protocol):
    """Runs the agent once; `report` (if given) is filled in with what git did."""

    def __call__(
        self, run: AgentRun, *, report: GitReport | None = None
    ) -> Awaitable[AgentResult]: ...


def log_end(
    run: str, status: str, error: str | None, cost_usd: float | None, model: str | None
) -> None:
    """One log line for every run's end: its outcome, and for a failure the
    reason (one line; the caller has redacted it). The line carries `status`,
    `model` and `cost` (USD, when the CLI reported one) as fields."""
    fields = {"status": status, "model": model, "cost": cost_usd}
    if status == "completed":
        logger.info("%s completed (cost $%s)", run, cost_usd, extra=fields)
    else:
        reason = one_line(error or "no reason given")
        logger.warning("%s ended %s: %s", run, status, reason, extra=fields)
