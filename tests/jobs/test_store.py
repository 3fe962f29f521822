"""The job store, one suite for both backends (SQLite and PostgreSQL), then
what is particular to each."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from app.jobs.events import EventSink, JobEvents
from app.jobs.models import JobStatus, NewJob, Outcome
from app.jobs.postgres import MIGRATIONS as PG_MIGRATIONS
from app.jobs.postgres import PostgresJobStore
from app.jobs.sqlite import MIGRATIONS, SQLiteJobStore
from app.jobs.store import DatabaseError, IdempotencyConflict, JobStore, LeaseLost, QueueFull
from tests.jobs.stores import OWNER, Backend

OTHER = "other-instance"


def new(prompt: str = "p", **kw: object) -> NewJob:
    return NewJob(prompt=prompt, model="haiku", max_budget_usd=1, timeout_seconds=60, **kw)  # type: ignore[arg-type]


async def claim(store: JobStore, owner: str = OWNER, lease_s: float = 60) -> str:
    job = await store.claim_next(slot=0, owner=owner, lease_s=lease_s)
    assert job is not None
    return job.id


def sink_for(store: JobStore, job_id: str, max_bytes: int, state: object) -> EventSink:
    return EventSink(store, JobEvents(), job_id, max_bytes, state, owner=OWNER)  # type: ignore[arg-type]


# -- the shared suite ------------------------------------------------------------------


async def test_claims_take_the_oldest_queued_job_once(backend: Backend) -> None:
    store = backend.store
    ids = [(await store.submit(new(f"p{i}"), max_queued=10))[0].id for i in range(3)]
    assert (await store.get(ids[2])).queue_position == 2  # type: ignore[union-attr]
    assert await store.cancel_queued(ids[0])
    claimed = await store.claim_next(slot=3, owner=OWNER, lease_s=60)
    assert claimed is not None and claimed.id == ids[1] and claimed.status == "running"
    assert (claimed.slot, claimed.instance) == (3, OWNER)
    assert not await store.cancel_queued(ids[1])  # running now: not the queue's to cancel
    assert (await store.get(ids[2])).queue_position == 0  # type: ignore[union-attr]
    assert await store.queue_depth() == 1


async def test_the_queue_bound_counts_only_queued_jobs(backend: Backend) -> None:
    store = backend.store
    await store.submit(new(), max_queued=2)
    await store.submit(new(), max_queued=2)
    with pytest.raises(QueueFull):
        await store.submit(new(), max_queued=2)
    await claim(store)
    await store.submit(new(), max_queued=2)
    assert await store.queue_depth() == 2


async def test_an_idempotency_key_holds_for_24_hours(backend: Backend) -> None:
    store = backend.store
    first, created = await store.submit(new(idempotency_key="k", request_hash="h"), max_queued=9)
    again, created_again = await store.submit(
        new(idempotency_key="k", request_hash="h"), max_queued=9
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await store.submit(new(idempotency_key="k", request_hash="other"), max_queued=9)
    await backend.age_idempotency_keys()
    later, created_later = await store.submit(
        new(idempotency_key="k", request_hash="h"), max_queued=9
    )
    assert created_later and later.id != first.id


async def test_finishing_writes_the_outcome_and_a_status_event_once(backend: Backend) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    await claim(store)
    outcome = Outcome(
        status=JobStatus.FAILED,
        is_error=True,
        error="bad",
        exit_code=1,
        usage={"input_tokens": 3},
        git={"commits": ["abc"], "pushed": True},
    )
    assert await store.finish(job.id, outcome, owner=OWNER)
    assert not await store.finish(job.id, Outcome(status=JobStatus.COMPLETED), owner=OWNER)
    ended = await store.get(job.id)
    assert ended is not None
    assert (ended.status, ended.error, ended.exit_code, ended.usage, ended.git) == (
        "failed",
        "bad",
        1,
        {"input_tokens": 3},
        {"commits": ["abc"], "pushed": True},
    )
    assert ended.is_error is True and ended.finished_at is not None
    events = await store.events(job.id, after=0, limit=100)
    statuses = [json.loads(data)["status"] for _, kind, data in events if kind == "status"]
    assert statuses == ["queued", "running", "failed"]
    assert [seq for seq, _, _ in events] == [1, 2, 3]


async def test_events_past_the_cap_are_dropped_but_results_and_statuses_kept(
    backend: Backend,
) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    await claim(store)
    sink = sink_for(store, job.id, 300, await store.event_state(job.id))
    line = json.dumps({"type": "assistant", "pad": "x" * 100})
    for _ in range(5):
        sink.add("assistant", line)
    await sink.flush()
    sink.add("assistant", line)
    sink.add("result", '{"type": "result"}')
    await sink.close()
    await store.finish(job.id, Outcome(status=JobStatus.COMPLETED), owner=OWNER)
    kinds = [kind for _, kind, _ in await store.events(job.id, after=0, limit=100)]
    assert kinds == ["status", "status", "assistant", "assistant", "truncated", "result", "status"]
    ended = await store.get(job.id)
    assert ended is not None and ended.events_truncated and ended.events_dropped == 4
    # the next run of the log (a restart) goes on from what was stored
    state = await store.event_state(job.id)
    assert (state.last_seq, state.truncated, state.dropped) == (7, True, 4)


async def test_an_event_page_stops_at_its_byte_budget_but_never_empty(backend: Backend) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    await claim(store)
    big = json.dumps({"type": "assistant", "pad": "x" * 1000})
    sink = sink_for(store, job.id, 2**20, await store.event_state(job.id))
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


async def test_restart_marks_running_jobs_interrupted(backend: Backend) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    others, _ = await store.submit(new(), max_queued=9)
    waiting, _ = await store.submit(new(), max_queued=9)
    await claim(store)
    await claim(store, owner=OTHER)
    await store.set_process_group(job.id, 12345, "boot", 777)
    (mine,) = await store.interrupt_running("stopped", owner=OWNER)
    assert (mine.id, mine.pgid, mine.boot_id, mine.leader_start) == (job.id, 12345, "boot", 777)
    assert mine.status == "interrupted" and mine.error == "stopped"
    assert (await store.status(others.id)) is JobStatus.RUNNING  # another instance's
    (everyone,) = await store.interrupt_running("stopped", owner=None)
    assert everyone.id == others.id
    assert (await store.status(waiting.id)) is JobStatus.QUEUED


async def test_an_interrupted_job_keeps_the_session_its_stored_events_name(
    backend: Backend,
) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    await claim(store)
    session = "1d6c7c2e-0000-4000-8000-000000000001"
    init = {"type": "system", "subtype": "init", "session_id": session}
    sink = sink_for(store, job.id, 2**20, await store.event_state(job.id))
    await sink.on_line(json.dumps(init).encode(), init)
    await sink.close()
    assert (await store.get(job.id)).session_id == session  # type: ignore[union-attr]
    # as a database written before the session id was stored with the events
    await backend.raw("UPDATE jobs SET session_id = NULL")
    (found,) = await store.interrupt_running("stopped", owner=None)
    assert found.session_id == session


async def test_a_lease_is_renewed_by_its_owner_and_taken_when_it_expires(
    backend: Backend,
) -> None:
    store = backend.store
    job, _ = await store.submit(new(), max_queued=9)
    await claim(store, lease_s=60)
    assert await store.renew(OTHER, [job.id], 60) == set()  # not its job
    assert await store.interrupt_expired("gone", except_owner=OTHER) == []  # not expired yet
    assert await store.renew(OWNER, [job.id], 0.2) == {job.id}  # now a short one
    await asyncio.sleep(0.5)  # the lease runs out (a clock, not a race: nothing renews it)
    assert await store.interrupt_expired("gone", except_owner=OWNER) == []  # its own: skipped
    (taken,) = await store.interrupt_expired("gone", except_owner=OTHER)
    assert taken.id == job.id and taken.status == "interrupted" and taken.error == "gone"
    # the owner, awake again, can change nothing: every write of it is fenced
    assert await store.renew(OWNER, [job.id], 60) == set()
    state = await store.event_state(job.id)
    with pytest.raises(LeaseLost):
        await store.append_events(job.id, [], state, owner=OWNER)
    assert not await store.finish(job.id, Outcome(status=JobStatus.COMPLETED), owner=OWNER)
    assert (await store.status(job.id)) is JobStatus.INTERRUPTED


async def test_a_cancel_request_reaches_the_owner(backend: Backend) -> None:
    store = backend.store
    heard: list[tuple[str, str]] = []
    got = asyncio.Event()

    def listener(notice: str, job_id: str) -> None:
        if notice == "cancel":
            heard.append((notice, job_id))
            got.set()

    store.listen(listener)
    queued, _ = await store.submit(new(), max_queued=9)
    assert not await store.request_cancel(queued.id)  # not running: not the owner's
    running, _ = await store.submit(new(), max_queued=9)
    await claim(store)  # the queued one
    await claim(store)
    assert await store.request_cancel(running.id)
    await asyncio.wait_for(got.wait(), 10)
    assert ("cancel", running.id) in heard
    assert await store.cancel_requests(OWNER) == [running.id]
    assert await store.cancel_requests(OTHER) == []


async def test_prune_deletes_only_old_finished_jobs_and_their_events(backend: Backend) -> None:
    store = backend.store
    old, _ = await store.submit(new(), max_queued=9)
    await store.cancel_queued(old.id)
    recent, _ = await store.submit(new(), max_queued=9)
    await store.cancel_queued(recent.id)
    queued, _ = await store.submit(new(), max_queued=9)
    await backend.raw(
        "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", old.id
    )
    assert await store.prune(timedelta(days=30)) == 1
    assert await store.get(old.id) is None
    assert await store.events(old.id, after=0, limit=10) == []
    assert await store.get(recent.id) is not None and await store.get(queued.id) is not None


async def test_listing_pages_newest_first(backend: Backend) -> None:
    store = backend.store
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
    await store.cancel_queued(ids[1])
    await claim(store)  # ids[0]
    queued, _ = await store.list_jobs(status=JobStatus.QUEUED, limit=2, before=None)
    assert [(job.id, job.queue_position) for job in queued] == [(ids[4], 2), (ids[3], 1)]
    assert (await store.get(ids[2])).queue_position == 0  # type: ignore[union-attr]


async def test_the_queue_depth_and_the_cost_since_a_moment(backend: Backend) -> None:
    store = backend.store
    first, _ = await store.submit(new(), max_queued=9)
    await store.submit(new(), max_queued=9)
    assert await store.queue_depth() == 2
    await claim(store)
    assert await store.queue_depth() == 1
    await store.finish(
        first.id, Outcome(status=JobStatus.COMPLETED, total_cost_usd=0.25), owner=OWNER
    )
    assert await store.cost_since("2000-01-01T00:00:00.000000Z") == 0.25
    assert await store.cost_since("2999-01-01T00:00:00.000000Z") == 0.0


async def test_a_job_that_ends_makes_its_webhook_due_until_it_is_delivered(
    backend: Backend,
) -> None:
    store = backend.store
    hooked, _ = await store.submit(new(webhook_url="http://hooks.test/a"), max_queued=9)
    plain, _ = await store.submit(new(), max_queued=9)
    assert await store.due_deliveries(limit=10, hold_s=60) == []  # nothing ended yet
    await claim(store)
    await store.finish(hooked.id, Outcome(status=JobStatus.COMPLETED), owner=OWNER)
    assert await store.cancel_queued(plain.id)  # ends too, but names no webhook

    (due,) = await store.due_deliveries(limit=10, hold_s=60)
    assert (due.job_id, due.url, due.attempts, due.payload) == (
        hooked.id,
        "http://hooks.test/a",
        0,
        None,
    )
    assert await store.due_deliveries(limit=10, hold_s=60) == []  # held for its attempt

    await store.record_attempt(
        due.id,
        payload='{"job_id": 1}',
        status=503,
        error="answered 503",
        delivered=False,
        retry_at="2000-01-01T00:00:00.000000Z",  # due again at once
    )
    webhook = (await store.get(hooked.id)).webhook  # type: ignore[union-attr]
    assert webhook is not None
    assert (webhook["attempts"], webhook["last_status"], webhook["failed"]) == (1, 503, False)
    assert webhook["delivered_at"] is None and webhook["next_attempt_at"] is not None

    (again,) = await store.due_deliveries(limit=10, hold_s=60)
    assert (again.id, again.attempts, again.payload) == (due.id, 1, '{"job_id": 1}')
    await store.record_attempt(
        due.id, payload=again.payload, status=200, error=None, delivered=True, retry_at=None
    )
    webhook = (await store.get(hooked.id)).webhook  # type: ignore[union-attr]
    assert webhook is not None
    assert (webhook["attempts"], webhook["last_status"], webhook["failed"]) == (2, 200, False)
    assert webhook["delivered_at"] is not None and webhook["next_attempt_at"] is None
    assert (await store.get(plain.id)).webhook is None  # type: ignore[union-attr]
    # delivered: not taken again, however long ago its last attempt was due
    await backend.raw("UPDATE deliveries SET next_attempt_at = '2000-01-01T00:00:00.000000Z'")
    assert await store.due_deliveries(limit=10, hold_s=60) == []


async def test_a_delivery_given_up_is_failed_and_never_due_again(backend: Backend) -> None:
    store = backend.store
    job, _ = await store.submit(new(webhook_url="http://hooks.test/b"), max_queued=9)
    await store.cancel_queued(job.id)
    (due,) = await store.due_deliveries(limit=10, hold_s=0)
    await store.record_attempt(
        due.id, payload="{}", status=404, error="answered 404", delivered=False, retry_at=None
    )
    webhook = (await store.get(job.id)).webhook  # type: ignore[union-attr]
    assert webhook is not None
    assert (webhook["failed"], webhook["last_status"], webhook["next_attempt_at"]) == (
        True,
        404,
        None,
    )
    await backend.raw("UPDATE deliveries SET next_attempt_at = '2000-01-01T00:00:00.000000Z'")
    assert await store.due_deliveries(limit=10, hold_s=0) == []


# -- SQLite ------------------------------------------------------------------------------


def sqlite_sql(tmp_path: Path, statement: str, *args: object) -> list[tuple]:
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as conn:
        return conn.execute(statement, args).fetchall()


async def test_sqlite_is_in_wal_mode_at_the_current_schema(tmp_path: Path) -> None:
    store = await SQLiteJobStore.open(tmp_path / "data")
    await store.close()
    assert sqlite_sql(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    assert sqlite_sql(tmp_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_a_version_1_sqlite_database_is_migrated_with_its_jobs(tmp_path: Path) -> None:
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
        assert sqlite_sql(tmp_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    finally:
        await store.close()


async def test_a_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    sqlite_sql(tmp_path, "PRAGMA user_version = 99")
    with pytest.raises(DatabaseError, match="newer than this service knows"):
        await SQLiteJobStore.open(tmp_path / "data")


# -- PostgreSQL --------------------------------------------------------------------------


async def test_instances_starting_together_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(PostgresJobStore.open(postgres_url) for _ in range(4)))
    try:
        versions = await stores[0]._use(  # the schema table, read directly
            lambda conn: _fetch(conn, "SELECT version FROM cas_schema")
        )
        assert versions == [(len(PG_MIGRATIONS),)]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def _fetch(conn: object, statement: str) -> list[tuple[object, ...]]:
    cursor = await conn.execute(statement)  # type: ignore[attr-defined]
    return [tuple(row.values()) for row in await cursor.fetchall()]


async def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    store = await PostgresJobStore.open(postgres_url)
    await store._use(lambda conn: conn.execute("UPDATE cas_schema SET version = 99"))
    await store.close()
    with pytest.raises(DatabaseError, match="at schema 99, newer than this service knows"):
        await PostgresJobStore.open(postgres_url)


async def test_an_unreachable_or_refusing_database_is_a_clear_error(postgres_url: str) -> None:
    closed = postgres_url.rsplit(":", 1)[0] + ":1/x"
    with pytest.raises(DatabaseError, match="cannot connect to the job database"):
        await PostgresJobStore.open(closed, timeout_s=3)
    wrong = postgres_url.replace("postgresql://", "postgresql://nobody:secret@", 1)
    wrong = wrong.replace("@postgres@", "@")  # whatever user the URL had
    with pytest.raises(DatabaseError) as refused:
        await PostgresJobStore.open(wrong, timeout_s=3)
    assert "secret" not in str(refused.value)


async def test_concurrent_claims_take_each_job_once(postgres_url: str) -> None:
    stores = [await PostgresJobStore.open(postgres_url) for _ in range(3)]
    try:
        ids = {(await stores[0].submit(new(), max_queued=100))[0].id for _ in range(30)}

        async def claim_all(store: JobStore, owner: str) -> list[str]:
            claimed = []
            while (job := await store.claim_next(slot=0, owner=owner, lease_s=60)) is not None:
                claimed.append(job.id)
            return claimed

        results = await asyncio.gather(
            *(claim_all(store, f"i{n}") for n, store in enumerate(stores))
        )
        flat = [job_id for claimed in results for job_id in claimed]
        assert sorted(flat) == sorted(ids)  # every job once, none twice
        assert await stores[0].queue_depth() == 0
    finally:
        for store in stores:
            await store.close()


async def test_the_same_key_sent_to_two_instances_at_once_gives_one_job(
    postgres_url: str,
) -> None:
    a, b = PostgresJobStore, PostgresJobStore
    first, second = await a.open(postgres_url), await b.open(postgres_url)
    try:
        for attempt in range(10):
            key = new(idempotency_key=f"k{attempt}", request_hash="h")
            (one, _), (two, _) = await asyncio.gather(
                first.submit(key, max_queued=100), second.submit(key, max_queued=100)
            )
            assert one.id == two.id
        assert await first.queue_depth() == 10
    finally:
        await first.close()
        await second.close()
