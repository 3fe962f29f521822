"""Queue bounds, storage caps, shutdown and restart: each on a server of its own."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import group_members, read_log, start_server, wait_until
from tests.jobs.helpers import sse, submit, wait_for


def wait_for_call(log: Path, marker: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls = [c for c in read_log(log) if marker in c["prompt_head"]]
        if calls:
            return calls[0]
        time.sleep(0.05)
    raise AssertionError(f"the fake claude never ran {marker!r}")


def test_a_full_queue_answers_429_with_retry_after(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server({**service_env, "MAX_QUEUE_DEPTH": "2"}, tmp_path / "s.log")
    try:
        with server.client() as client:
            running = submit(client, "@fake:sleep=30")
            wait_for(client, running, {"running"})
            queued = [submit(client, f"queued {i}") for i in range(2)]
            assert [client.get(f"/jobs/{q}").json()["queue_position"] for q in queued] == [0, 1]
            full = client.post("/execute", json={"prompt": "one too many"})
            assert full.status_code == 429
            assert full.json()["error"] == "queue full"
            assert full.headers["Retry-After"] == "30"
            for job_id in [*queued, running]:
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    finally:
        server.stop()


def test_event_storage_is_capped_with_a_marker_and_the_result_kept(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server({**service_env, "JOB_MAX_EVENT_BYTES": "8000"}, tmp_path / "s.log")
    try:
        with server.client() as client:
            job_id = submit(client, "@fake:ticks=20")
            job = wait_for(client, job_id)
            assert job["status"] == "completed" and job["events_truncated"] is True
            kinds = [e["event"] for e in sse(client, job_id)]
            assert kinds.count("truncated") == 1
            assert kinds[-2:] == ["result", "status"]
            assert kinds.index("truncated") < kinds.index("result")
            assert kinds.count("assistant") < 20
    finally:
        server.stop()


def test_sigterm_interrupts_the_running_job_after_the_grace_period(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    server = start_server({**service_env, "SHUTDOWN_GRACE_SECONDS": "1"}, tmp_path / "s.log")
    with server.client() as client:
        job_id = submit(client, "stop-me @fake:grandchild @fake:sleep=60")
        wait_for(client, job_id, {"running"})
        call = wait_for_call(fake_log, "stop-me")
    server.stop(signal.SIGTERM, timeout_s=30)
    assert group_members(call["pgid"]) == []
    again = start_server(service_env, tmp_path / "s2.log")
    try:
        with again.client() as client:
            job = client.get(f"/jobs/{job_id}").json()
            assert job["status"] == "interrupted"
            assert job["error"] == "the service stopped while this job was running"
            assert job["finished_at"] is not None
    finally:
        again.stop()


def test_at_sigterm_watchers_see_the_running_job_end_and_the_queued_one_let_go(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    """A live event stream is not cut at shutdown: the running job's stream ends
    with its `interrupted` status; a queued job's ends at once, and the client
    resumes it after the restart with Last-Event-ID."""
    env = {**service_env, "SHUTDOWN_GRACE_SECONDS": "1"}
    server = start_server(env, tmp_path / "s.log")
    with (
        server.client() as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        running = submit(client, "watched @fake:sleep=60")
        queued = submit(client, "waiting")
        wait_for(client, running, {"running"})
        wait_for_call(fake_log, "watched")
        watchers = {
            job: pool.submit(lambda j=job: list(sse(client, j))) for job in (running, queued)
        }
        time.sleep(0.5)  # both streams are open and have replayed what there is
        started = time.monotonic()
        server.stop(signal.SIGTERM, timeout_s=30)
        stopped_in = time.monotonic() - started
        seen = {job: watcher.result(5) for job, watcher in watchers.items()}
    assert [e["json"]["status"] for e in seen[running] if e["event"] == "status"] == [
        "queued",
        "running",
        "interrupted",
    ]
    assert [e["json"]["status"] for e in seen[queued]] == ["queued"]
    assert stopped_in < 15  # the grace (1 s), the kill, no waiting on open streams
    assert "without completing response" not in server.log()
    again = start_server(service_env, tmp_path / "s2.log")
    try:
        with again.client() as client:
            rest = list(sse(client, queued, last_event_id=seen[queued][-1]["id"]))
            statuses = [e["json"]["status"] for e in rest if e["event"] == "status"]
            assert statuses == ["running", "completed"]
    finally:
        again.stop()


def test_after_sigkill_a_restart_interrupts_the_running_job_and_runs_the_queue(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    server = start_server(service_env, tmp_path / "s.log")
    with server.client() as client:
        running = submit(client, "killed-mid-run @fake:grandchild @fake:sleep=120")
        wait_for(client, running, {"running"})
        queued = [submit(client, f"after-restart-{i}") for i in range(3)]
        call = wait_for_call(fake_log, "killed-mid-run")
        # the session id is stored with the CLI's first events
        wait_until(
            lambda: client.get(f"/jobs/{running}").json()["session_id"] is not None,
            "the running job has its session id",
        )
        init = next(e["json"] for e in sse(client, running, stop_after=3) if e["event"] == "system")
    server.stop(signal.SIGKILL)
    # The CLI runs in a session of its own: it outlived the service...
    assert group_members(call["pgid"]) != []
    again = start_server(service_env, tmp_path / "s2.log")
    try:
        # ...until the new service found its job's record and killed the group.
        assert group_members(call["pgid"]) == []
        with again.client() as client:
            job = client.get(f"/jobs/{running}").json()
            assert job["status"] == "interrupted" and job["finished_at"] is not None
            assert job["session_id"] == init["session_id"]  # it can be resumed
            finished = [wait_for(client, job_id) for job_id in queued]
            assert [j["status"] for j in finished] == ["completed"] * 3
            starts = [j["started_at"] for j in finished]
            assert starts == sorted(starts)  # still in their original order
            statuses = [e["json"]["status"] for e in sse(client, running) if e["event"] == "status"]
            assert statuses == ["queued", "running", "interrupted"]
            assert client.get("/jobs", params={"status": "running"}).json()["jobs"] == []
            assert client.get("/jobs", params={"status": "queued"}).json()["jobs"] == []
    finally:
        again.stop()


def test_a_second_cancel_does_not_free_the_workspace_early(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    server = start_server(service_env, tmp_path / "s.log")
    try:
        with server.client() as client, server.client() as other:
            stubborn = submit(client, "stubborn @fake:ignore_term @fake:sleep=60")
            wait_for(client, stubborn, {"running"})
            call = wait_for_call(fake_log, "stubborn")
            follower = submit(client, "follower")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(client.post, f"/jobs/{stubborn}/cancel")
                time.sleep(0.5)
                second = pool.submit(other.post, f"/jobs/{stubborn}/cancel")
                # the follower may only start once the stubborn group is dead
                wait_for(client, follower, {"running", "completed"})
                assert group_members(call["pgid"]) == []
                assert first.result(30).status_code == 200
                assert second.result(30).status_code in (200, 409)
            assert wait_for(client, follower)["status"] == "completed"
    finally:
        server.stop()


def test_sigterm_with_a_chat_in_flight_leaves_no_process(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    server = start_server({**service_env, "SHUTDOWN_GRACE_SECONDS": "1"}, tmp_path / "s.log")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, server.client() as client:
        chat = pool.submit(
            client.post,
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "@fake:ignore_term @fake:sleep=300"}]},
        )
        call = wait_for_call(fake_log, "ignore_term")
        server.stop(signal.SIGTERM, timeout_s=60)
        assert group_members(call["pgid"]) == []
        with contextlib.suppress(httpx.HTTPError):
            chat.result(30)
