"""The job store: SQLite in DATA_DIR, one connection, one writer thread.

Every call runs on a single dedicated thread, so there is one writer and each
method is one explicit transaction. WAL mode lets readers in other processes
(backups, `sqlite3` at a shell) look without blocking it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from app.jobs.models import JobStatus, NewJob, Outcome, utc_now

T = TypeVar("T")

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# An event page held for one stream: rows up to about this much data.
EVENT_PAGE_BYTES = 256 * 1024
_TERMINAL = tuple(s.value for s in JobStatus if s.terminal)
_ALWAYS_KEPT = ("status", "result")

# Each entry moves the schema one version up; `PRAGMA user_version` says where it is.
_MIGRATIONS: tuple[str, ...] = (
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
)

_JSON_COLUMNS = ("metadata", "usage", "permission_denials", "git")


class QueueFull(Exception):
    """MAX_QUEUE_DEPTH jobs are already queued."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used, within its window, for a different request."""


Row = dict[str, Any]


class JobStore:
    """Jobs and their events. Open with `JobStore.open(DATA_DIR)`; close when done."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor

    @classmethod
    async def open(cls, data_dir: Path) -> JobStore:
        executor = ThreadPoolExecutor(1, thread_name_prefix="job-store")
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, _connect, data_dir / "jobs.sqlite3")
        return cls(conn, executor)

    async def close(self) -> None:
        await self._run(self._conn.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- submitting and reading --------------------------------------------

    async def submit(self, new: NewJob, *, max_queued: int) -> tuple[Row, bool]:
        """Store a queued job; or, for a known Idempotency-Key, return that job.

        Returns the job and whether it was created now.
        """
        return await self._run(self._submit, new, max_queued)

    def _submit(self, new: NewJob, max_queued: int) -> tuple[Row, bool]:
        with _transaction(self._conn):
            if new.idempotency_key is not None:
                since = _iso(datetime.now(UTC) - IDEMPOTENCY_WINDOW)
                found = self._conn.execute(
                    "SELECT id, request_hash FROM jobs WHERE idempotency_key = ? "
                    "AND created_at >= ? ORDER BY num DESC LIMIT 1",
                    (new.idempotency_key, since),
                ).fetchone()
                if found is not None:
                    if found["request_hash"] != new.request_hash:
                        raise IdempotencyConflict
                    row = self._get(found["id"])
                    assert row is not None
                    return row, False
            (queued,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
            ).fetchone()
            if queued >= max_queued:
                raise QueueFull
            job_id = str(uuid.uuid4())
            now = utc_now()
            self._conn.execute(
                "INSERT INTO jobs (id, status, prompt, agent, model, max_budget_usd, "
                "timeout_seconds, metadata, resume_session_id, session_id, idempotency_key, "
                "request_hash, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    now,
                ),
            )
            self._status_event(job_id, JobStatus.QUEUED, now)
            row = self._get(job_id)
            assert row is not None
            return row, True

    async def get(self, job_id: str) -> Row | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> Row | None:
        found = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found is None:
            return None
        row = _decode(found)
        row["queue_position"] = None
        if row["status"] == JobStatus.QUEUED:
            (ahead,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND num < ?", (row["num"],)
            ).fetchone()
            row["queue_position"] = ahead
        return row

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Row], int | None]:
        """Newest first; returns the page and the cursor of the next one (or None)."""
        return await self._run(self._list, status, limit, before)

    def _list(
        self, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Row], int | None]:
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
        rows = [_decode(r) for r in self._conn.execute(sql, args).fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        for row in rows:
            row["queue_position"] = None
        if rows and any(r["status"] == JobStatus.QUEUED for r in rows):
            queued = [
                num
                for (num,) in self._conn.execute(
                    "SELECT num FROM jobs WHERE status = 'queued' ORDER BY num"
                ).fetchall()
            ]
            position = {num: i for i, num in enumerate(queued)}
            for row in rows:
                row["queue_position"] = position.get(row["num"])
        return rows, (rows[-1]["num"] if more else None)

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

    async def events(
        self, job_id: str, *, after: int, limit: int, max_bytes: int = EVENT_PAGE_BYTES
    ) -> list[tuple[int, str, str]]:
        """Events with `seq` > `after`, in order: (seq, type, data); at most
        `limit` of them, and no more once `max_bytes` of data is reached (at
        least one), so a page held for a slow reader stays small."""
        return await self._run(self._events, job_id, after, limit, max_bytes)

    def _events(
        self, job_id: str, after: int, limit: int, max_bytes: int
    ) -> list[tuple[int, str, str]]:
        cursor = self._conn.execute(
            "SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        page, size = [], 0
        for row in cursor:
            page.append((row["seq"], row["type"], row["data"]))
            size += len(row["data"])
            if size >= max_bytes:
                break
        cursor.close()
        return page

    # -- the worker's side ---------------------------------------------------

    async def claim_next(self) -> Row | None:
        """Atomically move the oldest queued job to `running` and return it."""
        return await self._run(self._claim_next)

    def _claim_next(self) -> Row | None:
        with _transaction(self._conn):
            now = utc_now()
            found = self._conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE num = "
                "(SELECT num FROM jobs WHERE status = 'queued' ORDER BY num LIMIT 1) "
                "RETURNING id",
                (now,),
            ).fetchone()
            if found is None:
                return None
            self._status_event(found["id"], JobStatus.RUNNING, now)
            return self._get(found["id"])

    async def set_process_group(
        self, job_id: str, pgid: int, boot_id: str | None, leader_start: int | None
    ) -> None:
        """Remember the run's process group, to kill it after a crash of the service."""

        def update() -> None:
            with _transaction(self._conn):
                self._conn.execute(
                    "UPDATE jobs SET pgid = ?, boot_id = ?, leader_start = ? WHERE id = ?",
                    (pgid, boot_id, leader_start, job_id),
                )

        await self._run(update)

    async def append_events(
        self, job_id: str, batch: Iterable[tuple[str, str]], *, max_bytes: int
    ) -> None:
        """Append stream events in order, keeping the job's event storage under `max_bytes`.

        Past the cap, one `truncated` marker is stored and later events are
        dropped, except status changes and the CLI's `result`.
        """
        await self._run(self._append_events, job_id, list(batch), max_bytes)

    def _append_events(self, job_id: str, batch: list[tuple[str, str]], max_bytes: int) -> None:
        with _transaction(self._conn):
            state = self._conn.execute(
                "SELECT event_bytes, events_truncated, events_dropped FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if state is None:
                return
            used, truncated, dropped = state
            seq = self._last_seq(job_id)
            rows = []
            for kind, data in batch:
                size = len(data.encode())
                if kind not in _ALWAYS_KEPT and (truncated or used + size > max_bytes):
                    if not truncated:
                        truncated = 1
                        seq += 1
                        rows.append((job_id, seq, "truncated", _truncated_marker(max_bytes)))
                    dropped += 1
                    continue
                seq += 1
                used += size
                rows.append((job_id, seq, kind, data))
            self._conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
            self._conn.execute(
                "UPDATE jobs SET event_bytes = ?, events_truncated = ?, events_dropped = ? "
                "WHERE id = ?",
                (used, truncated, dropped, job_id),
            )

    async def finish(self, job_id: str, outcome: Outcome) -> bool:
        """Record how a running job ended; False if it was no longer running."""
        return await self._run(self._finish, job_id, outcome)

    def _finish(self, job_id: str, outcome: Outcome) -> bool:
        with _transaction(self._conn):
            now = utc_now()
            updated = self._conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, is_error = ?, "
                "error = ?, session_id = COALESCE(?, session_id), total_cost_usd = ?, "
                "num_turns = ?, duration_ms = ?, usage = ?, permission_denials = ?, "
                "exit_code = ?, stderr_tail = ?, git = ? WHERE id = ? AND status = 'running'",
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
                    job_id,
                ),
            ).rowcount
            if updated:
                self._status_event(job_id, outcome.status, now, outcome.error)
            return bool(updated)

    async def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued (any more)."""
        return await self._run(self._cancel_queued, job_id)

    def _cancel_queued(self, job_id: str) -> bool:
        with _transaction(self._conn):
            now = utc_now()
            updated = self._conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, is_error = 1, "
                "error = 'cancelled before it started' WHERE id = ? AND status = 'queued'",
                (now, job_id),
            ).rowcount
            if updated:
                self._status_event(job_id, JobStatus.CANCELLED, now, "cancelled before it started")
            return bool(updated)

    async def interrupt_running(self, error: str) -> list[Row]:
        """At start-up: every job still `running` was cut off by a stop; mark it so."""
        return await self._run(self._interrupt_running, error)

    def _interrupt_running(self, error: str) -> list[Row]:
        with _transaction(self._conn):
            now = utc_now()
            rows = self._conn.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, is_error = 1, "
                "error = ? WHERE status = 'running' RETURNING id, pgid, boot_id, leader_start",
                (now, error),
            ).fetchall()
            for row in rows:
                self._status_event(row["id"], JobStatus.INTERRUPTED, now, error)
            return [dict(r) for r in rows]

    async def prune(self, older_than: timedelta) -> int:
        """Delete finished jobs (and their events) that finished before now - `older_than`."""
        return await self._run(self._prune, older_than)

    def _prune(self, older_than: timedelta) -> int:
        cutoff = _iso(datetime.now(UTC) - older_than)
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
        body: dict[str, Any] = {
            "type": "status",
            "status": status.value,
            "job_id": job_id,
            "at": at,
        }
        if error is not None:
            body["error"] = error
        self._conn.execute(
            "INSERT INTO events VALUES (?, ?, 'status', ?)",
            (job_id, self._last_seq(job_id) + 1, json.dumps(body)),
        )


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(_MIGRATIONS):
        raise RuntimeError(
            f"the job database is at schema {version}, newer than this service knows "
            f"({len(_MIGRATIONS)}); upgrade the service"
        )
    for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")


def _decode(found: sqlite3.Row) -> Row:
    row = dict(found)
    for column in _JSON_COLUMNS:
        if row[column] is not None:
            row[column] = json.loads(row[column])
    if row["is_error"] is not None:
        row["is_error"] = bool(row["is_error"])
    return row


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _truncated_marker(max_bytes: int) -> str:
    return json.dumps(
        {
            "type": "truncated",
            "detail": f"this job's events reached JOB_MAX_EVENT_BYTES ({max_bytes} bytes); "
            "later events are not stored, except status changes and the result",
        }
    )
