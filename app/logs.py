"""Logging: one formatter for the service's lines and the access log, JSON lines
or text, every record redacted, the request and the job it belongs to attached.

`configure` is called by `serve` before uvicorn starts, and by the lifespan
under a bare `uvicorn app.main:app` (where it takes over uvicorn's handlers).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from app.redact import redact

LogFormat = Literal["auto", "json", "text"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# Fields a record may carry (`logger.info(..., extra={...})`), written when set.
FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "token",
    "model",
    "cost",
    "client",
)
_configured = False


class RedactingFilter(logging.Filter):
    """Formats a record's message and hides credentials in it (and in its
    exception text), so that no handler can write a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class ContextFilter(logging.Filter):
    """Attaches the request id and the job id of the code that logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, event, and the
    context and fields that are set."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in ("request_id", "job_id", *FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_text:
            line["exc"] = record.exc_text
        elif record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <event>  key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{name}={value}"
            for name in ("request_id", "job_id", *FIELDS)
            if (value := getattr(record, name, None)) is not None
        )
        text = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text += f"  {extras}"
        if record.exc_text:
            text += "\n" + record.exc_text
        elif record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        return text


def configure(log_format: LogFormat, level: str, *, force: bool = False) -> None:
    """Send the service's, uvicorn's and the libraries' records through one
    redacting handler on stderr, as JSON lines or text (`auto`: text on a
    terminal). A second call does nothing unless `force`."""
    global _configured
    if _configured and not force:
        return
    chosen = log_format
    if chosen == "auto":
        chosen = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "app"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(level)
    # The service writes its own access line (app.access, with the route and
    # the duration); uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # psycopg_pool logs every failed reconnect at length; the store says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    _configured = True
