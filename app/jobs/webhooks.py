"""Webhook deliveries: a POST of the finished job's JSON to its `webhook_url`,
signed, retried until it is accepted, for at least once across restarts.

A delivery is stored with the job's final status (same transaction), so no
end is ever missed; its body is fixed at the first attempt and resent as it
is. Timeouts, connection errors, 408, 429 and 5xx are retried with an
exponential backoff and jitter (the first retry after about 2 s, doubling)
until WEBHOOK_RETRY_SECONDS after the job ended; any other answer ends the
delivery (2xx: delivered). Receivers de-duplicate by `X-Webhook-Id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.jobs.models import Delivery, Job, iso
from app.jobs.store import JobStore, StoreUnavailable
from app.redact import redact
from app.settings import webhook_problem

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 600.0
# How often due deliveries are looked for when nothing wakes the sender.
POLL_S = 1.0
BATCH = 10
# A delivery taken for an attempt is not taken by another instance for this long.
HOLD_S = 60.0
_RETRY_STATUSES = frozenset({408, 429})

Render = Callable[[Job], dict[str, Any]]


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of the body with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempts: int, rng: random.Random) -> float:
    """The wait before attempt `attempts + 1`: 2 s doubling, capped, with jitter."""
    base = min(FIRST_RETRY_S * 2.0 ** max(attempts - 1, 0), MAX_RETRY_S)
    return float(base * rng.uniform(0.75, 1.25))


class WebhookSender:
    """Sends due deliveries, one batch at a time, until stopped."""

    def __init__(
        self,
        store: JobStore,
        *,
        secret: str | None,
        allowed_hosts: tuple[str, ...],
        render: Render,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._secret = secret
        self._allowed = allowed_hosts
        self._render = render
        self._client = client or httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S, follow_redirects=False, trust_env=False
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="webhooks")

    def wake(self) -> None:
        """A job ended: look for its delivery now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self._store.due_deliveries(limit=BATCH, hold_s=HOLD_S)
            except StoreUnavailable:
                due = []
            except Exception:
                logger.exception("looking for due webhooks failed; going on")
                due = []
            if due:
                await asyncio.gather(*(self._attempt(delivery) for delivery in due))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._send(delivery)
        except StoreUnavailable as exc:  # taken again once its hold runs out
            logger.warning("webhook %s: its attempt was not recorded: %s", delivery.id, exc)
        except Exception:
            logger.exception("webhook %s: the attempt failed", delivery.id)

    async def _send(self, delivery: Delivery) -> None:
        payload = delivery.payload
        if payload is None:
            job = await self._store.get(delivery.job_id)
            if job is None:  # deleted meanwhile (retention): nothing to say
                await self._record(delivery, "{}", None, "the job no longer exists", retry=False)
                return
            payload = json.dumps(self._render(job), separators=(",", ":"))
        problem = webhook_problem(delivery.url, self._allowed)
        if problem is not None or self._secret is None:
            why = f"the URL {problem}" if problem else "WEBHOOK_SECRET is not set"
            await self._record(delivery, payload, None, why, retry=False)
            return
        body = payload.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Id": delivery.id,
            "X-Webhook-Signature": signature(self._secret, body),
            "User-Agent": "claude-agent-service",
        }
        try:
            response = await self._client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = redact(" ".join(str(exc).split()) or type(exc).__name__)
            await self._record(delivery, payload, None, error, retry=True)
            return
        status = response.status_code
        if 200 <= status < 300:
            await self._record(delivery, payload, status, None, retry=False, delivered=True)
            logger.info(
                "webhook %s for job %s delivered (%d)", delivery.id, delivery.job_id, status
            )
            return
        retry = status >= 500 or status in _RETRY_STATUSES
        await self._record(delivery, payload, status, f"answered {status}", retry=retry)

    async def _record(
        self,
        delivery: Delivery,
        payload: str,
        status: int | None,
        error: str | None,
        *,
        retry: bool,
        delivered: bool = False,
    ) -> None:
        retry_at = None
        if retry:
            at = datetime.now(UTC) + timedelta(seconds=backoff_s(delivery.attempts + 1, self._rng))
            if iso(at) <= delivery.give_up_at:
                retry_at = iso(at)
        if not delivered:
            logger.warning(
                "webhook %s for job %s: %s; %s",
                delivery.id,
                delivery.job_id,
                error,
                f"retrying at {retry_at}" if retry_at else "given up",
            )
        await self._store.record_attempt(
            delivery.id,
            payload=payload,
            status=status,
            error=error,
            delivered=delivered,
            retry_at=retry_at,
        )
