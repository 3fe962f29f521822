"""Request and response models of the OpenAI-compatible surface."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ServiceError
from app.schemas.controls import AgentControls, schema_problem


class ChatMessage(BaseModel):
    """One message; `content` is a string or a list of content parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(AgentControls):
    """The fields we act on; every other OpenAI field is accepted and ignored.

    Besides OpenAI's: `session_id` (resume that session; or the
    X-Claude-Session-Id header) and the agent controls (allowed_tools,
    disallowed_tools, append_system_prompt, max_turns), which the openai SDK
    sends with `extra_body`.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    n: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    session_id: str | None = None

    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema `response_format` asks for (None: free text); raises 400."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "object"}
        if kind != "json_schema":
            raise ServiceError(
                f"response_format type {kind!r} is not supported: text, json_object or json_schema",
                error="invalid request",
            )
        spec = (self.response_format or {}).get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        problem = schema_problem(schema)
        if problem is not None:
            raise ServiceError(
                f"response_format.json_schema.schema {problem}", error="invalid request"
            )
        assert isinstance(schema, dict)
        return schema


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "anthropic"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
