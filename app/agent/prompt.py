"""Turning an OpenAI message list into one prompt for `claude -p` (pure)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from app.errors import ServiceError
from app.schemas.openai import ChatMessage
from app.text import text_problem

_INSTRUCTION_ROLES = frozenset({"system", "developer"})
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGE_BYTES = 5 * 2**20
_SECTION_HELP = {
    "instructions": "the caller's instructions, to follow throughout",
    "transcript": "the conversation so far, oldest message first, for context",
    "request": "the message to answer now",
}


def message_text(message: ChatMessage) -> str:
    """The text of a message: the string, or its text parts joined (its image
    parts are `message_images`')."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind == "image_url":
            continue
        text = part.get("text")
        if kind != "text" or not isinstance(text, str):
            raise ServiceError(
                f"content part of type {kind!r} is not supported; only text and image_url are",
                error="unsupported content",
            )
        texts.append(text)
    return "\n".join(texts)


def message_images(message: ChatMessage) -> list[dict[str, Any]]:
    """The message's `image_url` parts as the CLI's image blocks.

    Only `data:` URLs (png, jpeg, gif, webp; at most 5 MiB decoded): the
    service fetches nothing on a caller's behalf.
    """
    if not isinstance(message.content, list):
        return []
    blocks = []
    for part in message.content:
        if part.get("type") != "image_url":
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        blocks.append(image_block(url))
    return blocks


def image_block(url: object) -> dict[str, Any]:
    """A `data:<type>;base64,<data>` URL as an image block; 400 for anything else."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ServiceError(
            "image_url must be a data: URL (data:image/png;base64,...); the service "
            "does not fetch remote images",
            error="unsupported content",
        )
    header, comma, data = url.partition(",")
    media_type = header.removeprefix("data:").removesuffix(";base64")
    if not comma or not header.endswith(";base64") or media_type not in IMAGE_TYPES:
        raise ServiceError(
            f"an image must be base64 data of one of {', '.join(sorted(IMAGE_TYPES))}",
            error="unsupported content",
        )
    try:
        size = len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise ServiceError("an image's data is not valid base64", error="invalid request") from None
    if size > MAX_IMAGE_BYTES:
        raise ServiceError(
            f"an image is at most {MAX_IMAGE_BYTES} bytes decoded", error="invalid request"
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


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
        if not message_images(messages[last_user]):
            raise ServiceError("the last user message is empty", error="invalid request")
        request = texts[last_user] = "(see the image)"
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
