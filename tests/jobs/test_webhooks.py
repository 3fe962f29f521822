"""Webhooks: a job's end POSTed, signed, retried until accepted, across a
restart; a host not allowed refused at submission. A real receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Server, start_server, wait_until
from tests.jobs.helpers import submit, wait_for

SECRET = "webhook-secret-0123456789"


@dataclass
class Receiver:
    """A webhook receiver: answers each call with the next of `answers` (then 200)."""

    answers: list[int] = field(default_factory=list)
    calls: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            status = self.answers.pop(0) if self.answers else 200
            self.calls.append((headers, body, status))
            return status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = target.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    target.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield target
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def hooked(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}


def signed(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-webhook-signature"], expected)


def test_a_receiver_that_fails_twice_gets_one_accepted_signed_delivery(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    server = start_server(hooked, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "hooked", webhook_url=receiver.url)
            wait_for(client, job_id)
            wait_until(lambda: len(receiver.calls) == 3, "three attempts", timeout_s=30)
            job = client.get(f"/jobs/{job_id}").json()
    finally:
        server.stop()
    assert [status for _, _, status in receiver.calls] == [500, 503, 200]
    ids = {headers["x-webhook-id"] for headers, _, _ in receiver.calls}
    bodies = {body for _, body, _ in receiver.calls}
    assert len(ids) == 1 and len(bodies) == 1  # the same delivery, the same bytes
    assert all(signed(headers, body) for headers, body, _ in receiver.calls)
    sent = json.loads(bodies.pop())
    assert sent["job_id"] == job_id and sent["status"] == "completed"
    assert sent["webhook_url"] == receiver.url
    webhook = job["webhook"]
    assert (webhook["attempts"], webhook["last_status"], webhook["failed"]) == (3, 200, False)
    assert webhook["delivered_at"] is not None and webhook["next_attempt_at"] is None


def test_a_delivery_outlives_a_restart(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [500]
    server = start_server(hooked, tmp_path / "s.log")
    with server.client() as client:
        job_id = submit(client, "hooked", webhook_url=receiver.url)
        wait_until(
            lambda: (client.get(f"/jobs/{job_id}").json()["webhook"] or {}).get("attempts") == 1,
            "the first attempt is recorded",
        )
    server.stop(signal.SIGTERM)
    again = start_server(hooked, tmp_path / "s2.log")
    try:
        with again.client() as client:
            wait_until(
                lambda: len(receiver.calls) == 2, "the retry after the restart", timeout_s=30
            )
            wait_until(
                lambda: client.get(f"/jobs/{job_id}").json()["webhook"]["delivered_at"] is not None,
                "the delivery is recorded",
            )
    finally:
        again.stop()
    (first, _, _), (second, _, _) = receiver.calls
    assert first["x-webhook-id"] == second["x-webhook-id"]


def test_a_client_error_is_not_retried_and_webhook_url_is_the_default(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [404]
    server = start_server({**hooked, "WEBHOOK_URL": receiver.url}, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "no url of its own")
            wait_until(
                lambda: (client.get(f"/jobs/{job_id}").json()["webhook"] or {}).get("failed"),
                "the delivery is given up",
            )
            webhook = client.get(f"/jobs/{job_id}").json()["webhook"]
    finally:
        server.stop()
    assert (webhook["attempts"], webhook["last_status"]) == (1, 404)
    assert webhook["last_error"] == "answered 404" and len(receiver.calls) == 1


def test_a_host_not_allowed_is_refused_when_the_job_is_submitted(
    hooked: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(hooked, tmp_path / "s.log")
    try:
        with server.client() as client:
            before = client.get("/jobs").json()["jobs"]
            for url, words in [
                ("http://169.254.169.254/latest/meta-data", "not in WEBHOOK_ALLOWED_HOSTS"),
                ("file:///etc/passwd", "must be an http:// or https:// URL"),
            ]:
                response = client.post("/execute", json={"prompt": "x", "webhook_url": url})
                assert response.status_code == 400, response.text
                assert response.json()["error"] == "webhook not allowed"
                assert words in response.json()["detail"]
            assert client.get("/jobs").json()["jobs"] == before
    finally:
        server.stop()
    off = start_server({**hooked, "WEBHOOK_SECRET": ""}, tmp_path / "s2.log")
    try:
        with off.client() as client:
            response = client.post(
                "/execute", json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}
            )
            assert response.status_code == 400 and "WEBHOOK_SECRET" in response.json()["detail"]
    finally:
        off.stop()


def test_a_job_keeps_its_controls_and_its_structured_output(server: Server) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    with server.client() as client:
        job = wait_for(
            client,
            submit(
                client,
                "shaped",
                json_schema=schema,
                allowed_tools=["Read"],
                disallowed_tools=["Bash"],
                max_turns=4,
            ),
        )
        refused = client.post("/execute", json={"prompt": "x", "json_schema": {"type": 12}})
    assert job["status"] == "completed"
    assert job["structured_output"] == {"answer": "Hello from the fake claude!"}
    assert job["json_schema"] == schema and job["max_turns"] == 4
    assert (job["allowed_tools"], job["disallowed_tools"]) == (["Read"], ["Bash"])
    assert refused.status_code == 400 and "not a valid JSON Schema" in refused.text
