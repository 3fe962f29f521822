"""Webhooks: a job's end POSTed, signed, retried with a growing backoff until
accepted or WEBHOOK_RETRY_SECONDS ran out, across a restart; a host not allowed
refused at submission, a WEBHOOK_URL that cannot work refused at start-up. A
real receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import ExitCode
from app.jobs.webhooks import HOLD_S
from tests.conftest import Server, cli, start_server, wait_until
from tests.jobs.helpers import submit, wait_for

SECRET = "webhook-secret-0123456789"


@dataclass(frozen=True)
class Call:
    """One request the receiver got: `status` None if it was held and never answered."""

    headers: dict[str, str]
    body: bytes
    status: int | None
    at: float
    """time.monotonic() when it arrived."""


@dataclass
class Receiver:
    """A webhook receiver: answers each call with the next of `answers` (then 200).

    With `hold_after`, a call that comes once that many were answered, before
    `release` is set, is held unanswered until then (then its connection is
    closed): the service that sent it never learns how it went.
    """

    answers: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    hold_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)

    def answer(self, headers: dict[str, str], body: bytes) -> int | None:
        with self.lock:
            at = time.monotonic()
            if (
                self.hold_after is not None
                and len(self.answered()) >= self.hold_after
                and not self.release.is_set()
            ):
                self.calls.append(Call(headers, body, None, at))
                return None
            status = self.answers.pop(0) if self.answers else 200
            self.calls.append(Call(headers, body, status, at))
            return status

    def answered(self) -> list[Call]:
        return [call for call in list(self.calls) if call.status is not None]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = target.answer({k.lower(): v for k, v in self.headers.items()}, body)
            if status is None:  # held: closed unanswered once released
                target.release.wait(HOLD_S)
                self.close_connection = True
                return
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
    target.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def hooked(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}


def signed(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-webhook-signature"], expected)


def webhook(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job's `webhook` as GET /jobs/{id} shows it ({} before its delivery is stored)."""
    return client.get(f"/jobs/{job_id}").json()["webhook"] or {}


def one_signed_delivery(calls: list[Call], job_id: str, url: str) -> None:
    """Every call is the same delivery (one id, the same bytes), correctly signed."""
    assert len({call.headers["x-webhook-id"] for call in calls}) == 1
    assert len({call.body for call in calls}) == 1
    assert all(signed(call.headers, call.body) for call in calls)
    sent = json.loads(calls[0].body)
    assert (sent["job_id"], sent["status"], sent["webhook_url"]) == (job_id, "completed", url)


@pytest.mark.timeout(60)
def test_a_failing_receiver_is_retried_with_a_growing_backoff_until_it_accepts(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [500, 408, 429]  # each retried (5xx, 408, 429); then 200
    server = start_server(hooked, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "hooked", webhook_url=receiver.url)
            wait_for(client, job_id)
            wait_until(lambda: len(receiver.calls) == 4, "four attempts", timeout_s=40)
            job = client.get(f"/jobs/{job_id}").json()
    finally:
        server.stop()
    assert [call.status for call in receiver.calls] == [500, 408, 429, 200]
    one_signed_delivery(receiver.calls, job_id, receiver.url)
    view = job["webhook"]
    assert (view["attempts"], view["last_status"], view["failed"]) == (4, 200, False)
    assert view["delivered_at"] is not None and view["next_attempt_at"] is None
    # The waits are 2, 4, 8 s, each +-25%, and the sender looks for due ones
    # each second: the floors (1.5, 3, 6 s) hold whatever the load; above them
    # only the first retry's ceiling and growth, as ratios with room to spare.
    at = [call.at for call in receiver.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert gaps[0] >= 1.5 and gaps[1] >= 3.0 and gaps[2] >= 6.0, gaps
    assert gaps[0] < 5.0, f"the first retry came {gaps[0]:.1f} s after the first attempt"
    assert gaps[2] > max(gaps[0], gaps[1]) and gaps[2] >= 1.5 * gaps[0], gaps


def failed_once(view: dict[str, Any]) -> bool:
    return (view.get("attempts"), view.get("last_status")) == (1, 500)


@pytest.mark.timeout(HOLD_S + 60)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_receiver_that_fails_twice_across_a_restart_gets_one_accepted_delivery(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver, stop: signal.Signals
) -> None:
    """The first failure in one instance, the second and the success in the next."""
    receiver.answers = [500, 503]
    # The first retry is due 1.5 s after the first failure at the earliest, and
    # the service is stopped as soon as that failure is recorded; should the
    # old instance still retry first (the test held up meanwhile), that call is
    # held unanswered, so it can record no second failure. Its delivery is then
    # taken again only when its hold (HOLD_S) ends: the slow path, still right.
    receiver.hold_after = 1
    first = start_server(hooked, tmp_path / "s.log")
    try:
        with first.client() as client:
            job_id = submit(client, "hooked", webhook_url=receiver.url)
            wait_until(
                lambda: failed_once(webhook(client, job_id)), "the first failure is recorded"
            )
    finally:
        first.stop(stop)
    stopped_at = time.monotonic()
    receiver.release.set()  # the old instance is gone: any call now is the new one's
    held = len(receiver.calls) - len(receiver.answered())
    again = start_server(hooked, tmp_path / "s2.log")
    try:
        with again.client() as client:
            wait_until(
                lambda: webhook(client, job_id).get("delivered_at") is not None,
                "the delivery is recorded",
                timeout_s=30 + (HOLD_S if held else 0),
            )
            view = webhook(client, job_id)
    finally:
        again.stop()
    answered = receiver.answered()
    assert [call.status for call in answered] == [500, 503, 200]
    assert answered[0].at < stopped_at < answered[1].at  # the second and third: the new one
    assert held <= 1 and len(receiver.calls) == 3 + held
    one_signed_delivery(receiver.calls, job_id, receiver.url)
    assert (view["attempts"], view["last_status"], view["failed"]) == (3, 200, False)
    assert view["next_attempt_at"] is None


@pytest.mark.timeout(60)
def test_a_delivery_is_given_up_after_webhook_retry_seconds(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    # With 4.4 s: the first retry is due by 2.5 s after the job's end (and so
    # made), the next 4.5 s after it at the earliest (and so never made).
    receiver.answers = [503, 503]
    env = {**hooked, "WEBHOOK_RETRY_SECONDS": "4.4"}
    server = start_server(env, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "hooked", webhook_url=receiver.url)
            wait_until(
                lambda: webhook(client, job_id).get("failed") is True, "the delivery is given up"
            )
            view = webhook(client, job_id)
            # Nothing more: not in the time a third attempt would take (5 s at
            # most, and the sender's one-second look); a window, not an ordering.
            time.sleep(max(0.0, receiver.calls[-1].at + 6.0 - time.monotonic()))
            # and the sender still works: another job's delivery goes out
            other = submit(client, "another", webhook_url=receiver.url)
            wait_until(
                lambda: webhook(client, other).get("delivered_at") is not None,
                "the other job's delivery",
            )
            calls = list(receiver.calls)
    finally:
        server.stop()
    assert view["attempts"] == 2 and view["last_status"] == 503
    assert view["last_error"] == "answered 503" and view["failed"] is True
    assert view["delivered_at"] is None and view["next_attempt_at"] is None
    assert len(calls) == 3
    given_up, last = calls[:2], calls[2]
    assert [call.status for call in given_up] == [503, 503]
    one_signed_delivery(given_up, job_id, receiver.url)
    assert last.headers["x-webhook-id"] != given_up[0].headers["x-webhook-id"]
    assert json.loads(last.body)["job_id"] == other


@pytest.mark.timeout(60)
def test_a_client_error_is_not_retried_and_webhook_url_is_the_default(
    hooked: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answers = [404]
    server = start_server({**hooked, "WEBHOOK_URL": receiver.url}, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "no url of its own")
            wait_until(
                lambda: webhook(client, job_id).get("failed") is True, "the delivery is given up"
            )
            view = webhook(client, job_id)
    finally:
        server.stop()
    assert (view["attempts"], view["last_status"]) == (1, 404)
    assert view["last_error"] == "answered 404" and len(receiver.calls) == 1


@pytest.mark.timeout(60)
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
                refusal = response.json()
                assert refusal["error"] == "webhook not allowed"
                assert words in refusal["detail"] and refusal["message"] == refusal["detail"]
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"WEBHOOK_URL": "hooks.example"}, "WEBHOOK_URL must be an http:// or https:// URL"),
        ({"WEBHOOK_URL": "http://[::1/hook"}, "WEBHOOK_URL is not a URL"),
        (
            {"WEBHOOK_URL": "http://169.254.169.254/hook"},
            "WEBHOOK_URL names host '169.254.169.254', which is not in WEBHOOK_ALLOWED_HOSTS",
        ),
        (
            {"WEBHOOK_URL": "http://127.0.0.1:9/hook", "WEBHOOK_SECRET": ""},
            "WEBHOOK_URL needs WEBHOOK_SECRET, the key of its signatures",
        ),
    ],
    ids=["not-http", "not-a-url", "host-not-allowed", "no-secret"],
)
def test_serve_refuses_a_webhook_url_that_cannot_work(
    hooked: dict[str, str], tmp_path: Path, env: dict[str, str], line: str
) -> None:
    done = cli("serve", env={**hooked, **env}, cwd=tmp_path)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert f"claude-agent-service: {line}\n" in done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before it touched anything


@pytest.mark.timeout(60)
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
