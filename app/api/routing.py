"""The route class of every router: request bodies are UTF-8 JSON, strictly."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.errors import ServiceError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class StrictJsonRoute(APIRoute):
    """Parses a JSON body as UTF-8 text before FastAPI sees it.

    `json.loads` on bytes guesses UTF-16 and UTF-32 from the NUL bytes, so
    without this a UTF-16 body is accepted, though the API says UTF-8.
    """

    def get_route_handler(self) -> Handler:
        handler: Handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            if request.method not in _WITH_BODY:
                return await handler(request)
            body = await request.body()
            if body and _is_json(request.headers.get("content-type")):
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    raise ServiceError("the request body is not UTF-8") from None
                try:
                    request._json = json.loads(text)  # what request.json() returns, parsed once
                except ValueError:
                    raise ServiceError(
                        "the request body is not valid JSON", error="malformed JSON"
                    ) from None
            return await handler(request)

        return strict


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI reads the body as JSON: no content type, or a JSON one."""
    if not content_type:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )
