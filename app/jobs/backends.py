"""Which job store a service uses: PostgreSQL when DATABASE_URL names one,
else SQLite in DATA_DIR."""

from __future__ import annotations

import asyncio
import secrets
import socket
from functools import lru_cache

from app.jobs.postgres import PostgresJobStore
from app.jobs.sqlite import SQLiteJobStore, check_database
from app.jobs.store import JobStore
from app.settings import Settings


async def open_store(settings: Settings) -> JobStore:
    """Open the configured store. Raises DatabaseError."""
    retry_s = settings.webhook_retry_seconds
    if settings.database is not None:
        return await PostgresJobStore.open(settings.database, webhook_retry_s=retry_s)
    return await SQLiteJobStore.open(settings.data_dir, webhook_retry_s=retry_s)


def check_store(settings: Settings) -> None:
    """At start-up, before serving: the store can be opened (created or
    migrated; SQLite's file checked). Raises DatabaseError."""
    if settings.database is None:
        check_database(settings.data_dir)
        return

    async def check() -> None:
        store = await PostgresJobStore.open(settings.database or "")
        await store.close()

    asyncio.run(check())


def instance_id(settings: Settings) -> str:
    """This process's name in a shared store: INSTANCE_ID, else the host name
    and a random suffix, new at every start (kept for the process's life)."""
    return settings.instance_id or _generated()


@lru_cache(maxsize=1)
def _generated() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"
