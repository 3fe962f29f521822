"""The HTTP protocol `serve` runs: uvicorn's httptools protocol with bounds on the
request head and deadlines on slow requests, applied before any of the app runs.

Stock uvicorn reads a request head of any size (httptools copies the value on
every read: one 64 MB header stalled the event loop for 5 s) and never times
out a client that drips its head or its body. Use:
`uvicorn.Config(app, http=guarded_httptools(HttpLimits(...)))`.

- A request head (request line + headers) over `max_head_bytes`, or with more than
  `max_headers` header fields, gets 431 at once; it is never buffered beyond the limit.
- A head not complete `head_timeout_s` after the connection opened (or after its
  first byte, on a kept-alive connection) gets 408.
- A body not complete `body_timeout_s` after its head: the connection is closed (the
  app sees `http.disconnect`). The clock does not run out while the app holds the body
  back (uvicorn paused reading, or the client waits for `100 Continue`).
- Once a request has been received in full, nothing here limits its response.

After a 431/408 the connection is half-closed and what the client still sends is
discarded (not parsed, not kept) for at most `linger_s`, so that a client still
sending its request reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class HttpLimits:
    """The bounds (MAX_HEADER_BYTES, MAX_HEADERS, HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS)."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    linger_s: float = 2.0


class _Refused(Exception):
    """Raised from a parser callback to stop httptools once the answer is written."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded (see the module's docstring)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    # "idle": between requests; "head"/"body": that part of a request is being received.
    _phase: Literal["idle", "head", "body"] = "idle"
    _head_bytes = 0  # bytes received since the last request ended
    _header_count = 0
    _heads_done = 0
    _timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.head_timeout_s, self._head_timed_out)  # the first head's clock

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: discard
        self._feed(data)
        # Timers only for a request that spans reads; one read is the common case.
        if self._timer is None and not self._refused and not self.transport.is_closing():
            if self._phase == "head":
                self._arm(self.limits.head_timeout_s, self._head_timed_out)
            elif self._phase == "body":
                self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def _feed(self, data: bytes) -> None:
        room = self.limits.max_head_bytes - self._head_bytes
        if self._phase == "body" or len(data) <= room:
            if self._phase != "body":
                self._head_bytes += len(data)
            super().data_received(data)
            return
        # The head passes the limit unless it ends within `room`: feed only that much.
        self._head_bytes = self.limits.max_head_bytes
        heads_done = self._heads_done
        super().data_received(data[:room])
        if (
            self._refused
            or self.transport.is_closing()
            or self.transport.get_protocol() is not self
        ):
            return  # refused, failed, or upgraded to WebSocket
        if self._heads_done == heads_done:  # the same head, still not complete
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        # The rest: a body, maybe further pipelined requests. A head that began within
        # the slice is counted from here on (so by at most one read too little).
        self._feed(data[room:])

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # after _Refused, the answer is already written
            super().send_400_response(msg)

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        self._phase = "head"
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            raise _Refused  # httptools stops parsing; uvicorn then calls send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = "idle" if self.parser.should_upgrade() else "body"
        self._heads_done += 1
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._head_bytes = 0
        self._disarm()
        super().on_message_complete()

    # deadlines

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._refuse(HTTPStatus.REQUEST_TIMEOUT)

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        app_holds_body = self.flow.read_paused or (  # uvicorn paused reading, or the client
            self.cycle is not None and self.cycle.waiting_for_100_continue  # waits for
        )  # "100 Continue", which uvicorn sends when the app first reads
        if app_holds_body:
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        logger.warning(
            "%s: request body not received within %gs; closing",
            self._peer(),
            self.limits.body_timeout_s,
        )
        self.transport.close()

    def _refuse(self, status: HTTPStatus) -> None:
        """Answer `status`, half-close, and discard what still comes for `linger_s`."""
        self._refused = True
        logger.warning("%s: %d %s", self._peer(), status.value, status.phrase)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head: do not write into the response under way
            return
        body = _error_body(status, self.limits)
        head = [b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # keep draining, so the client is not stuck on a full window
        self._arm(self.limits.linger_s, self.transport.close)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


def guarded_httptools(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to pass as `uvicorn.Config(http=...)`, with these limits."""

    class Configured(GuardedHttpToolsProtocol):
        pass

    Configured.limits = limits
    return Configured


def _error_body(status: HTTPStatus, limits: HttpLimits) -> bytes:
    """The service's error shape, for an answer written before the app runs."""
    if status is HTTPStatus.REQUEST_TIMEOUT:
        detail = (
            f"the request head did not arrive within {limits.head_timeout_s:g}s "
            "(HEADER_TIMEOUT_SECONDS)"
        )
    else:
        detail = (
            f"the request head is over {limits.max_head_bytes} bytes (MAX_HEADER_BYTES) or "
            f"holds more than {limits.max_headers} header fields (MAX_HEADERS)"
        )
    error = status.phrase.lower()
    return json.dumps({"error": error, "detail": detail, "message": detail}).encode()
