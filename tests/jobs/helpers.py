"""Helpers for driving the job API of a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "timeout", "cancelled", "interrupted"}


def submit(client: httpx.Client, prompt: str, **fields: Any) -> str:
    response = client.post("/execute", json={"prompt": prompt, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s}s")
        time.sleep(0.05)


def sse(
    client: httpx.Client,
    job_id: str,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The job's event stream, parsed: one dict (id, event, data) per event;
    with `stop_after`, the stream is closed after that many events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        seen = 0
        for line in response.iter_lines():
            if not line:
                if "data" in event:
                    event["json"] = json.loads(event["data"])
                    yield event
                    seen += 1
                    if stop_after is not None and seen >= stop_after:
                        return
                event = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                event[field] = value[1:] if value.startswith(" ") else value
