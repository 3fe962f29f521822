"""The one error shape, and the error statuses each route documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    """Every error response: a short phrase, the detail, and the detail as one line."""

    model_config = ConfigDict(extra="allow")

    error: str
    """A short phrase that names the kind of error (`unsupported model`, ...)."""
    detail: str | list[dict[str, Any]]
    """Why: a sentence, or for 422 the list of problems with the request."""
    message: str
    """`detail` as one readable line."""
    supported: list[str] | None = None
    """For `unsupported model`: the model aliases that are."""


_MEANINGS = {
    400: "The request cannot be run as sent (see `error`)",
    401: "A missing or wrong bearer token",
    404: "No such job",
    409: "The job already ended, or its cancel has not taken effect yet",
    413: "The body is over MAX_REQUEST_BYTES",
    422: "Wrong types, missing fields or values out of range; `detail` lists them",
    429: "The queue is full (MAX_QUEUE_DEPTH); see Retry-After",
    499: "The client closed the connection; the run was cancelled",
    503: "The agent is busy or failed, or the job store is unavailable; see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each error status with the error shape."""
    return {code: {"model": ErrorBody, "description": _MEANINGS[code]} for code in codes}
