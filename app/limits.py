"""An ASGI middleware that refuses request bodies over MAX_REQUEST_BYTES with 413."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError


class BodySizeLimit:
    """Answer 413 before the app reads a body larger than the limit.

    A request that declares neither has no body and passes untouched. A
    declared `Content-Length` is checked at once (the server enforces it);
    a chunked body, or one that declares both, is read up to the limit and
    replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if b"transfer-encoding" not in headers and b"content-length" not in headers:
            await self.app(scope, receive, send)  # HTTP/1.1: no body (a GET, say)
            return
        limit = self.max_bytes()
        declared = _declared_length(headers)
        if declared is not None:
            if declared > limit:
                await self._refuse(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)
            return
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = ServiceError(
            f"the request body is larger than {limit} bytes (MAX_REQUEST_BYTES)",
            error="request too large",
            status_code=413,
        ).to_response()
        await response(scope, receive, send)


def _declared_length(headers: dict[bytes, bytes]) -> int | None:
    """Content-Length, when it alone frames the body (no Transfer-Encoding)."""
    if b"transfer-encoding" in headers:
        return None
    try:
        return int(headers[b"content-length"])
    except (KeyError, ValueError):
        return None
