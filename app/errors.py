"""One exception root for the service, and its mapping to JSON responses.

Every error response has the shape `{"error": <short phrase>, "detail": <string
or list>, "message": <one line>}`, sometimes with more keys (`supported` for an
unknown model). The handlers here are the only place that shape is produced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP meaning: status, a short phrase, a detail."""

    status_code: int = 400
    error: str = "bad request"

    def __init__(
        self,
        detail: str | list[Any],
        *,
        error: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail if isinstance(detail, str) else error or self.error)
        self.detail = detail
        if error is not None:
            self.error = error
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def message(self) -> str:
        """The detail as one readable line (for clients that show `message`)."""
        if isinstance(self.detail, str):
            return self.detail
        problems = []
        for item in self.detail[:5]:
            where = (
                ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                if isinstance(item, dict)
                else ""
            )
            what = item.get("msg", "invalid") if isinstance(item, dict) else str(item)
            problems.append(f"{where}: {what}" if where else str(what))
        more = len(self.detail) - len(problems)
        return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")

    def to_response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "message": self.message, **self.extra}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


class Unauthorized(ServiceError):
    status_code = 401
    error = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ExecutionFailed(ServiceError):
    """The agent could not give an answer: busy, timed out, or the CLI failed."""

    status_code = 503
    error = "execution failed"


_HTTP_PHRASES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    415: "unsupported media type",
    429: "too many requests",
}


def _validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors, minus what leaks internals or may not serialise (the
    `input` echoed back can hold NaN, which JSON cannot)."""
    cleaned = []
    for err in errors:
        item = {k: v for k, v in dict(err).items() if k not in ("url", "ctx", "input")}
        cleaned.append(item)
    result: list[dict[str, Any]] = jsonable_encoder(cleaned)
    return result


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return exc.to_response()


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = _HTTP_PHRASES.get(exc.status_code, "http error")
    detail = exc.detail if isinstance(exc.detail, str | list) else str(exc.detail)
    return ServiceError(
        detail, error=phrase, status_code=exc.status_code, headers=exc.headers
    ).to_response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return ServiceError(
            "the request body is not valid JSON", error="malformed JSON"
        ).to_response()
    return ServiceError(
        _validation_detail(errors), error="invalid request", status_code=422
    ).to_response()


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return ServiceError(
        "the service hit an unexpected error; it has been logged",
        error="internal error",
        status_code=500,
    ).to_response()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error, ours and the framework's, through the one JSON shape."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
