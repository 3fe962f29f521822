"""Prometheus metrics, in a registry of the service's own (no process-wide globals
of other libraries mixed in).

Counters are counted where things happen; gauges about the present (slots in
use, the queue) are read when `/metrics` is scraped. With several instances,
each exposes its own; the queue depth is the shared one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

runs = Counter(
    "agent_runs",
    "Agent runs by kind (chat, job) and how they ended (a busy 503 is status=busy)",
    ["kind", "status"],
    registry=registry,
)
run_duration = Histogram(
    "agent_run_duration_seconds",
    "Wall-clock time of agent runs, git sync and publish included",
    ["kind"],
    buckets=_DURATION_BUCKETS,
    registry=registry,
)
cost = Counter("agent_cost_usd", "The CLI's total_cost_usd, summed over runs", registry=registry)
tokens = Counter(
    "agent_tokens",
    "Tokens the CLI reported, by type (input, output, cache_read, cache_creation)",
    ["type"],
    registry=registry,
)
busy = Gauge("agent_busy", "1 when no workspace is free", registry=registry)
runs_active = Gauge("agent_runs_active", "Workspaces in use (chats and jobs)", registry=registry)
slots = Gauge("agent_slots", "Workspaces (MAX_CONCURRENT_RUNS)", registry=registry)
queue_depth = Gauge("agent_queue_depth", "Queued jobs (the shared queue)", registry=registry)
http_requests = Counter(
    "http_requests",
    "HTTP requests by route template and status code",
    ["route", "code"],
    registry=registry,
)
http_duration = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of its response), by route template",
    ["route"],
    buckets=_HTTP_BUCKETS,
    registry=registry,
)
git_operations = Counter(
    "git_operations",
    "git syncs and publishes by result",
    ["op", "result"],
    registry=registry,
)

_TOKEN_TYPES = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_creation",
}


def count_run(
    kind: str,
    status: str,
    *,
    duration_s: float | None = None,
    cost_usd: float | None = None,
    usage: Mapping[str, Any] | None = None,
) -> None:
    """Count one run's end with what the CLI reported about it."""
    runs.labels(kind, status).inc()
    if duration_s is not None:
        run_duration.labels(kind).observe(duration_s)
    if cost_usd:
        cost.inc(cost_usd)
    for key, label in _TOKEN_TYPES.items():
        value = (usage or {}).get(key)
        if isinstance(value, int) and value > 0:
            tokens.labels(label).inc(value)


def watch_workspaces(in_use: Callable[[], int], total: Callable[[], int]) -> None:
    """Read the workspaces' state when scraped."""
    runs_active.set_function(lambda: float(in_use()))
    slots.set_function(lambda: float(total()))
    busy.set_function(lambda: float(in_use() >= total()))
