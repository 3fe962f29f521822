"""A scenario-driven stand-in for the Anthropic Messages API, for tests with the real CLI.

Point the CLI at it with ``ANTHROPIC_BASE_URL=api.url`` (plus any ``ANTHROPIC_API_KEY``)::

    with FakeAnthropic([{"text": "Hello"}]) as api:
        run_claude(env={"ANTHROPIC_BASE_URL": api.url, ...})
        assert api.requests[0]["path"] == "/v1/messages"

Each ``POST /v1/messages`` consumes the next step; once the list is exhausted the last step
repeats. A step is one of:

- ``{"text": "Hello", "usage": {...}}``: a text answer, ``stop_reason`` ``end_turn``.
- ``{"tool_use": {"name": "Write", "input": {...}}, "text": "optional", "usage": {...}}``:
  optional text, then a ``tool_use`` block (a list of such dicts gives several blocks),
  ``stop_reason`` ``tool_use``. The input is streamed as ``input_json_delta`` chunks.
- ``{"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded",
  "headers": {...optional extra response headers, e.g. "x-should-retry": "false"}}}``:
  an HTTP error with the API's JSON error body.
- ``{"hang": 600}``: read the request, never answer; the handler ends when the seconds
  pass (closing the connection without a response) or when the server stops.

``usage`` keys (all optional, defaults in ``DEFAULT_USAGE``): ``input_tokens``,
``output_tokens``, ``cache_creation_input_tokens``, ``cache_read_input_tokens``.

Requests with ``"stream": true`` get SSE in the real API's event order (``message_start``,
per block ``content_block_start`` / ``content_block_delta``... / ``content_block_stop``,
``message_delta``, ``message_stop``, with one ``ping`` after the first block start); others
get the same message as one JSON object. ``POST /v1/messages/count_tokens`` answers a rough
count; any other path or method gets a 404 JSON error. Every request is recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import urlsplit

__all__ = ["DEFAULT_USAGE", "FakeAnthropic", "RecordedRequest"]

DEFAULT_USAGE: dict[str, int] = {
    "input_tokens": 10,
    "output_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
_STEP_KINDS = ("text", "tool_use", "error", "hang")
_MESSAGES_PATH = "/v1/messages"


class RecordedRequest(TypedDict):
    """One request as the stand-in saw it."""

    method: str
    path: str  # without the query string, e.g. "/v1/messages"
    query: str  # raw query string, e.g. "beta=true"
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when absent or not JSON
    stream: bool  # body["stream"] is true
    status: int | None  # status answered; None while pending and for "hang" steps
    time: float  # seconds since the server started, at arrival
    step: int | None  # index into `steps` used, None for requests that are not messages


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _chunks(text: str) -> list[str]:
    """Split `text` into at most 8 pieces of at least 16 characters (one piece if short)."""
    size = max(16, math.ceil(len(text) / 8))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _check_step(step: Mapping[str, Any]) -> None:
    kinds = [k for k in _STEP_KINDS if k in step]
    if not kinds or (len(kinds) > 1 and sorted(kinds) != ["text", "tool_use"]):
        raise ValueError(f"a step needs one of {_STEP_KINDS} (text may go with tool_use): {step}")


class FakeAnthropic:
    """A local HTTP server that answers Messages API requests from a list of steps.

    Use as a context manager (or call `start()` / `stop()`); `url` is the base URL and
    `requests` the thread-safe record of every request received.
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]], *, host: str = "127.0.0.1") -> None:
        if not steps:
            raise ValueError("steps must not be empty")
        for step in steps:
            _check_step(step)
        self.steps: list[Mapping[str, Any]] = list(steps)
        self._host = host
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._next_step = 0
        self._since = 0  # requests before the last `script()` are forgotten
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        """Bind a free port on `host` and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self._host, 0), _Handler)
        server.daemon_threads = True
        server.block_on_close = False  # stop() ends and joins the handlers itself
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._t0 = time.monotonic()
        self.url = f"http://{self._host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving: wake hanging handlers, close open connections, join threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, handlers = list(self._conns), list(self._handlers)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in [*handlers, *([self._thread] if self._thread else [])]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, steps: Sequence[Mapping[str, Any]]) -> None:
        """Replace the scenario and forget earlier requests (a server shared by tests)."""
        if not steps:
            raise ValueError("steps must not be empty")
        for step in steps:
            _check_step(step)
        with self._lock:
            self.steps = list(steps)
            self._next_step = 0
            self._since = len(self._requests)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request so far, in arrival order."""
        with self._lock:
            return [RecordedRequest(**r) for r in self._requests[self._since :]]

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """Only the `POST /v1/messages` requests (those that consumed a step)."""
        return [r for r in self.requests if r["step"] is not None]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests arrived; return them (raise on timeout)."""
        deadline = time.monotonic() + timeout
        while len(seen := self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)} of {count} requests after {timeout}s")
            time.sleep(0.02)
        return seen

    # -- used by the handler ------------------------------------------------------------------

    def _record(self, entry: RecordedRequest, *, takes_step: bool) -> int:
        with self._lock:
            if takes_step:
                entry["step"] = min(self._next_step, len(self.steps) - 1)
                self._next_step += 1
            entry["time"] = round(time.monotonic() - self._t0, 4)
            self._requests.append(entry)
            return len(self._requests) - 1

    def _set_status(self, index: int, status: int | None) -> None:
        with self._lock:
            self._requests[index]["status"] = status

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
                self._handlers.add(threading.current_thread())
            else:
                self._conns.discard(conn)
                self._handlers.discard(threading.current_thread())


def _message(step: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The complete assistant message a text or tool_use step stands for."""
    content: list[dict[str, Any]] = []
    if "text" in step:
        content.append({"type": "text", "text": str(step["text"])})
    tools = step.get("tool_use") or []
    for tool in [tools] if isinstance(tools, Mapping) else tools:
        content.append(
            {
                "type": "tool_use",
                "id": _new_id("toolu_"),
                "name": tool["name"],
                "input": dict(tool.get("input", {})),
            }
        )
    return {
        "id": _new_id("msg_fake_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if "tool_use" in step else "end_turn",
        "stop_sequence": None,
        "usage": {**DEFAULT_USAGE, **step.get("usage", {})},
    }


def _stream_events(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The SSE events the real API sends for `message`, in order."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    head = {**message, "content": [], "stop_reason": None, "usage": start_usage}
    yield {"type": "message_start", "message": head}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"])]
        else:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {**block, "input": {}},
            }
            raw = json.dumps(block["input"], ensure_ascii=False)
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": c} for c in _chunks(raw)]
        if index == 0:
            yield {"type": "ping"}
        for delta in deltas:
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    yield {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection ends after this
    request_id = ""  # set per request

    @property
    def fake(self) -> FakeAnthropic:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.fake._track(self.connection, add=False)

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client went away, or stop() closed it
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST

    # -- request ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _dispatch(self) -> None:
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        is_message = self.command == "POST" and path == _MESSAGES_PATH
        entry = RecordedRequest(
            method=self.command,
            path=url.path,
            query=url.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            stream=isinstance(body, dict) and body.get("stream") is True,
            status=None,
            time=0.0,
            step=None,
        )
        index = self.fake._record(entry, takes_step=is_message)
        self.request_id = _new_id("req_fake_")
        try:
            if is_message:
                status = self._answer_message(self.fake.steps[entry["step"] or 0], entry)
            elif self.command == "POST" and path == f"{_MESSAGES_PATH}/count_tokens":
                status = self._send_json(200, {"input_tokens": max(1, len(raw) // 4)})
            else:
                status = self._send_error(404, "not_found_error", f"{self.command} {path}")
        except OSError:
            self.close_connection = True
            return
        self.fake._set_status(index, status)

    # -- responses ----------------------------------------------------------------------------

    def _answer_message(self, step: Mapping[str, Any], entry: RecordedRequest) -> int | None:
        if "hang" in step:
            self.fake._stopping.wait(float(step["hang"]))
            self.close_connection = True
            return None
        if "error" in step:
            err = step["error"]
            return self._send_error(
                int(err.get("status", 500)),
                str(err.get("type", "api_error")),
                str(err.get("message", "Internal server error")),
                dict(err.get("headers", {})),
            )
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        message = _message(step, str(body.get("model") or "claude-fake"))
        if not entry["stream"]:
            return self._send_json(200, message)
        self.send_response(200)
        self._common_headers()
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in _stream_events(message):
            data = _sse(event)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return 200

    def _common_headers(self) -> None:
        self.send_header("request-id", self.request_id)
        self.send_header("anthropic-organization-id", "00000000-0000-0000-0000-000000000000")
        self.send_header("Connection", "keep-alive")

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> int:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        return status

    def _send_error(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> int:
        payload = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self.request_id,
        }
        return self._send_json(status, payload, headers)
