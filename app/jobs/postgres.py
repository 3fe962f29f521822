"""The shared job store: PostgreSQL (DATABASE_URL), one queue for several instances.

Jobs are claimed with `FOR UPDATE SKIP LOCKED`, so each is claimed by exactly
one instance, in submission order across the cluster. A running job belongs
to its instance while the instance renews its lease, and every write the
owner makes is fenced (it names the owner and requires `running`), so an
instance that wakes up after its lease was taken changes nothing. Every
change is announced with NOTIFY, so watchers on any instance see events as
they are stored and a cancel made anywhere reaches the job's owner at once;
polls stand behind the notifications.

Every write that adds events to a job first locks the job's row, so the
per-job sequence numbers never race. The queue bound is a counter row
updated in the same transaction as each change of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
from app.redact import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[dict[str, Any]]

# How long start-up waits for the database, and a request for a connection
# (while the database is known to be away: a request fails fast).
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
AWAY_TIMEOUT_S = 0.5
POOL_MAX = 10
# Taken by whoever migrates the schema, so that instances starting together
# migrate it once.
MIGRATION_LOCK = 0x6361_7331  # "cas1"
PRUNE_LOCK = 0x6361_7332
CHANGED, CANCEL = "cas_job", "cas_cancel"
_TERMINAL = [s.value for s in JobStatus if s.terminal]
_RECONNECT_MAX_S = 5.0

# Each entry moves the schema one version up; `cas_schema` says where it is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        num bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        status text NOT NULL,
        prompt text NOT NULL,
        agent text,
        model text NOT NULL,
        max_budget_usd double precision NOT NULL,
        timeout_seconds double precision NOT NULL,
        metadata jsonb,
        resume_session_id text,
        request_hash text,
        submitted_by text,
        request_id text,
        created_at text NOT NULL,
        started_at text,
        finished_at text,
        result text,
        is_error boolean,
        error text,
        session_id text,
        total_cost_usd double precision,
        num_turns integer,
        duration_ms bigint,
        usage jsonb,
        permission_denials jsonb,
        exit_code integer,
        stderr_tail text,
        git jsonb,
        pgid integer,
        boot_id text,
        leader_start bigint,
        event_bytes bigint NOT NULL DEFAULT 0,
        events_truncated boolean NOT NULL DEFAULT false,
        events_dropped bigint NOT NULL DEFAULT 0,
        slot integer,
        instance text,
        lease_expires_at timestamptz,
        cancel_requested boolean NOT NULL DEFAULT false,
        options jsonb,
        structured_output jsonb,
        webhook_url text
    );
    CREATE INDEX jobs_queued ON jobs (num) WHERE status = 'queued';
    CREATE INDEX jobs_running ON jobs (instance) WHERE status = 'running';
    CREATE INDEX jobs_status_num ON jobs (status, num);
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE events (
        job_id text NOT NULL,
        seq integer NOT NULL,
        type text NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE idempotency_keys (
        key text PRIMARY KEY,
        job_id text NOT NULL,
        request_hash text,
        created_at timestamptz NOT NULL
    );
    CREATE TABLE queue_depth (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        queued bigint NOT NULL
    );
    INSERT INTO queue_depth VALUES (true, 0);
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE deliveries (
        id text PRIMARY KEY,
        job_id text NOT NULL,
        url text NOT NULL,
        created_at text NOT NULL,
        give_up_at timestamptz NOT NULL,
        next_attempt_at timestamptz NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        last_status integer,
        last_error text,
        delivered_at text,
        failed boolean NOT NULL DEFAULT false,
        payload text
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
        WHERE delivered_at IS NULL AND NOT failed;
    CREATE INDEX deliveries_job ON deliveries (job_id);
    """,
)

_JOB_FIELDS = frozenset(Job.__dataclass_fields__)
_SESSION_FROM_EVENTS = (
    "COALESCE(session_id, (SELECT (e.data::jsonb) ->> 'session_id' FROM events e "
    "WHERE e.job_id = jobs.id AND e.type = 'system' ORDER BY e.seq LIMIT 1))"
)


class PostgresJobStore:
    """Jobs and their events in PostgreSQL, shared by the instances that name it."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        url: str,
        webhook_retry_s: float = DEFAULT_WEBHOOK_RETRY_S,
    ) -> None:
        self._pool = pool
        self._url = url
        self._webhook_retry_s = webhook_retry_s
        self._write_error: str | None = None
        self._listeners: list[Listener] = []
        self._listening: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        timeout_s: float = CONNECT_TIMEOUT_S,
        webhook_retry_s: float = DEFAULT_WEBHOOK_RETRY_S,
    ) -> PostgresJobStore:
        """Connect (bounded), create or migrate the schema once across
        instances, and listen for changes. Raises DatabaseError."""
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            timeout=REQUEST_TIMEOUT_S,
            check=AsyncConnectionPool.check_connection,
            name="jobs",
        )
        try:
            await _migrate(url, timeout_s)
            await pool.open(wait=True, timeout=timeout_s)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, url, webhook_retry_s)
        store._listening = asyncio.create_task(store._listen(), name="job-store-listen")
        return store

    @property
    def write_error(self) -> str | None:
        return self._write_error

    @property
    def shared(self) -> bool:
        return True

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        await self._pool.close()

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def probe(self) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO meta VALUES ('probed_at', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (utc_now(),),
            )

        await self._use(write)

    # -- running statements -------------------------------------------------

    async def _use(self, work: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run `work` on a pooled connection (in a transaction); a database that
        cannot be reached is StoreUnavailable, remembered until a call succeeds."""
        timeout_s = REQUEST_TIMEOUT_S if self._write_error is None else AWAY_TIMEOUT_S
        try:
            async with self._pool.connection(timeout=timeout_s) as conn:
                if transaction:
                    async with conn.transaction():
                        result = await work(conn)
                else:
                    result = await work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._write_error = f"the job database cannot be reached: {_one_line(exc)}"
            raise StoreUnavailable(self._write_error) from exc
        self._write_error = None
        return result

    async def _listen(self) -> None:
        """Deliver NOTIFY to the listeners, on a connection of its own; reconnect
        with a bounded backoff, and after a gap tell everyone to look again."""
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANGED}")
                    await conn.execute(f"LISTEN {CANCEL}")
                    self._tell("missed", "")  # what was sent while it was away
                    delay = 0.5
                    async for notice in conn.notifies():
                        if notice.channel == CANCEL:
                            self._tell("cancel", notice.payload)
                        else:
                            self._tell("changed" if notice.payload else "queued", notice.payload)
            except (psycopg.OperationalError, OSError) as exc:
                logger.warning("job notifications lost (%s); reconnecting", _one_line(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _tell(self, notice: Notice, job_id: str) -> None:
        for listener in self._listeners:
            try:
                listener(notice, job_id)
            except Exception:
                logger.exception("a job listener failed")

    # -- submitting and reading --------------------------------------------

    async def submit(self, new: NewJob, *, max_queued: int) -> tuple[Job, bool]:
        async def submit(conn: Conn) -> tuple[str, bool]:
            job_id = str(uuid.uuid4())
            if new.idempotency_key is not None:
                existing = await _claim_key(conn, new, job_id)
                if existing is not None:
                    return existing, False
            depth = await (
                await conn.execute(
                    "UPDATE queue_depth SET queued = queued + 1 WHERE queued < %s RETURNING queued",
                    (max_queued,),
                )
            ).fetchone()
            if depth is None:
                raise QueueFull
            now = utc_now()
            await conn.execute(
                "INSERT INTO jobs (id, status, prompt, agent, model, max_budget_usd, "
                "timeout_seconds, metadata, resume_session_id, session_id, request_hash, "
                "submitted_by, request_id, options, webhook_url, created_at) "
                "VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    new.prompt,
                    new.agent,
                    new.model,
                    new.max_budget_usd,
                    new.timeout_seconds,
                    _json(new.metadata),
                    new.resume_session_id,
                    new.resume_session_id,
                    new.request_hash,
                    new.submitted_by,
                    new.request_id,
                    _json(new.options),
                    new.webhook_url,
                    now,
                ),
            )
            await conn.execute(
                "INSERT INTO events VALUES (%s, 1, 'status', %s)",
                (job_id, status_event(job_id, JobStatus.QUEUED, now)),
            )
            await _notify(conn, CHANGED, "")
            return job_id, True

        job_id, created = await self._use(submit)
        job = await self.get(job_id)
        assert job is not None
        return job, created

    async def get(self, job_id: str) -> Job | None:
        async def get(conn: Conn) -> Job | None:
            row = await (
                await conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
            ).fetchone()
            if row is None:
                return None
            position = await _position(conn, row["num"]) if row["status"] == "queued" else None
            webhook = await _webhook(conn, job_id) if row["webhook_url"] else None
            return _job(row, position, webhook)

        return await self._use(get, transaction=False)

    async def list_jobs(
        self, *, status: JobStatus | None, limit: int, before: int | None
    ) -> tuple[list[Job], int | None]:
        async def page(conn: Conn) -> tuple[list[Job], int | None]:
            sql = "SELECT * FROM jobs WHERE true"
            args: list[Any] = []
            if status is not None:
                sql += " AND status = %s"
                args.append(status.value)
            if before is not None:
                sql += " AND num < %s"
                args.append(before)
            sql += " ORDER BY num DESC LIMIT %s"
            args.append(limit + 1)
            rows = await (await conn.execute(sql, args)).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            queued = [row["num"] for row in rows if row["status"] == "queued"]
            positions = await _positions(conn, queued) if queued else {}
            jobs = [
                _job(
                    row,
                    positions.get(row["num"]),
                    await _webhook(conn, row["id"]) if row["webhook_url"] else None,
                )
                for row in rows
            ]
            return jobs, (jobs[-1].num if more else None)

        return await self._use(page, transaction=False)

    async def status(self, job_id: str) -> JobStatus | None:
        async def status(conn: Conn) -> JobStatus | None:
            row = await (
                await conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))
            ).fetchone()
            return None if row is None else JobStatus(row["status"])

        return await self._use(status, transaction=False)

    async def has_queued(self) -> bool:
        return await self.queue_depth() > 0

    async def queue_depth(self) -> int:
        async def depth(conn: Conn) -> int:
            row = await (await conn.execute("SELECT queued FROM queue_depth")).fetchone()
            return int(row["queued"]) if row else 0

        return await self._use(depth, transaction=False)

    async def cost_since(self, since: str) -> float:
        async def total(conn: Conn) -> float:
            row = await (
                await conn.execute(
                    "SELECT COALESCE(SUM(total_cost_usd), 0) AS cost FROM jobs "
                    "WHERE finished_at >= %s",
                    (since,),
                )
            ).fetchone()
            return float(row["cost"]) if row else 0.0

        return await self._use(total, transaction=False)

    async def events(
        self, job_id: str, *, after: int, limit: int, max_bytes: int = EVENT_PAGE_BYTES
    ) -> list[JobEvent]:
        async def page(conn: Conn) -> list[JobEvent]:
            found: list[JobEvent] = []
            size = 0
            async with conn.cursor() as cursor:
                await cursor.execute(
                    "SELECT seq, type, data FROM events WHERE job_id = %s AND seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (job_id, after, limit),
                )
                async for row in cursor:
                    found.append(JobEvent(row["seq"], row["type"], row["data"]))
                    size += len(row["data"])
                    if size >= max_bytes:
                        break
            return found

        return await self._use(page, transaction=False)

    # -- the worker's side ---------------------------------------------------

    async def claim_next(self, *, slot: int, owner: str, lease_s: float) -> Job | None:
        async def claim(conn: Conn) -> str | None:
            now = utc_now()
            row = await (
                await conn.execute(
                    "UPDATE jobs SET status = 'running', started_at = %s, slot = %s, "
                    "instance = %s, lease_expires_at = now() + make_interval(secs => %s), "
                    "cancel_requested = false WHERE num = ("
                    "  SELECT num FROM jobs WHERE status = 'queued' ORDER BY num "
                    "  LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ") RETURNING id",
                    (now, slot, owner, lease_s),
                )
            ).fetchone()
            if row is None:
                return None
            await conn.execute("UPDATE queue_depth SET queued = queued - 1")
            await _status_event(conn, row["id"], JobStatus.RUNNING, now)
            return str(row["id"])

        job_id = await self._use(claim)
        return None if job_id is None else await self.get(job_id)

    async def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> set[str]:
        async def renew(conn: Conn) -> set[str]:
            rows = await (
                await conn.execute(
                    "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %s) "
                    "WHERE id = ANY(%s) AND instance = %s AND status = 'running' RETURNING id",
                    (lease_s, list(job_ids), owner),
                )
            ).fetchall()
            return {str(row["id"]) for row in rows}

        if not job_ids:
            return set()
        return await self._use(renew)

    async def set_process_group(
        self, job_id: str, pgid: int, boot_id: str | None, leader_start: int | None
    ) -> None:
        async def update(conn: Conn) -> None:
            await conn.execute(
                "UPDATE jobs SET pgid = %s, boot_id = %s, leader_start = %s WHERE id = %s",
                (pgid, boot_id, leader_start, job_id),
            )

        await self._use(update)

    async def event_state(self, job_id: str) -> EventState:
        async def state(conn: Conn) -> EventState:
            row = await (
                await conn.execute(
                    "SELECT event_bytes, events_truncated, events_dropped, "
                    "(SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = %s) AS last "
                    "FROM jobs WHERE id = %s",
                    (job_id, job_id),
                )
            ).fetchone()
            if row is None:
                return EventState()
            return EventState(
                row["last"], row["event_bytes"], row["events_truncated"], row["events_dropped"]
            )

        return await self._use(state, transaction=False)

    async def append_events(
        self,
        job_id: str,
        events: Sequence[JobEvent],
        state: EventState,
        *,
        owner: str,
        session_id: str | None = None,
    ) -> None:
        async def append(conn: Conn) -> None:
            held = await conn.execute(
                "UPDATE jobs SET event_bytes = %s, events_truncated = %s, events_dropped = %s, "
                "session_id = COALESCE(session_id, %s) "
                "WHERE id = %s AND instance = %s AND status = 'running'",
                (state.used_bytes, state.truncated, state.dropped, session_id, job_id, owner),
            )
            if not held.rowcount:
                raise LeaseLost(job_id)
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO events VALUES (%s, %s, %s, %s)",
                    [(job_id, *event) for event in events],
                )
            await _notify(conn, CHANGED, job_id)

        await self._use(append)

    async def finish(self, job_id: str, outcome: Outcome, *, owner: str) -> bool:
        retry_s = self._webhook_retry_s

        async def finish(conn: Conn) -> bool:
            now = utc_now()
            updated = await conn.execute(
                "UPDATE jobs SET status = %s, finished_at = %s, result = %s, is_error = %s, "
                "error = %s, session_id = COALESCE(%s, session_id), total_cost_usd = %s, "
                "num_turns = %s, duration_ms = %s, usage = %s, permission_denials = %s, "
                "exit_code = %s, stderr_tail = %s, git = %s, structured_output = %s, "
                "lease_expires_at = NULL WHERE id = %s AND status = 'running' AND instance = %s",
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
                    _json(outcome.usage),
                    _json(outcome.permission_denials),
                    outcome.exit_code,
                    outcome.stderr_tail,
                    _json(outcome.git),
                    _json(outcome.structured_output),
                    job_id,
                    owner,
                ),
            )
            if not updated.rowcount:
                return False
            await _status_event(
                conn, job_id, outcome.status, now, outcome.error, webhook_retry_s=retry_s
            )
            return True

        return await self._use(finish)

    async def cancel_queued(self, job_id: str) -> bool:
        retry_s = self._webhook_retry_s

        async def cancel(conn: Conn) -> bool:
            now = utc_now()
            error = "cancelled before it started"
            updated = await conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = %s, is_error = true, "
                "error = %s WHERE id = %s AND status = 'queued'",
                (now, error, job_id),
            )
            if not updated.rowcount:
                return False
            await conn.execute("UPDATE queue_depth SET queued = queued - 1")
            await _status_event(
                conn, job_id, JobStatus.CANCELLED, now, error, webhook_retry_s=retry_s
            )
            return True

        return await self._use(cancel)

    async def request_cancel(self, job_id: str) -> bool:
        async def request(conn: Conn) -> bool:
            updated = await conn.execute(
                "UPDATE jobs SET cancel_requested = true WHERE id = %s AND status = 'running'",
                (job_id,),
            )
            if updated.rowcount:
                await _notify(conn, CANCEL, job_id)
            return bool(updated.rowcount)

        return await self._use(request)

    async def cancel_requests(self, owner: str) -> list[str]:
        async def pending(conn: Conn) -> list[str]:
            rows = await (
                await conn.execute(
                    "SELECT id FROM jobs WHERE status = 'running' AND instance = %s "
                    "AND cancel_requested",
                    (owner,),
                )
            ).fetchall()
            return [str(row["id"]) for row in rows]

        return await self._use(pending, transaction=False)

    async def interrupt_running(self, error: str, *, owner: str | None) -> list[Job]:
        where = "status = 'running'" + ("" if owner is None else " AND instance = %s")
        return await self._interrupt(error, where, () if owner is None else (owner,))

    async def interrupt_expired(self, error: str, *, except_owner: str) -> list[Job]:
        where = (
            "status = 'running' AND lease_expires_at < now() "
            "AND (instance IS NULL OR instance <> %s)"
        )
        return await self._interrupt(error, where, (except_owner,))

    async def _interrupt(self, error: str, where: str, args: tuple[Any, ...]) -> list[Job]:
        retry_s = self._webhook_retry_s

        async def interrupt(conn: Conn) -> list[dict[str, Any]]:
            now = utc_now()
            rows = await (
                await conn.execute(
                    "UPDATE jobs SET status = 'interrupted', finished_at = %s, is_error = true, "
                    f"error = %s, lease_expires_at = NULL, session_id = {_SESSION_FROM_EVENTS} "
                    f"WHERE {where} RETURNING *",
                    (now, error, *args),
                )
            ).fetchall()
            for row in rows:
                await _status_event(
                    conn, row["id"], JobStatus.INTERRUPTED, now, error, webhook_retry_s=retry_s
                )
            return rows

        rows = await self._use(interrupt)
        return [_job(row, None) for row in rows]

    # -- webhook deliveries --------------------------------------------------

    async def due_deliveries(self, *, limit: int, hold_s: float) -> list[Delivery]:
        async def claim(conn: Conn) -> list[dict[str, Any]]:
            return await (
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => %s) "
                    "WHERE id IN ("
                    "  SELECT id FROM deliveries WHERE delivered_at IS NULL AND NOT failed "
                    "  AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s "
                    "  FOR UPDATE SKIP LOCKED"
                    ") RETURNING id, job_id, url, attempts, created_at, give_up_at, payload",
                    (hold_s, limit),
                )
            ).fetchall()

        rows = await self._use(claim)
        return [Delivery(**{**row, "give_up_at": iso(row["give_up_at"])}) for row in rows]

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
        async def record(conn: Conn) -> None:
            await conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, payload = %s, "
                "last_status = %s, last_error = %s, delivered_at = %s, failed = %s, "
                "next_attempt_at = COALESCE(%s::timestamptz, next_attempt_at) WHERE id = %s",
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

        await self._use(record)

    async def prune(self, older_than: timedelta) -> int:
        async def prune(conn: Conn) -> int:
            got = await (
                await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS got", (PRUNE_LOCK,))
            ).fetchone()
            if not got or not got["got"]:
                return 0  # another instance prunes now
            cutoff = iso(datetime.now(UTC) - older_than)
            rows = await (
                await conn.execute(
                    "DELETE FROM jobs WHERE finished_at < %s AND status = ANY(%s) RETURNING id",
                    (cutoff, _TERMINAL),
                )
            ).fetchall()
            ids = [row["id"] for row in rows]
            if ids:
                await conn.execute("DELETE FROM events WHERE job_id = ANY(%s)", (ids,))
                await conn.execute("DELETE FROM deliveries WHERE job_id = ANY(%s)", (ids,))
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - %s",
                (IDEMPOTENCY_WINDOW,),
            )
            return len(ids)

        return await self._use(prune)


# -- statements shared by the methods (inside their transaction) ----------------


async def _claim_key(conn: Conn, new: NewJob, job_id: str) -> str | None:
    """Take the Idempotency-Key for `job_id`; or return the job that holds it
    (within its window). Raises IdempotencyConflict for another request's key.

    One statement decides, so the same key sent to two instances at once
    gives one job: the second waits on the unique index, then finds the first.
    """
    taken = await (
        await conn.execute(
            "INSERT INTO idempotency_keys VALUES (%s, %s, %s, now()) ON CONFLICT (key) DO UPDATE "
            "SET job_id = EXCLUDED.job_id, request_hash = EXCLUDED.request_hash, "
            "created_at = EXCLUDED.created_at "
            "WHERE idempotency_keys.created_at < now() - %s RETURNING job_id",
            (new.idempotency_key, job_id, new.request_hash, IDEMPOTENCY_WINDOW),
        )
    ).fetchone()
    if taken is not None:
        return None
    held = await (
        await conn.execute(
            "SELECT k.job_id, k.request_hash, j.id AS found FROM idempotency_keys k "
            "LEFT JOIN jobs j ON j.id = k.job_id WHERE k.key = %s",
            (new.idempotency_key,),
        )
    ).fetchone()
    assert held is not None
    if held["request_hash"] != new.request_hash:
        raise IdempotencyConflict
    if held["found"] is None:  # its job was deleted (retention): the key is free again
        await conn.execute(
            "UPDATE idempotency_keys SET job_id = %s, created_at = now() WHERE key = %s",
            (job_id, new.idempotency_key),
        )
        return None
    return str(held["job_id"])


async def _status_event(
    conn: Conn,
    job_id: str,
    status: JobStatus,
    at: str,
    error: str | None = None,
    *,
    webhook_retry_s: float = DEFAULT_WEBHOOK_RETRY_S,
) -> None:
    """Append a status event (the job's row is locked by the caller's update);
    a final one makes the job's webhook due, in the same transaction."""
    await conn.execute(
        "INSERT INTO events SELECT %s, COALESCE(MAX(seq), 0) + 1, 'status', %s "
        "FROM events WHERE job_id = %s",
        (job_id, status_event(job_id, status, at, error), job_id),
    )
    if status.terminal:
        await conn.execute(
            "INSERT INTO deliveries (id, job_id, url, created_at, give_up_at, next_attempt_at) "
            "SELECT %s, id, webhook_url, %s, now() + make_interval(secs => %s), now() "
            "FROM jobs WHERE id = %s AND webhook_url IS NOT NULL",
            (str(uuid.uuid4()), at, webhook_retry_s, job_id),
        )
    await _notify(conn, CHANGED, job_id)


async def _notify(conn: Conn, channel: str, payload: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def _position(conn: Conn, num: int) -> int:
    """Queued jobs ahead of job `num`, counted on whichever side of it is shorter."""
    row = await (
        await conn.execute(
            "SELECT (SELECT queued FROM queue_depth) AS total, "
            "(SELECT MIN(num) FROM jobs WHERE status = 'queued') AS first, "
            "(SELECT MAX(num) FROM jobs WHERE status = 'queued') AS last"
        )
    ).fetchone()
    assert row is not None
    if row["first"] is None or num - row["first"] <= row["last"] - num:
        counted = await (
            await conn.execute(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued' AND num < %s", (num,)
            )
        ).fetchone()
        return int(counted["n"]) if counted else 0
    behind = await (
        await conn.execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued' AND num > %s", (num,)
        )
    ).fetchone()
    return int(row["total"]) - 1 - (int(behind["n"]) if behind else 0)


async def _positions(conn: Conn, nums: list[int]) -> dict[int, int]:
    """The queue positions of a page's queued jobs, from one count."""
    lowest = min(nums)
    ahead = await _position(conn, lowest)
    rows = await (
        await conn.execute(
            "SELECT num FROM jobs WHERE status = 'queued' AND num >= %s AND num <= %s ORDER BY num",
            (lowest, max(nums)),
        )
    ).fetchall()
    return {row["num"]: ahead + i for i, row in enumerate(rows)}


async def _migrate(url: str, timeout_s: float) -> None:
    """Create or migrate the schema, once, whatever instances start at the same time."""
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(1, int(timeout_s))
            ),
            timeout_s,
        )
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise DatabaseError(
            f"cannot connect to the job database (DATABASE_URL): {_one_line(exc)}"
        ) from None
    async with conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS cas_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT version FROM cas_schema")).fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(MIGRATIONS):
                raise DatabaseError(
                    f"the job database (DATABASE_URL) is at schema {version}, newer than this "
                    f"service knows ({len(MIGRATIONS)}); upgrade the service"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute("DELETE FROM cas_schema")
                    await conn.execute("INSERT INTO cas_schema VALUES (%s)", (number,))
                logger.info("job database migrated to schema %d", number)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _job(
    row: dict[str, Any], queue_position: int | None, webhook: dict[str, Any] | None = None
) -> Job:
    fields = {key: value for key, value in row.items() if key in _JOB_FIELDS}
    fields["status"] = JobStatus(fields["status"])
    return Job(**fields, queue_position=queue_position, webhook=webhook)


async def _webhook(conn: Conn, job_id: str) -> dict[str, Any] | None:
    """The job's latest webhook delivery, as GET /jobs/{id} shows it."""
    row = await (
        await conn.execute(
            "SELECT url, attempts, last_status, last_error, delivered_at, next_attempt_at, "
            "failed FROM deliveries WHERE job_id = %s ORDER BY created_at DESC LIMIT 1",
            (job_id,),
        )
    ).fetchone()
    if row is None:
        return None
    done = row["delivered_at"] is not None or row["failed"]
    row["next_attempt_at"] = None if done else iso(row["next_attempt_at"])
    return row


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _one_line(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split())) or type(exc).__name__


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresJobStore]:
    """A store for the span of a block (checks at start-up, tools)."""
    store = await PostgresJobStore.open(url)
    try:
        yield store
    finally:
        await store.close()
