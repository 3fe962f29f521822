"""Logging: every record passes `redact` before a handler writes it."""

from __future__ import annotations

import logging

from app.redact import redact


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
