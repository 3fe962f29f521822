"""Job API helpers for the benchmarks: submit, wait for an end, fill a queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench.server import TOKEN, Service

TERMINAL = {"completed", "failed", "timeout", "cancelled", "interrupted"}
POLL_S = 0.05
FILL_CONCURRENCY = 8
FILL_TIMEOUT_S = 180.0


def submit(http: httpx.Client, prompt: str, **fields: Any) -> str:
    """POST /execute; the new job's id."""
    response = http.post("/execute", json={"prompt": prompt, **fields})
    if response.status_code not in (200, 202):
        raise RuntimeError(f"POST /execute answered {response.status_code}: {response.text}")
    return str(response.json()["job_id"])


def get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET /jobs/{id}."""
    job: dict[str, Any] = http.get(f"/jobs/{job_id}").raise_for_status().json()
    return job


def wait_status(
    http: httpx.Client, job_id: str, wanted: set[str], timeout_s: float, poll_s: float = POLL_S
) -> dict[str, Any]:
    """Poll a job until its status is one of `wanted` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(http, job_id)
        if job["status"] in wanted:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:g} s")
        time.sleep(poll_s)


def run_job(
    http: httpx.Client, prompt: str, timeout_s: float = 300.0, poll_s: float = 0.2
) -> dict[str, Any]:
    """Submit a job and wait (bounded) for its end."""
    return wait_status(http, submit(http, prompt), TERMINAL, timeout_s, poll_s)


def warm_up(http: httpx.Client) -> None:
    """One short job, so that the first measured one pays no first-time costs."""
    job = run_job(http, "warm up", timeout_s=60)
    if job["status"] != "completed":
        raise RuntimeError(f"the warm-up job ended {job['status']}: {job['error']}")


def fill_queue(svc: Service, count: int, timeout_s: float) -> tuple[list[str], float]:
    """Submit `count` jobs through the API, `FILL_CONCURRENCY` at a time;
    their ids in submission order, and the seconds it took."""

    async def fill() -> list[str]:
        ids: list[str | None] = [None] * count
        headers = {"Authorization": f"Bearer {TOKEN}"}
        limits = httpx.Limits(max_connections=FILL_CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=svc.base_url, headers=headers, timeout=60, limits=limits
        ) as http:
            next_index = 0

            async def submitter() -> None:
                nonlocal next_index
                while next_index < count:
                    index = next_index
                    next_index += 1
                    response = await http.post("/execute", json={"prompt": f"queued {index}"})
                    if response.status_code != 202:
                        raise RuntimeError(
                            f"POST /execute answered {response.status_code}: {response.text}"
                        )
                    ids[index] = str(response.json()["job_id"])

            await asyncio.gather(*(submitter() for _ in range(FILL_CONCURRENCY)))
        return [i for i in ids if i is not None]

    start = time.monotonic()
    ids = asyncio.run(asyncio.wait_for(fill(), timeout_s))
    return ids, time.monotonic() - start


def fill_store(
    prompts: list[str],
    *,
    data_dir: Path | None = None,
    database_url: str | None = None,
    concurrency: int = 1,
) -> float:
    """Write queued jobs with the store's own code (SQLite in `data_dir`, or
    PostgreSQL at `database_url`), in order, before a service opens it: far
    faster than the API. Returns the seconds it took."""
    from app.jobs.models import NewJob

    async def fill() -> None:
        store: Any
        if database_url is not None:
            from app.jobs.postgres import PostgresJobStore

            store = await PostgresJobStore.open(database_url)
        else:
            from app.jobs.sqlite import SQLiteJobStore

            assert data_dir is not None
            store = await SQLiteJobStore.open(data_dir)

        def new(prompt: str) -> Any:
            return NewJob(
                prompt=prompt,
                model="sonnet",
                max_budget_usd=5.0,
                timeout_seconds=2700.0,
                submitted_by="default",
            )

        try:
            # the first in order (a holder, say), then the rest, several at a
            # time where the store has a pool (PostgreSQL)
            await store.submit(new(prompts[0]), max_queued=10**9)
            rest = iter(prompts[1:])

            async def submitter() -> None:
                for prompt in rest:
                    await store.submit(new(prompt), max_queued=10**9)

            await asyncio.gather(*(submitter() for _ in range(concurrency)))
        finally:
            await store.close()

    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    asyncio.run(asyncio.wait_for(fill(), FILL_TIMEOUT_S))
    return time.monotonic() - start
