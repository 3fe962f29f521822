"""Turning an OpenAI message list into one prompt for `claude -p` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.errors import ServiceError
from app.schemas.openai import ChatMessage

_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_SECTION_HELP = {
    "instructions": "the caller's instructions, to follow throughout",
    "transcript": "the conversation so far, oldest message first, for context",
    "request": "the message to answer now",
}


def text_problem(text: str) -> str | None:
    """Why `text` cannot reach the CLI, or None: no NUL (argv and C strings end
    there) and no lone surrogate (it has no UTF-8 form)."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds a lone surrogate)"
    return None


def message_text(message: ChatMessage) -> str:
    """The text of a message: the string, or its text parts joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        text = part.get("text")
        if kind != "text" or not isinstance(text, str):
            raise ServiceError(
                f"content part of type {kind!r} is not supported; only text parts are",
                error="unsupported content",
            )
        texts.append(text)
    return "\n".join(texts)


def chat_prompt(messages: Sequence[ChatMessage]) -> tuple[str, str]:
    """Build the prompt; return it with the request text (the last user message).

    System and developer messages become the instructions; the last user
    message is the request; every other message, in order, is the transcript.
    A lone user message is passed as it is.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        raise ServiceError(
            "messages must contain at least one user message", error="invalid request"
        )
    texts = [message_text(m) for m in messages]
    request = texts[last_user]
    if not request.strip():
        raise ServiceError("the last user message is empty", error="invalid request")
    instructions = [t for m, t in zip(messages, texts, strict=True) if m.role in _INSTRUCTION_ROLES]
    transcript = [
        _turn(m, t)
        for i, (m, t) in enumerate(zip(messages, texts, strict=True))
        if i != last_user and m.role not in _INSTRUCTION_ROLES
    ]
    for message, text in zip(messages, texts, strict=True):
        for field, value in (("content", text), ("name", message.name or "")):
            problem = text_problem(value)
            if problem:
                raise ServiceError(f"message {field} {problem}", error="invalid request")
    if not instructions and not transcript:
        return request, request
    sections: dict[str, str] = {}
    if instructions:
        sections["instructions"] = "\n\n".join(t for t in instructions if t)
    if transcript:
        sections["transcript"] = "\n\n".join(transcript)
    sections["request"] = request
    guide = "\n".join(f"- <{name}>: {_SECTION_HELP[name]}" for name in sections)
    body = "\n\n".join(f"<{name}>\n{text}\n</{name}>" for name, text in sections.items())
    prompt = (
        "This request comes through a chat API. Its parts are in tagged sections:\n"
        f"{guide}\n\n{body}"
    )
    return prompt, request


def _turn(message: ChatMessage, text: str) -> str:
    who: Any = message.role if not message.name else f"{message.role} ({message.name})"
    return f"[{who}]\n{text}" if text else f"[{who}]"
