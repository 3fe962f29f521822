"""The worker in process: how it shares the workspace lock with chat requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.agent.run import AgentRun
from app.agent.stream import AgentResult
from app.jobs.models import NewJob
from app.jobs.store import JobStore
from app.jobs.worker import JobEvents, Worker


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    opened = await JobStore.open(tmp_path)
    yield opened
    await opened.close()


async def test_the_worker_never_queues_on_the_lock_ahead_of_chats(store: JobStore) -> None:
    lock = asyncio.Lock()
    ran: list[str] = []

    async def execute(run: AgentRun, **_: Any) -> AgentResult:
        ran.append(run.prompt)
        await asyncio.sleep(0.5)  # long enough that a chat queued behind it would time out
        return AgentResult(ok=True, text="ok", exit_code=0)

    worker = Worker(
        store,
        JobEvents(),
        execute=execute,
        workspace_lock=lambda: lock,
        max_event_bytes=2**20,
        retention=timedelta(days=1),
    )
    try:
        await lock.acquire()  # a chat holds the workspace
        worker.start()
        await store.submit(NewJob("job", "haiku", 1, 60), max_queued=10)
        worker.wake()
        await asyncio.sleep(0.3)  # the worker has seen the job and the held lock
        assert ran == []
        lock.release()  # the chat ends; another chat arrives at once and must get in
        await asyncio.wait_for(lock.acquire(), 0.05)
        assert ran == []  # ...before the job, not behind it
        lock.release()
        for _ in range(100):
            if ran:
                break
            await asyncio.sleep(0.05)
        assert ran == ["job"]
    finally:
        await worker.stop(grace_s=5)
