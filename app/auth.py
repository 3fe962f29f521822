"""Bearer-token authentication, checked before anything reads the request."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized


def check_token(authorization: str | None, expected: str | None) -> None:
    """Accept only `Bearer <expected>`, compared in constant time.

    Fails closed: with no token configured, every request is refused.
    """
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("missing bearer token")
    if expected is None or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("invalid bearer token")


class BearerAuth:
    """ASGI middleware: 401 for every HTTP request without the token, except
    `open_paths`. It runs before the body is read, so an unauthenticated
    request learns nothing from validation errors."""

    def __init__(
        self, app: ASGIApp, token: Callable[[], str | None], open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            header = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
            )
            try:
                check_token(header, self.token())
            except Unauthorized as exc:
                await exc.to_response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
