"""A damaged, unwritable or full job database: refused at start-up, or waited out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.jobs.models import NewJob
from app.jobs.sqlite import DATABASE_NAME, SQLiteJobStore
from tests.conftest import cli, group_members, read_log, start_server, wait_until
from tests.jobs.helpers import sse, submit, wait_for
from tests.mounts import read_only, tmpfs

DAMAGED = (
    "is damaged ({}); stop the service, move the file aside and recover what can be "
    "saved (README: Recovering a damaged job database)"
)


def make_database(data_dir: Path, jobs: int = 200) -> Path:
    """A database with some jobs and events in it, closed cleanly (WAL folded in)."""

    async def fill() -> None:
        store = await SQLiteJobStore.open(data_dir)
        for i in range(jobs):
            await store.submit(NewJob(f"job {i} " + "x" * 500, "haiku", 1, 60), max_queued=10**6)
        await store.close()

    asyncio.run(fill())
    path = data_dir / DATABASE_NAME
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def serve_once(service_env: dict[str, str], cwd: Path) -> tuple[int, str]:
    done = cli("serve", "--port", "0", env=service_env, cwd=cwd)
    return done.returncode, done.stderr


def test_a_database_with_overwritten_pages_refuses_to_start(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    path = make_database(Path(service_env["DATA_DIR"]))
    with path.open("r+b") as db:
        db.seek(4096 * 5)  # pages in the middle of the jobs table, while stopped
        db.write(os.urandom(4096 * 3))
    code, stderr = serve_once(service_env, tmp_path)
    assert code == 3
    (line,) = stderr.splitlines()
    assert line.startswith(f"claude-agent-service: the job database {path} is damaged (")
    assert line.endswith("(README: Recovering a damaged job database)")
    assert "Traceback" not in stderr


def test_a_truncated_database_refuses_to_start(service_env: dict[str, str], tmp_path: Path) -> None:
    path = make_database(Path(service_env["DATA_DIR"]))
    os.truncate(path, path.stat().st_size // 2)
    code, stderr = serve_once(service_env, tmp_path)
    assert code == 3
    (line,) = stderr.splitlines()
    assert f"the job database {path} " in line and "is damaged" in line


def test_a_database_with_a_garbage_header_refuses_to_start(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    path = make_database(Path(service_env["DATA_DIR"]), jobs=2)
    with path.open("r+b") as db:
        db.write(b"this is not a database" * 5)
    code, stderr = serve_once(service_env, tmp_path)
    assert code == 3
    assert stderr == (
        f"claude-agent-service: the job database {path} "
        + DAMAGED.format("file is not a database")
        + "\n"
    )


def test_an_unwritable_database_refuses_to_start(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    path = make_database(Path(service_env["DATA_DIR"]), jobs=2)
    if os.geteuid() != 0:
        path.chmod(0o444)
        code, stderr = serve_once(service_env, tmp_path)
    else:
        with read_only(path):  # root writes any file its mode forbids
            code, stderr = serve_once(service_env, tmp_path)
    assert code == 3
    assert stderr == (
        f"claude-agent-service: the job database {path} cannot be written (attempt to write "
        "a readonly database); give the service's user write access to it and to its "
        "directory\n"
    )


@contextlib.contextmanager
def full_disk(
    service_env: dict[str, str], tmp_path: Path, prompt: str
) -> Iterator[tuple[httpx.Client, str, Path]]:
    """A server whose DATA_DIR is a small file system, nearly filled, and a
    job running `prompt` that fills the rest: yields the client, the job's id
    and the ballast to unlink (space returns) once the store reports failing."""
    with tmpfs(tmp_path / "data", 12 * 2**20) as data_dir:
        ballast = data_dir / "ballast"
        env = {**service_env, "DATA_DIR": str(data_dir), "JOB_MAX_EVENT_BYTES": str(2**20)}
        server = start_server(env, tmp_path / "server.log")
        try:
            with server.client() as client:
                free = os.statvfs(data_dir).f_bavail * os.statvfs(data_dir).f_frsize
                ballast.write_bytes(b"\0" * (free - 200 * 1024))  # leave about 200 KB
                job_id = submit(client, prompt)
                wait_until(lambda: store_failing(client), "the store reports failing", timeout_s=60)
                yield client, job_id, ballast
        finally:
            server.stop()
    log = server.log()
    assert "Traceback" not in log and '"status": 500' not in log, log[-3000:]


def store_failing(client: httpx.Client) -> bool:
    return bool(client.get("/health").json()["store"] == "failing")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_full_disk_holds_the_outcome_until_space_returns(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """DATA_DIR on a small file system that a flooding job fills: submissions
    get 503 `store unavailable` (never 500), /health says so, and once space
    is freed the job's events and outcome are written and its stream ends."""
    with full_disk(service_env, tmp_path, "@fake:flood=4") as (client, job_id, ballast):
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert "database or disk is full" in health["store_error"]
        refused = client.post("/execute", json={"prompt": "while full"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "store unavailable"
        assert refused.headers["Retry-After"] == "30"
        assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
        ballast.unlink()  # space returns
        job = wait_for(client, job_id, timeout_s=60)
        assert job["status"] == "completed" and job["events_truncated"] is True
        events = list(sse(client, job_id))
        assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
        assert [e["event"] for e in events][-2:] == ["result", "status"]
        wait_until(lambda: not store_failing(client), "the store reports ok")
        assert client.post("/execute", json={"prompt": "after"}).status_code == 202


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_cancel_while_the_disk_is_full_stops_the_run_and_says_503(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """The run is stopped at once; the cancel answers 503 (its outcome cannot
    be written yet), not a 409 `cancel pending` after the cancel's wait; a
    cancel that writes nothing does not make /health say the store is well;
    once space returns the job is recorded cancelled."""
    with full_disk(service_env, tmp_path, "@fake:flood=4 @fake:ticks=600") as (
        client,
        job_id,
        ballast,
    ):
        (call,) = read_log(Path(service_env["FAKE_CLAUDE_LOG"]))
        cancel = client.post(f"/jobs/{job_id}/cancel")
        assert cancel.status_code == 503, cancel.text
        assert cancel.json()["error"] == "store unavailable"
        assert "the run was stopped" in cancel.json()["detail"]
        wait_until(lambda: group_members(call["pgid"]) == [], "the CLI is gone")
        assert store_failing(client)  # the cancel matched no queued job: it proved nothing
        assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
        ballast.unlink()
        job = wait_for(client, job_id, timeout_s=60)
        assert job["status"] == "cancelled"
        wait_until(lambda: not store_failing(client), "the store reports ok")
