"""Parsing the CLI's stream-json output into an outcome (pure: no I/O).

The CLI prints one JSON object per line: `system` (init), `assistant`, `user`,
more `system` subtypes, and last a `result` event that carries the answer and
the accounting. The first `result` decides the outcome; without one, the exit
code and the raw output do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Raw (non-event) output kept for the no-`result` fallback; the rest is dropped.
RAW_TEXT_LIMIT_BYTES = 1 * 2**20
STDERR_TAIL_BYTES = 8 * 1024
# API statuses the CLI retries though retrying cannot heal them.
_HOPELESS_STATUSES = frozenset({401, 403})

Event = dict[str, Any]

# JSON can spell a lone UTF-16 surrogate ("\ud83d": half an emoji the CLI cut
# in two). Such a string has no UTF-8 form, so neither SQLite nor a JSON
# response could take it: it becomes U+FFFD when the line is read.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: bytes | bytearray) -> Any:
    """`json.loads`, with any lone surrogate in a string replaced by U+FFFD."""
    value = json.loads(text)
    return _without_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


class LineFramer:
    """Splits a byte stream into lines, dropping any line over `max_line_bytes`.

    Memory stays at most one line (up to the cap) whatever the stream holds.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.oversized = 0
        self._partial = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines (with their newline) that `chunk` finishes."""
        lines = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            else:
                self._partial += chunk[start : end + 1]
                lines.append(bytes(self._partial))
            self._partial.clear()
            start = end + 1
        if not self._skipping:
            self._partial += chunk[start:]
            if len(self._partial) > self.max_line_bytes:
                self._partial.clear()
                self._skipping = True
                self.oversized += 1
        return lines

    def close(self) -> bytes | None:
        """The last line, if the stream ended without a newline."""
        rest = None if self._skipping or not self._partial else bytes(self._partial)
        self._partial.clear()
        return rest


def parse_line(line: bytes) -> Event | None:
    """One stream-json event, or None for a line that is not one.

    Blank lines, text, broken JSON and JSON that is not an object with a string
    `type` are not events; the caller keeps them as raw output.
    """
    text = line.strip()
    if not text.startswith(b"{"):
        return None
    try:
        value = loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return value
    return None


def is_failure(result: Event) -> bool:
    """A result is a failure when it says so, whatever its `subtype` claims.

    The real CLI reports API errors as `subtype: "success"` with
    `is_error: true`, and limits as `subtype: "error_max_turns"` and the like.
    """
    subtype = result.get("subtype")
    return result.get("is_error") is True or (
        isinstance(subtype, str) and subtype.startswith("error")
    )


def result_message(result: Event) -> str:
    """The CLI's own words for a result: `result`, else `errors`, else `subtype`."""
    text = result.get("result")
    if isinstance(text, str) and text.strip():
        return text
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    subtype = result.get("subtype")
    if isinstance(subtype, str) and subtype:
        return f"the CLI ended with {subtype}"
    return ""


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace to single spaces and cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def tail_text(data: bytes, limit: int = STDERR_TAIL_BYTES) -> str:
    return data[-limit:].decode(errors="replace").strip()


@dataclass(slots=True)
class AgentResult:
    """How one run ended, with the CLI's own accounting when it gave any."""

    ok: bool
    text: str
    result: Event | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    timed_out: bool = False

    def _get(self, key: str) -> Any:
        return None if self.result is None else self.result.get(key)

    @property
    def session_id(self) -> str | None:
        value = self._get("session_id")
        return value if isinstance(value, str) else None

    @property
    def total_cost_usd(self) -> float | None:
        value = self._get("total_cost_usd")
        return float(value) if isinstance(value, int | float) else None

    @property
    def num_turns(self) -> int | None:
        value = self._get("num_turns")
        return value if isinstance(value, int) else None

    @property
    def duration_ms(self) -> int | None:
        value = self._get("duration_ms")
        return value if isinstance(value, int) else None

    @property
    def usage(self) -> dict[str, Any] | None:
        value = self._get("usage")
        return value if isinstance(value, dict) else None

    @property
    def structured_output(self) -> Any:
        """The JSON the CLI returned for --json-schema (None without one)."""
        return self._get("structured_output")

    @property
    def permission_denials(self) -> list[Any] | None:
        value = self._get("permission_denials")
        return value if isinstance(value, list) else None


def hopeless_retry(event: Event) -> str | None:
    """Why the run must end now, if `event` is the CLI retrying an API error that
    retrying cannot heal (a refused credential): its `system`/`api_retry` event
    with status 401 or 403. The CLI would otherwise retry for minutes."""
    if event.get("type") != "system" or event.get("subtype") != "api_retry":
        return None
    status = event.get("error_status")
    if status not in _HOPELESS_STATUSES:
        return None
    error = event.get("error")
    name = error if isinstance(error, str) and error else "error"
    return f"the Anthropic API refused the credential ({status} {one_line(name, 80)}); not retrying"


@dataclass(slots=True)
class StreamCollector:
    """Feeds on stdout lines; keeps the first `result` and a bounded raw copy."""

    result: Event | None = None
    fatal: str | None = None
    """Why the run ends without waiting for a result (see `hopeless_retry`,
    and `max_turns`)."""
    max_turns: int | None = None
    """Model turns allowed: the run ends when the agent starts one more (the
    pinned CLI's --help lists no flag for it, so the service counts)."""
    turns: int = 0
    lines: int = 0
    events: int = 0
    _raw: bytearray = field(default_factory=bytearray)
    _raw_truncated: bool = False
    _last_turn: str | None = None

    def feed(self, line: bytes) -> Event | None:
        """Take one line; return its event, if it is one. Read no more once `done`."""
        self.lines += 1
        event = parse_line(line)
        if event is not None:
            self.events += 1
            if event["type"] == "result" and self.result is None:
                self.result = event
            elif self.fatal is None:
                self.fatal = hopeless_retry(event) or self._count_turn(event)
        if not self._raw_truncated:
            if len(self._raw) + len(line) > RAW_TEXT_LIMIT_BYTES:
                self._raw_truncated = True
            else:
                self._raw += line
        return event

    def _count_turn(self, event: Event) -> str | None:
        """A new model turn starts with an assistant message of a new id."""
        if event["type"] != "assistant" or event.get("parent_tool_use_id"):
            return None  # a subagent's turns are its own
        message = event.get("message")
        turn = message.get("id") if isinstance(message, dict) else None
        if not isinstance(turn, str) or turn == self._last_turn:
            return None
        self._last_turn = turn
        self.turns += 1
        if self.max_turns is not None and self.turns > self.max_turns:
            return f"the run reached max_turns ({self.max_turns}); it was ended"
        return None

    @property
    def done(self) -> bool:
        return self.result is not None or self.fatal is not None

    def finish(
        self, *, exit_code: int | None, stderr: bytes, timed_out: bool = False
    ) -> AgentResult:
        """Decide the outcome from what was read, the exit code and stderr."""
        stderr_tail = tail_text(stderr)
        if timed_out:
            return AgentResult(
                ok=False,
                text="timed out",
                result=self.result,
                exit_code=exit_code,
                stderr_tail=stderr_tail,
                timed_out=True,
            )
        if self.fatal is not None and self.result is None:
            return AgentResult(False, self.fatal, None, exit_code, stderr_tail)
        result = self.result if self.result is not None else self._whole_document(exit_code)
        if result is not None:
            failed = is_failure(result)
            text = result_message(result) if failed else _answer(result)
            if failed and not text:
                text = stderr_tail or f"exit {exit_code}"
            return AgentResult(not failed, text, result, exit_code, stderr_tail)
        if exit_code != 0:
            return AgentResult(
                False, stderr_tail or f"exit {exit_code}", None, exit_code, stderr_tail
            )
        raw = self._raw.decode(errors="replace").strip()
        return AgentResult(True, raw, None, exit_code, stderr_tail)

    def _whole_document(self, exit_code: int | None) -> Event | None:
        # A CLI in json mode, or a wrapper, may print one (pretty) object.
        if exit_code != 0 or self._raw_truncated:
            return None
        try:
            value = loads(self._raw)
        except ValueError:
            return None
        if isinstance(value, dict) and (value.get("type") == "result" or "result" in value):
            return value
        return None


def _answer(result: Event) -> str:
    text = result.get("result")
    return text if isinstance(text, str) else ""
