"""The body-size limit as ASGI middleware, with framings a server may pass on."""

from __future__ import annotations

from typing import Any

from app.limits import BodySizeLimit


async def call(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Send a request through the limit; return (status, body bytes the app saw)."""
    seen = 0
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal seen
        while True:
            message = await receive()
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    await BodySizeLimit(app, max_bytes=lambda: 1000)(scope, receive, send)
    return sent[0]["status"], seen


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    assert await call([(b"content-length", b"5000")], [b"x" * 5000]) == (413, 0)


async def test_a_chunked_body_is_counted() -> None:
    chunked = [(b"transfer-encoding", b"chunked")]
    assert await call(chunked, [b"x" * 600, b"x" * 600]) == (413, 0)
    assert await call(chunked, [b"x" * 400, b"x" * 400]) == (200, 800)


async def test_a_small_declared_length_with_chunked_framing_is_not_trusted() -> None:
    both = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    assert await call(both, [b"x" * 3000, b"x" * 3000]) == (413, 0)
