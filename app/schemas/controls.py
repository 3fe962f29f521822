"""What a request may say about how the agent runs: its tools, its system prompt,
its turns, the shape of its answer. Checked here; narrowed against the
operator's settings by `app.api.controls`."""

from __future__ import annotations

import json
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, Field, StrictStr, field_validator

from app.settings import TOOL_PATTERN
from app.text import text_problem

MAX_TOOLS = 64
MAX_SYSTEM_PROMPT_BYTES = 64 * 1024
MAX_SCHEMA_BYTES = 64 * 1024


def schema_problem(schema: Any) -> str | None:
    """Why `schema` cannot be a JSON Schema for the answer, or None."""
    if not isinstance(schema, dict):
        return "must be a JSON Schema object"
    try:
        size = len(json.dumps(schema, allow_nan=False, ensure_ascii=False).encode())
    except (ValueError, UnicodeEncodeError):
        return "must be JSON (no NaN, valid Unicode)"
    if size > MAX_SCHEMA_BYTES:
        return f"must be at most {MAX_SCHEMA_BYTES} bytes as JSON"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message}"
    return None


class AgentControls(BaseModel):
    """The run's limits a caller may set (each may only narrow the operator's)."""

    allowed_tools: list[StrictStr] | None = Field(default=None, max_length=MAX_TOOLS)
    """The only tools the agent may use: names or the CLI's patterns (`Bash(git:*)`)."""
    disallowed_tools: list[StrictStr] | None = Field(default=None, max_length=MAX_TOOLS)
    """Tools the agent may not use, besides DISALLOWED_TOOLS."""
    append_system_prompt: StrictStr | None = None
    """Text added to the system prompt, after APPEND_SYSTEM_PROMPT."""
    max_turns: int | None = Field(default=None, ge=1, strict=True)
    """Model turns at most (1 to JOB_MAX_TURNS)."""

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _tool_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not TOOL_PATTERN.match(name):
                raise ValueError(
                    f"{name[:80]!r} is not a tool name or pattern (like Bash or Bash(git:*))"
                )
        return value

    @field_validator("append_system_prompt")
    @classmethod
    def _prompt_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = text_problem(value)
        if problem:
            raise ValueError(f"append_system_prompt {problem}")
        if len(value.encode()) > MAX_SYSTEM_PROMPT_BYTES:
            raise ValueError(
                f"append_system_prompt must be at most {MAX_SYSTEM_PROMPT_BYTES} bytes"
            )
        return value
