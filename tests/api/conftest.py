"""The app in process, for the API tests: an httpx client over ASGI, and a chat body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import app


@pytest.fixture
async def client(settings_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def chat(content: object, **extra: object) -> dict[str, object]:
    """A chat completion body of one user message."""
    return {"model": "haiku", "messages": [{"role": "user", "content": content}], **extra}
