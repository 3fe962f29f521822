"""The embedded job store: SQLite in DATA_DIR, one connection, one writer thread.

Every call runs on a single dedicated thread, so there is one writer and each
method is one explicit transaction. WAL mode lets readers in other processes
(backups, `sqlite3` at a shell) look without blocking it.

One read takes a shortcut: `get` (a job by its id: `GET /jobs/{id}`, what
pollers ask most) reads on the event loop through a second, query-only
connection that never waits for a lock, in one read transaction (one
snapshot). A handful of index lookups cost less than the hop to the store
thread; anything that would wait (a lock, a busy file) goes the usual way.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from app.jobs.models import (
    Delivery,
    EventState,
    Job,
    JobEvent,
    JobStatus,
    NewJob,
    Outcome,
    iso,
    utc_now,
)
from app.jobs.store import (
    DEFAULT_WEBHOOK_RETRY_S,
    EVENT_PAGE_BYTES,
    IDEMPOTENCY_WINDOW,
    DatabaseError,
    IdempotencyConflict,
    LeaseLost,
    Listener,
    Notice,
    QueueFull,
    StoreUnavailable,
    status_event,
)

T = TypeVar("T")

DATABASE_NAME = "jobs.sqlite3"
# The start-up integrity check gives up (and says so) past this long: a huge
# database must not keep the service from starting.
QUICK_CHECK_BUDGET_S = 10.0
_TERMINAL = tuple(s.value for s in JobStatus if s.terminal)

# Each entry moves the schema one version up; `PRAGMA user_version` says where it is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        num INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        prompt TEXT NOT NULL,
        agent TEXT,
        model TEXT NOT NULL,
        max_budget_usd REAL NOT NULL,
        timeout_seconds REAL NOT NULL,
        metadata TEXT,
        resume_session_id TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        result TEXT,
        is_error INTEGER,
        error TEXT,
        session_id TEXT,
        total_cost_usd REAL,
        num_turns INTEGER,
        duration_ms INTEGER,
        usage TEXT,
        permission_denials TEXT,
        exit_code INTEGER,
        stderr_tail TEXT,
        pgid INTEGER,
        boot_id TEXT,
        event_bytes INTEGER NOT NULL DEFAULT 0,
        events_truncated INTEGER NOT NULL DEFAULT 0,
        events_dropped INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status_num ON jobs (status, num);
    CREATE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE jobs ADD COLUMN git TEXT;
    ALTER TABLE jobs ADD COLUMN leader_start INTEGER;
    """,
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    ALTER TABLE jobs ADD COLUMN slot INTEGER;
    """,
    """
    ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
    """,
    """
    ALTER TABLE jobs ADD COLUMN instance TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at TEXT;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN request_id TEXT;
    """,
    """
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters SELECT 'queued', COUNT(*) FROM jobs WHERE status = 'queued';
    """,
    """
    ALTER TABLE jobs ADD COLUMN options TEXT;
    ALTER TABLE jobs ADD COLUMN structured_output TEXT;
    ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        created_at TEXT NOT NULL,
        give_up_at TEXT NOT NULL,
        next_attempt_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        delivered_at TEXT,
        failed INTEGER NOT NULL DEFAULT 0,
        payload TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
        WHERE delivered_at IS NULL AND failed = 0;
    CREATE INDEX deliveries_job ON deliveries (job_id);
    """,
)

_JSON_COLUMNS = ("metadata", "usage", "permission_denials", "git", "options", "structured_output")
_JOB_FIELDS = frozenset(Job.__dataclass_fields__)


class SQLiteJobStore:
    """Jobs and their events in `DATA_DIR/jobs.sqlite3`. Open with `open`; close when done."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        webhook_retry_s: float = DEFAULT_WEBHOOK_RETRY_S,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        self._conn = conn
        self._executor = executor
        self._reader = reader  # the event loop's own, for `get`
        self._webhook_retry_s = webhook_retry_s
        self._write_error: str | None = None
        self._listeners: list[Listener] = []

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        check: bool = False,
        webhook_retry_s: float = DEFAULT_WEBHOOK_RETRY_S,
    ) -> SQLiteJobStore:
        """Open (creating or migrating) the database; with `check`, verify its
        integrity first. Raises DatabaseError."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="job-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect, data_dir / DATABASE_NAME, check)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor, webhook_retry_s, reader=_reader(data_dir / DATABASE_NAME))

    @property
    def write_error(self) -> str | None:
        return self._write_error

    @property
    def shared(self) -> bool:
        return False  # DATA_DIR's lock: one process at a time

    def listen(self, listener: Listener) -> None:
        # One process: only cancels need telling (the rest is told in process).
        self._listeners.append(listener)

    def _tell(self, notice: Notice, job_id: str) -> None:
        for listener in self._listeners:
            listener(notice, job_id)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(self._conn.close)
        self._executor.shutdown(wait=True)

    async def probe(self) -> None:
        def write() -> None:
            with _transaction(self._conn):
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)", (utc_now(),)
                )

        await self._write(write)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a writing transaction; a failure of the database (a full disk, an
        I/O error) is StoreUnavailable, and is remembered until a write that
        changed rows succeeds (one that matched none, such as cancelling a job
        that is not queued, wrote nothing, and proves nothing)."""
        try:
            outcome: tuple[T, bool] = await self._run(self._changing, fn, *args)
        except sqlite3.OperationalError as exc:
            if not _is_storage_failure(exc):
                raise
            self._write_error = f"the job database cannot be written: {exc}"
            raise StoreUnavailable(self._write_error) from exc
        result, wrote = outcome
        if wrote:
            self._write_error = None
        return result

    def _changing(self, fn: Callable[..., T], *args: Any) -> tuple[T, bool]:
        """`fn(*args)`, and whether it changed any row (on the store's thread)."""
        before = self._conn.total_changes
        return fn(*args), self._conn.total_changes != before

    # -- submitting and reading --------------------------------------------

    async def submit(self, new: NewJob, *, max_queued: int) -> tuple[Job, bool]:
        return await self._write(self._submit, new, max_queued)

    def _submit(self, new: NewJob, max_queued: int) -> tuple[Job, bool]:
        with _transaction(self._conn):
            if new.idempotency_key is not None:
                since = iso(datetime.now(UTC) - IDEMPOTENCY_WINDOW)
                found = self._conn.execute(
                    "SELECT id, request_hash FROM jobs WHERE idempotency_key = ? "
                    "AND created_at >= ? ORDER BY num DESC LIMIT 1",
                    (new.idempotency_key, since),
                ).fetchone()
                if found is not None:
                    if found["request_hash"] != new.request_hash:
                        raise IdempotencyConflict
                    job = self._get(found["id"])
                    assert job is not None
                    return job, False
            if not self._conn.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'queued' AND value < ?",
                (max_queued,),
            ).rowcount:
                raise QueueFull
            job_id = str(uuid.uuid4())
            now = utc_now()
            self._conn.execute(
                "INSERT INTO jobs (id, status, prompt, agent, model, max_budget_usd, "
                "timeout_seconds, metadata, resume_session_id, session_id, idempotency_key, "
                "request_hash, submitted_by, request_id, options, webhook_url, created_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    new.prompt,
                    new.agent,
                    new.model,
                    new.max_budget_usd,
                    new.timeout_seconds,
                    _dump(new.metadata),
                    new.resume_session_id,
                    new.resume_session_id,
                    new.idempotency_key,
                    new.request_hash,
                    new.submitted_by,
                    new.request_id,
                    _dump(new.options),
                    new.webhook_url,
                    now,
                ),
            )
            self._status_event(job_id, JobStatus.QUEUED, now)
            job = self._get(job_id)
            assert job is not None
            return job, True

    async def get(self, job_id: str) -> Job | None:
        reader = self._reader
        if reader is not None:
            try:
                reader.execute("BEGIN")  # one snapshot for the few reads below
                try:
                    return self._get(job_id, reader)
                finally:
                    reader.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass  # it would wait (locked, busy): the store thread may
        return await self._run(self._get, job_id)

    def _get(self, job_id: str, conn: sqlite3.Connection | None = None) -> Job | None:
        conn = conn or self._conn
        found = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found is None:
            return None
        queued = found["status"] == JobStatus.QUEUED
        position = self._position(found["num"], conn) if queued else None
        webhook = self._webhook(job_id, conn) if found["webhook_url"] is not None else None
        return _job(found, position, webhook)

    def _position(self, num: int, conn: sqlite3.Connection | None = None) -> int:
        """Queued jobs ahead of job `num`, counted on whichever side of it is
        shorter (a count over 10,000 index entries is what a page cannot afford)."""
        conn = conn or self._conn
        total = self._queued(conn)
        # Two subqueries: SQLite finds a lone MIN or MAX in the index at once,
        # but scans every queued row for `SELECT MIN(num), MAX(num)`.
        first, last = conn.execute(
            "SELECT (SELECT MIN(num) FROM jobs WHERE status = 'queued'), "
            "(SELECT MAX(num) FROM jobs WHERE status = 'queued')"
        ).fetchone()
        if first is None or num - first <= last - num:
            (ahead,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND num < ?", (num,)
            ).fetchone()
            return int(ahead)
        (behind,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND num > ?", (num,)
        ).fetchone()
        return total - 1 - int(behind)

    def _queued(self, conn: sqlite3.Connection | None = None) -> int:
        (queued,) = (
            (conn or self._conn)
            .execute("SELECT value FROM counters WHERE name = 'queued'")
            .fetchone()
        )
        return int(queued)

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Job], int | None]:
        return await self._run(self._list, status, limit, before)

    def _list(
        self, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Job], int | None]:
        sql = "SELECT * FROM jobs WHERE 1 = 1"
        args: list[Any] = []
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        if before is not None:
            sql += " AND num < ?"
            args.append(before)
        sql += " ORDER BY num DESC LIMIT ?"
        args.append(limit + 1)
        found = self._conn.execute(sql, args).fetchall()
        more = len(found) > limit
        found = found[:limit]
        position: dict[int, int] = {}
        nums = [r["num"] for r in found if r["status"] == JobStatus.QUEUED]
        if nums:  # one count for the page, then its own rows
            ahead = self._position(min(nums))
            between = self._conn.execute(
                "SELECT num FROM jobs WHERE status = 'queued' AND num BETWEEN ? AND ? ORDER BY num",
                (min(nums), max(nums)),
            ).fetchall()
            position = {num: ahead + i for i, (num,) in enumerate(between)}
        jobs = [
            _job(r, position.get(r["num"]), self._webhook(r["id"]) if r["webhook_url"] else None)
            for r in found
        ]
        return jobs, (jobs[-1].num if more else None)

    async def status(self, job_id: str) -> JobStatus | None:
        return await self._run(self._status, job_id)

    def _status(self, job_id: str) -> JobStatus | None:
        found = self._conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if found is None else JobStatus(found["status"])

    async def has_queued(self) -> bool:
        return await self._run(
            lambda: (
                self._conn.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone()
                is not None
            )
        )

    async def queue_depth(self) -> int:
        return await self._run(self._queued)

    async def cost_since(self, since: str) -> float:
        def total() -> float:
            (cost,) = self._conn.execute(
                "SELECT COALESCE(SUM(total_cost_usd), 0) FROM jobs WHERE finished_at >= ?",
                (since,),
            ).fetchone()
            return float(cost)

        return await self._run(total)

    async def events(
        self, job_id: str, *, after: int, limit: int, max_bytes: int = EVENT_PAGE_BYTES
    ) -> list[JobEvent]:
        return await self._run(self._events, job_id, after, limit, max_bytes)

    def _events(self, job_id: str, after: int, limit: int, max_bytes: int) -> list[JobEvent]:
        cursor = self._conn.execute(
            "SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        page: list[JobEvent] = []
        size = 0
        for row in cursor:
            page.append(JobEvent(row["seq"], row["type"], row["data"]))
            size += len(row["data"])
            if size >= max_bytes:
                break
        cursor.close()
        return page

    # -- the worker's side ---------------------------------------------------

    async def claim_next(self, *, slot: int, owner: str, lease_s: float) -> Job | None:
        return await self._write(self._claim_next, slot, owner, lease_s)

    def _claim_next(self, slot: int, owner: str, lease_s: float) -> Job | None:
        with _transaction(self._conn):
            now = utc_now()
            found = self._conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, slot = ?, instance = ?, "
                "lease_expires_at = ? WHERE num = "
                "(SELECT num FROM jobs WHERE status = 'queued' ORDER BY num LIMIT 1) "
                "RETURNING id",
                (now, slot, owner, _after(lease_s)),
            ).fetchone()
            if found is None:
                return None
            self._conn.execute("UPDATE counters SET value = value - 1 WHERE name = 'queued'")
            self._status_event(found["id"], JobStatus.RUNNING, now)
            return self._get(found["id"])

    async def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> set[str]:
        def renew() -> set[str]:
            marks = ",".join("?" * len(job_ids))
            with _transaction(self._conn):
                rows = self._conn.execute(
                    f"UPDATE jobs SET lease_expires_at = ? WHERE id IN ({marks}) "
                    "AND instance = ? AND status = 'running' RETURNING id",
                    (_after(lease_s), *job_ids, owner),
                ).fetchall()
            return {row["id"] for row in rows}

        if not job_ids:
            return set()
        return await self._write(renew)

    async def set_process_group(
        self, job_id: str, pgid: int, boot_id: str | None, leader_start: int | None
    ) -> None:
        def update() -> None:
            with _transaction(self._conn):
                self._conn.execute(
                    "UPDATE jobs SET pgid = ?, boot_id = ?, leader_start = ? WHERE id = ?",
                    (pgid, boot_id, leader_start, job_id),
                )

        await self._write(update)

    async def event_state(self, job_id: str) -> EventState:
        return await self._run(self._event_state, job_id)

    def _event_state(self, job_id: str) -> EventState:
        found = self._conn.execute(
            "SELECT event_bytes, events_truncated, events_dropped FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if found is None:
            return EventState(self._last_seq(job_id))
        used, truncated, dropped = found
        return EventState(self._last_seq(job_id), used, bool(truncated), dropped)

    async def append_events(
        self,
        job_id: str,
        events: Sequence[JobEvent],
        state: EventState,
        *,
        owner: str,
        session_id: str | None = None,
    ) -> None:
        def append() -> None:
            with _transaction(self._conn):
                held = self._conn.execute(
                    "UPDATE jobs SET event_bytes = ?, events_truncated = ?, events_dropped = ?, "
                    "session_id = COALESCE(session_id, ?) "
                    "WHERE id = ? AND instance = ? AND status = 'running'",
                    (state.used_bytes, state.truncated, state.dropped, session_id, job_id, owner),
                ).rowcount
                if not held:
                    raise LeaseLost(job_id)
                self._conn.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?)",
                    [(job_id, *event) for event in events],
                )

        await self._write(append)

    async def finish(self, job_id: str, outcome: Outcome, *, owner: str) -> bool:
        return await self._write(self._finish, job_id, outcome, owner)

    def _finish(self, job_id: str, outcome: Outcome, owner: str) -> bool:
        with _transaction(self._conn):
            now = utc_now()
            updated = self._conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, is_error = ?, "
                "error = ?, session_id = COALESCE(?, session_id), total_cost_usd = ?, "
                "num_turns = ?, duration_ms = ?, usage = ?, permission_denials = ?, "
                "exit_code = ?, stderr_tail = ?, git = ?, structured_output = ? "
                "WHERE id = ? AND status = 'running' AND instance = ?",
                (
                    outcome.status.value,
                    now,
                    outcome.result,
                    outcome.is_error,
                    outcome.error,
                    outcome.session_id,
                    outcome.total_cost_usd,
                    outcome.num_turns,
                    outcome.duration_ms,
                    _dump(outcome.usage),
                    _dump(outcome.permission_denials),
                    outcome.exit_code,
                    outcome.stderr_tail,
                    _dump(outcome.git),
                    _dump(outcome.structured_output),
                    job_id,
                    owner,
                ),
            ).rowcount
            if updated:
                self._status_event(job_id, outcome.status, now, outcome.error)
            return bool(updated)

    async def cancel_queued(self, job_id: str) -> bool:
        return await self._write(self._cancel_queued, job_id)

    def _cancel_queued(self, job_id: str) -> bool:
        with _transaction(self._conn):
            now = utc_now()
            updated = self._conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, is_error = 1, "
                "error = 'cancelled before it started' WHERE id = ? AND status = 'queued'",
                (now, job_id),
            ).rowcount
            if updated:
                self._conn.execute("UPDATE counters SET value = value - 1 WHERE name = 'queued'")
                self._status_event(job_id, JobStatus.CANCELLED, now, "cancelled before it started")
            return bool(updated)

    async def request_cancel(self, job_id: str) -> bool:
        def request() -> bool:
            with _transaction(self._conn):
                return bool(
                    self._conn.execute(
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                        (job_id,),
                    ).rowcount
                )

        requested = await self._write(request)
        if requested:
            self._tell("cancel", job_id)
        return requested

    async def cancel_requests(self, owner: str) -> list[str]:
        def pending() -> list[str]:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE status = 'running' AND instance = ? "
                "AND cancel_requested = 1",
                (owner,),
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._run(pending)

    async def interrupt_running(self, error: str, *, owner: str | None) -> list[Job]:
        where = "status = 'running'" + ("" if owner is None else " AND instance = ?")
        args = () if owner is None else (owner,)
        return await self._write(self._interrupt, error, where, args)

    async def interrupt_expired(self, error: str, *, except_owner: str) -> list[Job]:
        where = (
            "status = 'running' AND lease_expires_at < ? AND (instance IS NULL OR instance != ?)"
        )
        return await self._write(self._interrupt, error, where, (utc_now(), except_owner))

    def _interrupt(self, error: str, where: str, args: tuple[str, ...]) -> list[Job]:
        with _transaction(self._conn):
            now = utc_now()
            ids = [
                r["id"]
                for r in self._conn.execute(
                    "UPDATE jobs SET status = 'interrupted', finished_at = ?, is_error = 1, "
                    "error = ?, session_id = COALESCE(session_id, ("
                    "  SELECT CASE WHEN json_valid(e.data)"
                    "  THEN json_extract(e.data, '$.session_id') END"
                    "  FROM events e WHERE e.job_id = jobs.id AND e.type = 'system'"
                    "  ORDER BY e.seq LIMIT 1"
                    f")) WHERE {where} RETURNING id",
                    (now, error, *args),
                ).fetchall()
            ]
            for job_id in ids:
                self._status_event(job_id, JobStatus.INTERRUPTED, now, error)
            jobs = [self._get(job_id) for job_id in ids]
            return [job for job in jobs if job is not None]

    async def prune(self, older_than: timedelta) -> int:
        return await self._write(self._prune, older_than)

    def _prune(self, older_than: timedelta) -> int:
        cutoff = iso(datetime.now(UTC) - older_than)
        marks = ",".join("?" * len(_TERMINAL))
        with _transaction(self._conn):
            ids = [
                r["id"]
                for r in self._conn.execute(
                    f"SELECT id FROM jobs WHERE finished_at < ? AND status IN ({marks})",
                    (cutoff, *_TERMINAL),
                ).fetchall()
            ]
            for job_id in ids:
                self._conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                self._conn.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
                self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return len(ids)

    # -- helpers (on the store's thread, inside a transaction) ---------------

    def _last_seq(self, job_id: str) -> int:
        (last,) = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(last)

    def _status_event(
        self, job_id: str, status: JobStatus, at: str, error: str | None = None
    ) -> None:
        self._conn.execute(
            "INSERT INTO events VALUES (?, ?, 'status', ?)",
            (job_id, self._last_seq(job_id) + 1, status_event(job_id, status, at, error)),
        )
        if status.terminal:  # its webhook is due, stored with the end itself
            self._conn.execute(
                "INSERT INTO deliveries (id, job_id, url, created_at, give_up_at, "
                "next_attempt_at) SELECT ?, id, webhook_url, ?, ?, ? FROM jobs "
                "WHERE id = ? AND webhook_url IS NOT NULL",
                (str(uuid.uuid4()), at, _after(self._webhook_retry_s), at, job_id),
            )

    def _webhook(
        self, job_id: str, conn: sqlite3.Connection | None = None
    ) -> dict[str, Any] | None:
        found = (
            (conn or self._conn)
            .execute(
                "SELECT url, attempts, last_status, last_error, delivered_at, next_attempt_at, "
                "failed FROM deliveries WHERE job_id = ? ORDER BY created_at DESC LIMIT 1",
                (job_id,),
            )
            .fetchone()
        )
        if found is None:
            return None
        webhook = dict(found)
        webhook["failed"] = bool(webhook["failed"])
        if webhook["delivered_at"] or webhook["failed"]:
            webhook["next_attempt_at"] = None
        return webhook

    # -- webhook deliveries --------------------------------------------------

    async def due_deliveries(self, *, limit: int, hold_s: float) -> list[Delivery]:
        def claim() -> list[Delivery]:
            with _transaction(self._conn):
                rows = self._conn.execute(
                    "UPDATE deliveries SET next_attempt_at = ? WHERE id IN ("
                    "  SELECT id FROM deliveries WHERE delivered_at IS NULL AND failed = 0 "
                    "  AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
                    ") RETURNING id, job_id, url, attempts, created_at, give_up_at, payload",
                    (_after(hold_s), utc_now(), limit),
                ).fetchall()
            return [Delivery(**dict(row)) for row in rows]

        return await self._write(claim)

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        payload: str,
        status: int | None,
        error: str | None,
        delivered: bool,
        retry_at: str | None,
    ) -> None:
        def record() -> None:
            with _transaction(self._conn):
                self._conn.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, payload = ?, "
                    "last_status = ?, last_error = ?, delivered_at = ?, failed = ?, "
                    "next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ?",
                    (
                        payload,
                        status,
                        error,
                        utc_now() if delivered else None,
                        not delivered and retry_at is None,
                        retry_at,
                        delivery_id,
                    ),
                )

        await self._write(record)


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:  # a failed COMMIT may have rolled back already
            self._conn.execute("ROLLBACK")


def _is_storage_failure(exc: sqlite3.OperationalError) -> bool:
    """A failure of the disk or the file, not of the SQL (which is a bug to raise)."""
    code = getattr(exc, "sqlite_errorcode", None)
    storage = {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    }
    if isinstance(code, int):
        return code & 0xFF in storage
    return True


def _reader(path: Path) -> sqlite3.Connection | None:
    """A query-only connection for the event loop that never waits for a lock
    (None if it cannot be had: the store thread then reads everything)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        return None
    return conn


def connect(path: Path, check: bool = False) -> sqlite3.Connection:
    """Open the database at `path`, migrated; with `check`, refuse a damaged one.

    Raises DatabaseError with a message that names the file and what to do.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot create DATA_DIR {path.parent}: {exc.strerror}") from None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open the job database {path}: {exc}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if check:
            _quick_check(conn, path)
        _migrate(conn, path)
        if check:  # a read-only file opens, and only its first write would fail
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (utc_now(),))
    except DatabaseError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise DatabaseError(_open_failure(path, exc)) from None
    return conn


def _open_failure(path: Path, exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        return (
            f"the job database {path} cannot be written ({exc}); give the service's user "
            "write access to it and to its directory"
        )
    if code in (sqlite3.SQLITE_FULL,):
        return f"the job database {path} cannot be written: {exc}; free some disk space"
    return (
        f"the job database {path} is damaged ({exc}); stop the service, move the file "
        "aside and recover what can be saved (README: Recovering a damaged job database)"
    )


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """`PRAGMA quick_check`, given up (with a warning in its place) past its budget."""
    deadline = time.monotonic() + QUICK_CHECK_BUDGET_S
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        found = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return  # too big to check in time: it is used as it is
        raise
    finally:
        conn.set_progress_handler(None, 0)
    if found != ["ok"]:
        raise DatabaseError(
            f"the job database {path} is damaged ({'; '.join(found[:3])}); stop the service, "
            "move the file aside and recover what can be saved "
            "(README: Recovering a damaged job database)"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise DatabaseError(
            f"the job database {path} is at schema {version}, newer than this service knows "
            f"({len(MIGRATIONS)}); upgrade the service"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")


def _job(
    found: sqlite3.Row, queue_position: int | None, webhook: dict[str, Any] | None = None
) -> Job:
    # zip, not dict(found): a Row finds each key by a scan of its columns
    row = {key: value for key, value in zip(found.keys(), found, strict=True) if key in _JOB_FIELDS}
    for column in _JSON_COLUMNS:
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    if row.get("is_error") is not None:
        row["is_error"] = bool(row["is_error"])
    row["status"] = JobStatus(row["status"])
    row["events_truncated"] = bool(row["events_truncated"])
    return Job(**row, queue_position=queue_position, webhook=webhook)


def _after(seconds: float) -> str:
    """Now plus `seconds`, as the text the leases are compared in."""
    return iso(datetime.now(UTC) + timedelta(seconds=seconds))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def check_database(data_dir: Path) -> None:
    """At start-up, before serving: open the database (creating or migrating
    it), verify its integrity (bounded), close it. Raises DatabaseError."""
    connect(data_dir / DATABASE_NAME, check=True).close()
