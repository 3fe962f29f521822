"""The SQLite job store on its own."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.jobs.events import EventSink, JobEvents
from app.jobs.models import JobStatus, NewJob, Outcome
from app.jobs.sqlite import MIGRATIONS, DatabaseError, SQLiteJobStore
from app.jobs.store import IdempotencyConflict, JobStore, QueueFull


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    opened = await SQLiteJobStore.open(tmp_path / "data")
    yield opened
    await opened.close()


def new(prompt: str = "p", **kw: object) -> NewJob:
    return NewJob(prompt=prompt, model="haiku", max_budget_usd=1, timeout_seconds=60, **kw)  # type: ignore[arg-type]


def sql(tmp_path: Path, statement: str, *args: object) -> list[tuple]:
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as conn:
        return conn.execute(statement, args).fetchall()


async def test_the_database_is_in_wal_mode_at_the_current_schema(
    store: JobStore, tmp_path: Path
) -> None:
    assert sql(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    assert sql(tmp_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_a_version_1_database_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as conn:
        conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        conn.execute(
            "INSERT INTO jobs (id, status, prompt, model, max_budget_usd, timeout_seconds, "
            "created_at) VALUES ('old', 'completed', 'p', 'haiku', 1, 60, '2026-01-01T00:00:00Z')"
        )
    store = await SQLiteJobStore.open(tmp_path / "data")
    try:
        job = await store.get("old")
        assert job is not None and job.status == "completed" and job.git is None
        assert sql(tmp_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    sql(tmp_path, "PRAGMA user_version = 99")
    with pytest.raises(DatabaseError, match="newer than this service knows"):
        await SQLiteJobStore.open(tmp_path / "data")


async def test_claims_take_the_oldest_queued_job_once(store: JobStore) -> None:
    ids = [(await store.submit(new(f"p{i}"), max_queued=10))[0].id for i in range(3)]
    assert (await store.get(ids[2])).queue_position == 2  # type: ignore[union-attr]
    assert await store.cancel_queued(ids[0])
    claimed = await store.claim_next()
    assert claimed is not None and claimed.id == ids[1] and claimed.status == "running"
    assert not await store.cancel_queued(ids[1])  # running now: not the queue's to cancel
    assert (await store.get(ids[2])).queue_position == 0  # type: ignore[union-attr]


async def test_the_queue_bound_counts_only_queued_jobs(store: JobStore) -> None:
    await store.submit(new(), max_queued=2)
    await store.submit(new(), max_queued=2)
    with pytest.raises(QueueFull):
        await store.submit(new(), max_queued=2)
    await store.claim_next()
    await store.submit(new(), max_queued=2)


async def test_an_idempotency_key_holds_for_24_hours(store: JobStore, tmp_path: Path) -> None:
    first, created = await store.submit(new(idempotency_key="k", request_hash="h"), max_queued=9)
    again, created_again = await store.submit(
        new(idempotency_key="k", request_hash="h"), max_queued=9
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await store.submit(new(idempotency_key="k", request_hash="other"), max_queued=9)
    sql(tmp_path, "UPDATE jobs SET created_at = '2000-01-01T00:00:00.000000Z'")
    later, created_later = await store.submit(
        new(idempotency_key="k", request_hash="h"), max_queued=9
    )
    assert created_later and later.id != first.id


async def test_finishing_writes_the_outcome_and_a_status_event_once(store: JobStore) -> None:
    job, _ = await store.submit(new(), max_queued=9)
    await store.claim_next()
    outcome = Outcome(
        status=JobStatus.FAILED, is_error=True, error="bad", exit_code=1, usage={"input_tokens": 3}
    )
    assert await store.finish(job.id, outcome)
    assert not await store.finish(job.id, Outcome(status=JobStatus.COMPLETED))
    ended = await store.get(job.id)
    assert ended is not None
    assert (ended.status, ended.error, ended.exit_code, ended.usage) == (
        "failed",
        "bad",
        1,
        {"input_tokens": 3},
    )
    events = await store.events(job.id, after=0, limit=100)
    statuses = [json.loads(data)["status"] for _, kind, data in events if kind == "status"]
    assert statuses == ["queued", "running", "failed"]
    assert [seq for seq, _, _ in events] == [1, 2, 3]


async def test_events_past_the_cap_are_dropped_but_results_and_statuses_kept(
    store: JobStore,
) -> None:
    job, _ = await store.submit(new(), max_queued=9)
    await store.claim_next()
    sink = EventSink(store, JobEvents(), job.id, 300, await store.event_state(job.id))
    line = json.dumps({"type": "assistant", "pad": "x" * 100})
    for _ in range(5):
        sink.add("assistant", line)
    await sink.flush()
    sink.add("assistant", line)
    sink.add("result", '{"type": "result"}')
    await sink.close()
    await store.finish(job.id, Outcome(status=JobStatus.COMPLETED))
    kinds = [kind for _, kind, _ in await store.events(job.id, after=0, limit=100)]
    assert kinds == ["status", "status", "assistant", "assistant", "truncated", "result", "status"]
    ended = await store.get(job.id)
    assert ended is not None and ended.events_truncated and ended.events_dropped == 4
    # the next run of the log (a restart) goes on from what was stored
    state = await store.event_state(job.id)
    assert (state.last_seq, state.truncated, state.dropped) == (7, True, 4)


async def test_an_event_page_stops_at_its_byte_budget_but_never_empty(store: JobStore) -> None:
    job, _ = await store.submit(new(), max_queued=9)
    await store.claim_next()
    big = json.dumps({"type": "assistant", "pad": "x" * 1000})
    sink = EventSink(store, JobEvents(), job.id, 2**20, await store.event_state(job.id))
    for _ in range(10):
        sink.add("assistant", big)
    await sink.close()
    pages, after = [], 0
    while page := await store.events(job.id, after=after, limit=100, max_bytes=2000):
        pages.append([seq for seq, _, _ in page])
        after = page[-1][0]
    # 2 small status events (queued, running), then 10 of ~1 KB: a page ends
    # with the row that reaches 2000 bytes
    assert pages == [[1, 2, 3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
    (one,) = await store.events(job.id, after=2, limit=100, max_bytes=1)
    assert one[0] == 3


async def test_restart_marks_running_jobs_interrupted(store: JobStore) -> None:
    job, _ = await store.submit(new(), max_queued=9)
    waiting, _ = await store.submit(new(), max_queued=9)
    await store.claim_next()
    await store.set_process_group(job.id, 12345, "boot", 777)
    (found,) = await store.interrupt_running("stopped")
    assert (found.id, found.pgid, found.boot_id, found.leader_start) == (job.id, 12345, "boot", 777)
    assert (await store.status(job.id)) is JobStatus.INTERRUPTED
    assert (await store.status(waiting.id)) is JobStatus.QUEUED


async def test_an_interrupted_job_keeps_the_session_its_stored_events_name(
    store: JobStore, tmp_path: Path
) -> None:
    job, _ = await store.submit(new(), max_queued=9)
    await store.claim_next()
    session = "1d6c7c2e-0000-4000-8000-000000000001"
    init = {"type": "system", "subtype": "init", "session_id": session}
    sink = EventSink(store, JobEvents(), job.id, 2**20, await store.event_state(job.id))
    sink.add("system", json.dumps(init))
    await sink.close()
    # as a database written before the session id was stored with the events
    sql(tmp_path, "UPDATE jobs SET session_id = NULL")
    (found,) = await store.interrupt_running("stopped")
    assert found.session_id == init["session_id"]


async def test_prune_deletes_only_old_finished_jobs_and_their_events(
    store: JobStore, tmp_path: Path
) -> None:
    old, _ = await store.submit(new(), max_queued=9)
    await store.cancel_queued(old.id)
    recent, _ = await store.submit(new(), max_queued=9)
    await store.cancel_queued(recent.id)
    queued, _ = await store.submit(new(), max_queued=9)
    sql(
        tmp_path,
        "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?",
        old.id,
    )
    assert await store.prune(timedelta(days=30)) == 1
    assert await store.get(old.id) is None
    assert await store.events(old.id, after=0, limit=10) == []
    assert await store.get(recent.id) is not None and await store.get(queued.id) is not None


async def test_listing_pages_newest_first(store: JobStore) -> None:
    ids = [(await store.submit(new(), max_queued=9))[0].id for _ in range(5)]
    page, cursor = await store.list_jobs(status=None, limit=2, before=None)
    assert [job.id for job in page] == [ids[4], ids[3]]
    seen = [job.id for job in page]
    while cursor is not None:
        page, cursor = await store.list_jobs(status=None, limit=2, before=cursor)
        seen += [job.id for job in page]
    assert seen == ids[::-1]
    queued, _ = await store.list_jobs(status=JobStatus.QUEUED, limit=10, before=None)
    assert [job.queue_position for job in queued] == [4, 3, 2, 1, 0]


async def test_the_queue_depth_and_the_cost_since_a_moment(store: JobStore) -> None:
    first, _ = await store.submit(new(), max_queued=9)
    await store.submit(new(), max_queued=9)
    assert await store.queue_depth() == 2
    await store.claim_next()
    assert await store.queue_depth() == 1
    before = "2000-01-01T00:00:00.000000Z"
    await store.finish(first.id, Outcome(status=JobStatus.COMPLETED, total_cost_usd=0.25))
    assert await store.cost_since(before) == 0.25
    assert await store.cost_since("2999-01-01T00:00:00.000000Z") == 0.0
