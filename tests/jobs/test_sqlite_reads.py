"""SQLite's `get` reads on the event loop (app/jobs/sqlite.py): never behind the
store thread, and through the store thread whenever a read would wait."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.jobs.models import NewJob
from app.jobs.sqlite import SQLiteJobStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteJobStore]:
    opened = await SQLiteJobStore.open(tmp_path)
    yield opened
    await opened.close()


async def test_a_job_is_read_while_the_store_thread_is_held(store: SQLiteJobStore) -> None:
    first, _ = await store.submit(NewJob("first", "haiku", 1, 60), max_queued=10)
    second, _ = await store.submit(NewJob("second", "haiku", 1, 60), max_queued=10)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:  # a long write, as a busy disk makes one
        held.set()
        release.wait(30)

    blocker = asyncio.get_running_loop().run_in_executor(store._executor, hold)
    try:
        assert await asyncio.to_thread(held.wait, 10)
        read = await asyncio.wait_for(store.get(second.id), 5)
    finally:
        release.set()
        await blocker
    assert read is not None and read.id == second.id
    assert read.queue_position == 1 and (await store.get(first.id)).queue_position == 0  # type: ignore[union-attr]


class _Locked:
    """A connection whose every statement finds the database locked."""

    def execute(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


async def test_a_read_that_would_wait_goes_through_the_store_thread(
    store: SQLiteJobStore,
) -> None:
    job, _ = await store.submit(NewJob("a job", "haiku", 1, 60), max_queued=10)
    on_the_loop = await store.get(job.id)
    store._reader = _Locked()  # type: ignore[assignment]
    assert await store.get(job.id) == on_the_loop
    assert await store.get("no-such-job") is None
