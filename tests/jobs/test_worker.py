"""The worker in process: how it shares the workspace lock with chat requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.agent.process import SpawnError
from app.agent.run import AgentRun, SyncFailed
from app.agent.stream import AgentResult
from app.jobs import events as events_module
from app.jobs.events import JobEvents
from app.jobs.models import NewJob
from app.jobs.sqlite import SQLiteJobStore
from app.jobs.store import JobStore
from app.jobs.worker import JobRuntime, Worker
from app.main import app
from app.workspace.pool import Workspace, WorkspacePool
from tests.conftest import TOKEN


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    opened = await SQLiteJobStore.open(tmp_path)
    yield opened
    await opened.close()


def make_worker(
    store: JobStore,
    execute: Any,
    *,
    hub: JobEvents | None = None,
    lock: asyncio.Lock | None = None,
) -> Worker:
    held = lock or asyncio.Lock()
    pool = WorkspacePool([Workspace(0, Path("unused"), lambda: held)])
    return Worker(
        store,
        hub or JobEvents(),
        execute=execute,
        pool=pool,
        max_event_bytes=2**20,
        retention=timedelta(days=1),
    )


async def wait_status(store: JobStore, job_id: str, until: Callable[[str | None], bool]) -> None:
    """Poll the job's status until `until` holds (bounded: 5 s)."""
    for _ in range(100):
        if until(await store.status(job_id)):
            return
        await asyncio.sleep(0.05)


async def test_the_worker_never_queues_on_the_lock_ahead_of_chats(store: JobStore) -> None:
    lock = asyncio.Lock()
    ran: list[str] = []

    async def execute(run: AgentRun, **_: Any) -> AgentResult:
        ran.append(run.prompt)
        await asyncio.sleep(0.5)  # long enough that a chat queued behind it would time out
        return AgentResult(ok=True, text="ok", exit_code=0)

    worker = make_worker(store, execute, lock=lock)
    try:
        await lock.acquire()  # a chat holds the workspace
        worker.start()
        await store.submit(NewJob("job", "haiku", 1, 60), max_queued=10)
        worker.wake()
        await asyncio.sleep(0.3)  # the worker has seen the job and the held lock
        assert ran == []
        # The chat ends and another arrives in the same step: it must find the
        # workspace free and take it at once, not queue behind a waiting worker.
        lock.release()
        async with asyncio.timeout(0.05):  # no new task: nothing runs in between
            await lock.acquire()
        assert ran == []  # ...before the job, not behind it
        lock.release()
        for _ in range(100):
            if ran:
                break
            await asyncio.sleep(0.05)
        assert ran == ["job"]
    finally:
        await worker.stop(grace_s=5)


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (
            SpawnError("the Claude CLI 'claude' was not found (set CLAUDE_BIN)"),
            "the Claude CLI 'claude' was not found (set CLAUDE_BIN)",
        ),
        (
            SyncFailed("git fetch failed: unreachable"),
            "git sync failed (GIT_SYNC_REQUIRED): git fetch failed: unreachable",
        ),
        (RuntimeError("boom"), "internal error: boom"),
    ],
)
async def test_a_run_that_cannot_start_fails_the_job_and_the_queue_goes_on(
    store: JobStore, raised: Exception, error: str
) -> None:
    calls: list[str] = []

    async def execute(run: AgentRun, **_: Any) -> AgentResult:
        calls.append(run.prompt)
        if run.prompt == "first":
            raise raised
        return AgentResult(ok=True, text="ok", exit_code=0)

    worker = make_worker(store, execute)
    first, _ = await store.submit(NewJob("first", "haiku", 1, 60), max_queued=10)
    second, _ = await store.submit(NewJob("second", "haiku", 1, 60), max_queued=10)
    worker.start()
    try:
        await wait_status(store, second.id, lambda status: status == "completed")
    finally:
        await worker.stop(grace_s=5)
    failed = await store.get(first.id)
    assert failed is not None
    assert (failed.status, failed.error, failed.is_error) == ("failed", error, True)
    assert calls == ["first", "second"]
    assert await store.status(second.id) == "completed"


async def test_an_outcome_the_store_cannot_take_still_ends_the_job(store: JobStore) -> None:
    async def execute(run: AgentRun, **_: Any) -> AgentResult:
        return AgentResult(ok=True, text="half an emoji: \ud83d", exit_code=0)

    worker = make_worker(store, execute)
    job, _ = await store.submit(NewJob("job", "haiku", 1, 60), max_queued=10)
    worker.start()
    try:
        await wait_status(store, job.id, lambda status: status not in ("queued", "running"))
    finally:
        await worker.stop(grace_s=5)
    ended = await store.get(job.id)
    assert ended is not None
    assert ended.status == "failed" and ended.finished_at is not None
    assert ended.error is not None
    assert ended.error.startswith("internal error: the outcome could not be stored: ")


async def test_cancelling_a_queued_job_ends_its_event_streams_at_once(
    store: JobStore, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "IDLE_POLL_S", 3600.0)  # no polling to fall back on
    hub = JobEvents()
    idle = make_worker(store, execute=None, hub=hub)  # never started: the job stays queued
    job, _ = await store.submit(NewJob("waits", "haiku", 1, 60), max_queued=10)
    monkeypatch.setattr(app.state, "jobs", JobRuntime(store, hub, idle), raising=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as c:
        # ASGITransport answers once the whole stream has been sent
        watching = asyncio.create_task(c.get(f"/jobs/{job.id}/events"))
        await asyncio.sleep(0.2)  # the stream has replayed `queued` and waits
        assert not watching.done()
        assert (await c.post(f"/jobs/{job.id}/cancel")).status_code == 200
        stream = await asyncio.wait_for(watching, 10)
    assert stream.status_code == 200
    assert stream.text.count("event: status") == 2
    assert '"status": "cancelled"' in stream.text
