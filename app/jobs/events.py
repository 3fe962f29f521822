"""A job's events: numbered as the CLI prints them, delivered to live watchers
at once from memory, stored in batches, and replayed from the store.

The seam between memory and the store is exact: a watcher subscribes first
(receiving every event not yet stored), then reads the store, then takes the
live events whose numbers follow what it has seen. A gap in the numbers sends
it back to the store, so it never skips an event and never sees one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable

from app.agent.stream import Event
from app.aio import complete_even_if_cancelled
from app.jobs.models import EventState, JobEvent, JobStatus
from app.jobs.store import JobStore, LeaseLost, StoreUnavailable, truncated_marker
from app.redact import redact

logger = logging.getLogger(__name__)

# Events reach the store at most this late, or sooner once this many bytes wait.
FLUSH_INTERVAL_S = 0.1
FLUSH_BYTES = 256 * 1024
# While the store cannot write: retry after this, doubling up to the cap.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
# How long a watcher waits for news before it looks at the store anyway.
IDLE_POLL_S = 5.0
# Live events held for one slow watcher at most; past it, it reads the store.
SUBSCRIBER_MAX_BYTES = 4 * 2**20
# Kept whatever the byte cap: they decide what a job's log means.
_ALWAYS_KEPT = frozenset({"status", "result"})


class Subscription:
    """One watcher's live events (in order), and whether to look at the store."""

    def __init__(self, backlog: list[JobEvent]) -> None:
        self._items: deque[JobEvent] = deque(backlog)
        self._bytes = sum(len(e.data) for e in backlog)
        self._recheck = False
        self._wake = asyncio.Event()
        if backlog:
            self._wake.set()

    def push(self, event: JobEvent) -> None:
        if self._bytes + len(event.data) > SUBSCRIBER_MAX_BYTES:
            # too far behind: drop what is held; the store (and the next
            # subscription's backlog) has all of it
            self._items.clear()
            self._bytes = 0
            self._recheck = True
        else:
            self._items.append(event)
            self._bytes += len(event.data)
        self._wake.set()

    def poke(self) -> None:
        """Something was stored that the live feed does not carry."""
        self._recheck = True
        self._wake.set()

    def take(self) -> tuple[list[JobEvent], bool]:
        """The events held, and whether the watcher must look at the store."""
        self._wake.clear()
        items, recheck = list(self._items), self._recheck
        self._items.clear()
        self._bytes = 0
        self._recheck = False
        return items, recheck

    async def wait(self, timeout_s: float) -> bool:
        """Wait for news; False when `timeout_s` passed without any."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class JobEvents:
    """The live side of job events in this process: runs publish, watchers subscribe."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._sinks: dict[str, EventSink] = {}
        self.closing = False

    def attach(self, job_id: str, sink: EventSink) -> None:
        self._sinks[job_id] = sink

    def detach(self, job_id: str) -> None:
        self._sinks.pop(job_id, None)

    def subscribe(self, job_id: str) -> Subscription:
        """Watch a job: the subscription starts with every event not stored yet."""
        sink = self._sinks.get(job_id)
        subscription = Subscription(sink.unflushed() if sink is not None else [])
        self._subscribers[job_id].add(subscription)
        return subscription

    def unsubscribe(self, job_id: str, subscription: Subscription) -> None:
        watchers = self._subscribers.get(job_id)
        if watchers is not None:
            watchers.discard(subscription)
            if not watchers:
                del self._subscribers[job_id]

    def publish(self, job_id: str, event: JobEvent) -> None:
        for subscription in self._subscribers.get(job_id, ()):
            subscription.push(event)

    def notify(self, job_id: str) -> None:
        """The job changed in the store (a status, events of another process)."""
        for subscription in self._subscribers.get(job_id, ()):
            subscription.poke()

    def notify_all(self) -> None:
        """Every job may have changed (notices from other instances were missed)."""
        for watchers in self._subscribers.values():
            for subscription in watchers:
                subscription.poke()

    def close(self) -> None:
        """The service is stopping: streams of jobs that will not run now end."""
        self.closing = True
        self.notify_all()


class EventSink:
    """A run's output lines as job events: numbered, published live, stored in batches.

    Nothing the CLI prints is dropped but by the byte cap (JOB_MAX_EVENT_BYTES):
    a batch leaves memory only once the store has it, a failing store is
    retried with a bounded backoff, and `close` returns only when every event
    is stored.
    """

    def __init__(
        self,
        store: JobStore,
        hub: JobEvents,
        job_id: str,
        max_bytes: int,
        state: EventState,
        *,
        owner: str,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._on_lost = on_lost
        self.lost = False
        """The job stopped being this instance's: nothing more is stored."""
        self._hub = hub
        self._job_id = job_id
        self._max_bytes = max_bytes
        self._seq = state.last_seq
        self._used = state.used_bytes
        self._truncated = state.truncated
        self._dropped = state.dropped
        self._unflushed: list[JobEvent] = []
        self._unflushed_bytes = 0
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._session_stored = False
        self.waiting = False
        """True while a write failed and is being retried."""
        # from the first event that names it (`system` init): a run killed
        # before its `result` still leaves a session to resume
        self.session_id: str | None = None

    def unflushed(self) -> list[JobEvent]:
        return list(self._unflushed)

    async def on_line(self, line: bytes, event: Event | None) -> None:
        if self.session_id is None and event is not None:
            session = event.get("session_id")
            self.session_id = session if isinstance(session, str) else None
        text = line.decode(errors="replace").strip()
        if not text:
            return
        text = redact(text)  # the agent may print a remote URL with its password
        if event is None:
            self.add("raw", json.dumps({"type": "raw", "line": text}))
        else:
            self.add(str(event["type"]), text)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())
        if self._unflushed_bytes >= FLUSH_BYTES:
            await self._flush_until_stored()  # back-pressure: the CLI waits for the store

    def add(self, kind: str, data: str) -> None:
        """Number one event and publish it, or count it dropped past the byte cap."""
        size = len(data.encode())
        if kind not in _ALWAYS_KEPT and (self._truncated or self._used + size > self._max_bytes):
            if not self._truncated:
                self._truncated = True
                self._append("truncated", truncated_marker(self._max_bytes))
            self._dropped += 1
            return
        self._used += size
        self._append(kind, data)

    def _append(self, kind: str, data: str) -> None:
        self._seq += 1
        event = JobEvent(self._seq, kind, data)
        self._unflushed.append(event)
        self._unflushed_bytes += len(data)
        self._hub.publish(self._job_id, event)

    async def flush(self) -> None:
        """Store what is held; raises StoreUnavailable (and keeps it) when the store fails.

        A write once started is finished even if the caller is cancelled, so
        that what is held always says exactly what the store lacks.
        """
        async with self._lock:
            await complete_even_if_cancelled(self._store_held())

    async def _store_held(self) -> None:
        session = None if self._session_stored else self.session_id
        if self.lost or (not self._unflushed and session is None):
            return
        batch = list(self._unflushed)
        state = EventState(self._seq, self._used, self._truncated, self._dropped)
        try:
            await self._store.append_events(
                self._job_id, batch, state, owner=self._owner, session_id=session
            )
        except StoreUnavailable:
            raise
        except LeaseLost:
            logger.warning("job %s is no longer this instance's; its run ends", self._job_id)
            self.lost = True
            self._unflushed.clear()
            self._unflushed_bytes = 0
            if self._on_lost is not None:
                self._on_lost()
            return
        except Exception:  # a batch the store refuses for good must not wedge the run
            logger.exception("job %s: %d events could not be stored", self._job_id, len(batch))
        del self._unflushed[: len(batch)]
        self._unflushed_bytes -= sum(len(e.data) for e in batch)
        self._session_stored = self._session_stored or session is not None

    async def _flush_until_stored(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.flush()
                self.waiting = False
                return
            except StoreUnavailable as exc:
                self.waiting = True
                logger.error(
                    "job %s: %d events wait for the store (%s); retrying in %.1fs",
                    self._job_id,
                    len(self._unflushed),
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _tick(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), FLUSH_INTERVAL_S)
            await self._flush_until_stored()

    async def close(self) -> None:
        """Store every event held (waiting for a failing store); stop the ticker.

        The ticker is never cancelled: cancelling it inside a write would lose
        the batch it holds. It sees `_closing`, finishes its write, and ends.
        """
        self._closing.set()
        if self._ticker is not None:
            await self._ticker
        await self._flush_until_stored()


async def events_after(
    store: JobStore, hub: JobEvents, job_id: str, after: int, page: int = 500
) -> AsyncGenerator[JobEvent, None]:
    """Every event of a job after `after`, live, ending after the terminal status
    (or, when the service stops, after the last event of a job it will not run)."""
    while True:
        subscription = hub.subscribe(job_id)
        try:
            status = await store.status(job_id)
            if status is None:
                return
            while rows := await store.events(job_id, after=after, limit=page):
                for row in rows:
                    yield row
                    after = row.seq
            if status.terminal or (hub.closing and status is not JobStatus.RUNNING):
                return
            while True:
                items, recheck = subscription.take()
                for event in items:
                    if event.seq <= after:
                        continue
                    if event.seq != after + 1:
                        recheck = True  # a gap: the store has what is missing
                        break
                    yield event
                    after = event.seq
                if recheck or not await subscription.wait(IDLE_POLL_S):
                    break
        finally:
            hub.unsubscribe(job_id, subscription)


async def wait_ended(
    store: JobStore, hub: JobEvents, job_id: str, timeout_s: float, poll_s: float = 1.0
) -> JobStatus | None:
    """The job's status once it is final (or after `timeout_s`, whatever it is):
    woken by its changes, looking at least every `poll_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        subscription = hub.subscribe(job_id)
        try:
            status = await store.status(job_id)
            remaining = deadline - loop.time()
            if status is None or status.terminal or remaining <= 0:
                return status
            await subscription.wait(min(remaining, poll_s))
        finally:
            hub.unsubscribe(job_id, subscription)
