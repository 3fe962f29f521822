"""The job store backends, for tests that run on both: SQLite, and PostgreSQL
on a throwaway server (tests/pgserver.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.jobs.postgres import PostgresJobStore
from app.jobs.sqlite import DATABASE_NAME, SQLiteJobStore
from app.jobs.store import JobStore

OWNER = "test-instance"
BACKENDS = ["sqlite", "postgres"]

# Runs one statement on the store's database, outside the store: `?` marks
# the arguments (as SQLite writes them).
Raw = Callable[..., Awaitable[list[tuple[Any, ...]]]]


def raw_sqlite(path: Path) -> Raw:
    async def run(statement: str, *args: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as conn:
            return conn.execute(statement, args).fetchall()

    return run


def raw_postgres(url: str) -> Raw:
    async def run(statement: str, *args: object) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cursor = await conn.execute(statement.replace("?", "%s"), args)  # type: ignore[arg-type]
            return await cursor.fetchall() if cursor.description else []

    return run


async def open_backend(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[JobStore, Raw, str]:
    """A fresh store of `backend`, a way to reach its database, and what names it
    (DATA_DIR for SQLite, the URL for PostgreSQL)."""
    if backend == "sqlite":
        data = tmp_path / "data"
        return await SQLiteJobStore.open(data), raw_sqlite(data / DATABASE_NAME), str(data)
    url: str = request.getfixturevalue("postgres_url")
    return await PostgresJobStore.open(url), raw_postgres(url), url


@dataclass
class Backend:
    """A store under test, its kind, and its database reached directly."""

    name: str
    store: JobStore
    raw: Raw
    where: str

    async def age_idempotency_keys(self) -> None:
        """Move every Idempotency-Key out of its 24-hour window."""
        if self.name == "sqlite":
            await self.raw("UPDATE jobs SET created_at = '2000-01-01T00:00:00.000000Z'")
        else:
            await self.raw("UPDATE idempotency_keys SET created_at = '2000-01-01T00:00:00Z'")


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each test that takes it runs on SQLite and on PostgreSQL."""
    store, raw, where = await open_backend(request.param, tmp_path, request)
    try:
        yield Backend(request.param, store, raw, where)
    finally:
        await store.close()
