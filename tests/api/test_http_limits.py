"""Bounds on what a stranger can make the server hold: request heads, slow
clients, connections. Raw sockets against a real server (`serve`)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, Server, start_server
from tests.jobs.helpers import sse, submit

HEAD_LIMIT = 32 * 1024
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with short deadlines, so that the tests see them pass."""
    root = tmp_path_factory.mktemp("limits")
    (root / "ws").mkdir()
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(root / "ws"),
        "DATA_DIR": str(root / "data"),
        "CLAUDE_BIN": str(Path(__file__).parents[1] / "fakes" / "claude"),
        "HEADER_TIMEOUT_SECONDS": "1",
        "BODY_TIMEOUT_SECONDS": "2",
    }
    server = start_server(env, root / "server.log")
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    port = int(server.base_url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def answer(sock: socket.socket) -> tuple[int, dict[str, object] | None]:
    """The status and the JSON body of the first response, read to EOF or its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body = json.loads(rest[:length]) if length and rest.startswith(b"{") else None
    return status, body


def head_of(size: int, *extra: bytes) -> bytes:
    """A `GET /health` head of exactly `size` bytes."""
    base = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(extra) + b"X-Pad: \r\n\r\n"
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(base)))


def closed(sock: socket.socket) -> bool:
    """Read until the server closes the connection (bounded by the socket timeout)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_a_megabyte_header_without_a_token_is_refused_unread(bounded: Server) -> None:
    with connect(bounded) as sock:
        sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Flood: " + b"f" * 2**20 + b"\r\n\r\n")
        status, body = answer(sock)
    assert status == 431
    assert body is not None and body["error"] == "request header fields too large"
    assert "MAX_HEADER_BYTES" in str(body["detail"])
    assert httpx.get(f"{bounded.base_url}/health", timeout=5).status_code == 200


def test_ten_thousand_headers_are_refused(bounded: Server) -> None:
    flood = b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    with connect(bounded) as sock:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\n" + flood + b"\r\n")
        status, body = answer(sock)
    assert status == 431 and body is not None and "MAX_HEADERS" in str(body["detail"])


def test_an_http_client_reads_the_431_rather_than_a_reset(bounded: Server) -> None:
    response = httpx.get(f"{bounded.base_url}/jobs", headers={"X-Big": "a" * 8 * 2**20})
    assert response.status_code == 431
    assert response.json()["error"] == "request header fields too large"


@pytest.mark.parametrize(("size", "status"), [(HEAD_LIMIT, 200), (HEAD_LIMIT + 1, 431)])
def test_the_head_limit_is_exact(bounded: Server, size: int, status: int) -> None:
    with connect(bounded) as sock:
        sock.sendall(head_of(size))
        assert answer(sock)[0] == status


def test_a_head_that_drips_in_is_timed_out(bounded: Server) -> None:
    with connect(bounded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sock.sendall(b"X-Slow: 1")  # ...and no more, as a slowloris does
        status, body = answer(sock)
        assert closed(sock)
    assert status == 408
    assert body is not None and "HEADER_TIMEOUT_SECONDS" in str(body["detail"])


def test_a_body_that_drips_in_has_its_connection_closed(bounded: Server) -> None:
    with connect(bounded) as sock:
        sock.sendall(
            b"POST /execute HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": '
        )
        assert closed(sock)  # not held open (a socket timeout would fail the test)
    assert "request body not received within 2s; closing" in bounded.log()


def test_normal_traffic_is_untouched(bounded: Server) -> None:
    """Keep-alive, pipelining, a large body with its head in one send, a
    chunked body, and an event stream that outlives both deadlines."""
    with connect(bounded) as sock:
        for _ in range(20):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(sock)[0] == 200
    with connect(bounded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += sock.recv(65536)
    prompt = "x" * 500_000
    with httpx.Client(base_url=bounded.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        big = c.post("/execute", json={"prompt": prompt})
        assert big.status_code == 202, big.text

        def chunks() -> Iterator[bytes]:
            yield b'{"prompt": "'
            yield b"y" * 100_000
            yield b'"}'

        chunked = c.post("/execute", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 202, chunked.text
        slow = submit(c, "@fake:ticks=30")  # about 3 s, past both deadlines
        events = [e["event"] for e in sse(c, slow)]
    assert events.count("assistant") == 31 and events[-1] == "status"


def test_connections_past_the_limit_get_503(tmp_path: Path, service_env: dict[str, str]) -> None:
    server = start_server({**service_env, "MAX_CONNECTIONS": "3"}, tmp_path / "s.log")
    try:
        idle = [connect(server) for _ in range(2)]
        try:
            with connect(server) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert answer(sock)[0] == 503
        finally:
            for sock in idle:
                sock.close()
        # the idle connections gone, requests are served again
        with connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(sock)[0] == 200
    finally:
        server.stop()
