"""Several instances, one PostgreSQL queue: real servers, a real database
server (tests/pgserver.py), one bare remote, the fake `claude`."""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    FAKE_CLAUDE,
    TOKEN,
    Server,
    git,
    group_members,
    make_remote,
    read_log,
    start_server,
    wait_until,
)
from tests.jobs.helpers import sse, submit, wait_for
from tests.pgserver import PostgresServer


def instance_env(root: Path, name: str, url: str, remote: Path, **extra: str) -> dict[str, str]:
    return {
        "API_BEARER_TOKEN": TOKEN,
        "DATABASE_URL": url,
        "INSTANCE_ID": name,
        "WORKSPACE_DIR": str(root / f"ws-{name}"),
        "DATA_DIR": str(root / f"data-{name}"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "FAKE_CLAUDE_LOG": str(root / "fake.jsonl"),
        "GIT_REPO_URL": str(remote),
        "GIT_PUSH": "true",
        "SHUTDOWN_GRACE_SECONDS": "1",
        **extra,
    }


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, remote: Path) -> Iterator[dict[str, Server]]:
    """Three instances (a, b, c) on one database and one remote."""
    servers: dict[str, Server] = {}
    try:
        for name in ("a", "b", "c"):
            env = instance_env(tmp_path, name, postgres_url, remote, JOB_LEASE_SECONDS="3")
            servers[name] = start_server(env, tmp_path / f"{name}.log")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def calls(root: Path, marker: str) -> list[dict]:
    return [c for c in read_log(root / "fake.jsonl") if marker in c["prompt_head"]]


def test_thirty_jobs_on_three_instances_run_once_each_and_all_land(
    cluster: dict[str, Server], tmp_path: Path, remote: Path
) -> None:
    with cluster["a"].client() as client:
        jobs = [submit(client, f"job-{i} @fake:write=f{i}.txt @fake:sleep=0.2") for i in range(30)]
        done = [wait_for(client, job_id, timeout_s=90) for job_id in jobs]
    assert [j["status"] for j in done] == ["completed"] * 30
    ran = [c["prompt_head"].split()[0] for c in calls(tmp_path, "job-")]
    assert sorted(ran) == sorted(f"job-{i}" for i in range(30))  # each exactly once
    assert {j["instance"] for j in done} == {"a", "b", "c"}  # spread over all three
    landed = git("log", "--all", "--format=%s", cwd=remote)
    for job_id in jobs:
        assert f"(job {job_id})" in landed


def test_events_and_cancels_reach_a_job_running_on_another_instance(
    cluster: dict[str, Server], tmp_path: Path
) -> None:
    gate = tmp_path / "never"
    with cluster["a"].client() as a, cluster["b"].client() as b:
        # fill every instance's slot, so that the watched job runs somewhere
        jobs = [submit(a, f"held-{i} @fake:ticks=3 @fake:wait_for={gate}") for i in range(3)]
        wait_until(lambda: len(calls(tmp_path, "held-")) == 3, "three runs started")
        records = [b.get(f"/jobs/{job_id}").json() for job_id in jobs]
        target = next(j for j in records if j["instance"] != "b")
        owner = target["instance"]
        seen = []
        for event in sse(b, target["job_id"]):  # B watches a job running on A or C
            seen.append(event)
            if sum(1 for e in seen if e["event"] == "assistant") == 3:
                break
        assert b.get(f"/jobs/{target['job_id']}").json()["status"] == "running"
        call = next(c for c in calls(tmp_path, "held-") if c["pid"] and c["cwd"].endswith(owner))
        cancelled = b.post(f"/jobs/{target['job_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert group_members(call["pgid"]) == []
        for job_id in jobs:
            if job_id != target["job_id"]:
                assert a.post(f"/jobs/{job_id}/cancel").status_code == 200


def test_a_killed_instance_s_job_is_interrupted_by_another_and_the_queue_goes_on(
    tmp_path: Path, postgres_url: str, remote: Path
) -> None:
    env_a = instance_env(tmp_path, "a", postgres_url, remote, JOB_LEASE_SECONDS="3")
    env_b = instance_env(tmp_path, "b", postgres_url, remote, JOB_LEASE_SECONDS="3")
    a = start_server(env_a, tmp_path / "a.log")
    b: Server | None = None
    gate = tmp_path / "release-b"
    try:
        with a.client() as client:
            doomed = submit(client, f"doomed @fake:wait_for={tmp_path}/never")
            wait_until(lambda: len(calls(tmp_path, "doomed")) == 1, "a runs it")
            assert client.get(f"/jobs/{doomed}").json()["instance"] == "a"
        b = start_server(env_b, tmp_path / "b.log")  # after A took the job
        a.stop(signal.SIGKILL)
        with b.client() as client:
            keeper = submit(client, f"keeper @fake:wait_for={gate}")
            job = wait_for(client, doomed, {"interrupted"}, timeout_s=30)
            assert "its instance stopped while it ran" in job["error"]
            wait_until(lambda: len(calls(tmp_path, "keeper")) == 1, "b runs the next job")
            assert client.get(f"/jobs/{keeper}").json()["instance"] == "b"
            # A comes back under its name: it recovers its own jobs, not B's
            a = start_server(env_a, tmp_path / "a2.log")
            assert client.get(f"/jobs/{keeper}").json()["status"] == "running"
            gate.touch()
            assert wait_for(client, keeper)["status"] == "completed"
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_the_same_key_sent_to_two_instances_at_once_gives_one_job(
    cluster: dict[str, Server],
) -> None:
    body = {"prompt": "once"}
    headers = {"Idempotency-Key": "same-key-on-two-instances"}
    with (
        cluster["a"].client() as a,
        cluster["b"].client() as b,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        answers = [
            f.result(30)
            for f in [
                pool.submit(a.post, "/execute", json=body, headers=headers),
                pool.submit(b.post, "/execute", json=body, headers=headers),
            ]
        ]
    assert sorted(r.status_code for r in answers) == [200, 202]
    assert answers[0].json()["job_id"] == answers[1].json()["job_id"]


@pytest.mark.timeout(120)
def test_the_database_going_away_while_a_job_runs_loses_nothing(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer, remote: Path
) -> None:
    env = instance_env(tmp_path, "a", postgres_url, remote)
    server = start_server(env, tmp_path / "a.log")
    gate = tmp_path / "go"
    try:
        with server.client() as client:
            job_id = submit(client, f"survivor @fake:ticks=5 @fake:wait_for={gate}")
            wait_until(lambda: len(calls(tmp_path, "survivor")) == 1, "the run started")
            (call,) = calls(tmp_path, "survivor")
            postgres_server.kill()
            statuses = {client.get("/jobs").status_code for _ in range(3)}
            statuses.add(client.post("/execute", json={"prompt": "x"}).status_code)
            assert statuses == {503}  # never 500
            health = client.get("/health").json()
            assert health["store"] == "failing" and "cannot be reached" in health["store_error"]
            gate.touch()  # the run ends while the database is away: nothing kills it early
            wait_until(lambda: group_members(call["pgid"]) == [], "the run ended", timeout_s=30)
            assert client.get(f"/jobs/{job_id}").status_code == 503
            postgres_server.start()
            wait_until(
                lambda: client.get(f"/jobs/{job_id}").status_code == 200,
                "the database answers again",
                timeout_s=30,
            )
            job = wait_for(client, job_id, timeout_s=60)
            assert job["status"] == "completed"
            kinds = [e["event"] for e in sse(client, job_id)]
            assert kinds.count("assistant") == 6 and kinds[-1] == "status"
            wait_until(lambda: client.get("/health").json()["store"] == "ok", "store back")
    finally:
        if not postgres_server.running():
            postgres_server.start()
        server.stop()
    assert "Traceback" not in server.log()
