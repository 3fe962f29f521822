"""Issue 13.5: how long a CLI line takes to reach a client watching
`GET /jobs/{id}/events`, from the time the fake CLI wrote into the line
(`@fake:stamps=N`) to the time the watcher read the event."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from bench.core import Report, Summary, table
from bench.jobs import TERMINAL, submit, warm_up
from bench.server import service, temp_dir

JOBS = 3
STAMPS = 150  # per job, 20 ms apart
STREAM_TIMEOUT_S = 60.0
GOAL_P99_MS = 20.0


def watch(http: httpx.Client, job_id: str, gate: Path) -> tuple[list[float], int]:
    """Follow the job's events; open the gate once the stream is live. The
    latency of every stamp event (seconds), and how many events came."""
    latencies: list[float] = []
    events = 0
    deadline = time.monotonic() + STREAM_TIMEOUT_S
    with http.stream("GET", f"/jobs/{job_id}/events", timeout=STREAM_TIMEOUT_S) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            now = time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the event stream of {job_id} ran over {STREAM_TIMEOUT_S} s")
            if not line.startswith("data:"):
                continue
            events += 1
            if not gate.exists():
                gate.touch()  # the stream is live: let the CLI print its stamps
            event = json.loads(line[5:])
            if event.get("type") == "status" and event.get("status") in TERMINAL:
                break
            if event.get("type") != "assistant":
                continue
            for block in event.get("message", {}).get("content", []):
                text = block.get("text", "") if isinstance(block, dict) else ""
                if text.startswith("stamp "):
                    latencies.append(now - float(text.split()[2]))
    return latencies, events


def bench_sse_latency() -> Report:
    """JOBS jobs each print STAMPS timestamped lines; one watcher per job."""
    report = Report()
    latencies: list[float] = []
    per_job: list[dict[str, float]] = []
    with temp_dir() as root, service(root, "sse") as svc, svc.client() as http:
        warm_up(http)
        for n in range(JOBS):
            gate = root / f"gate-{n}"
            job_id = submit(http, f"@fake:hold={gate} @fake:stamps={STAMPS}")
            found, _ = watch(http, job_id, gate)
            if len(found) != STAMPS:
                raise RuntimeError(f"job {job_id}: {len(found)} of {STAMPS} stamps arrived")
            latencies += found
            per_job.append(Summary.of(found).scaled(1000).as_dict(2))
    ms = Summary.of(latencies).scaled(1000)
    report.data = {"jobs": JOBS, "stamps_per_job": STAMPS, "ms": ms.as_dict(2), "per_job": per_job}
    rows: list[tuple[str, ...]] = [
        ("CLI line -> SSE watcher (ms)", "n", "p50", "p95", "p99", "max")
    ]
    rows.append(("all stamps", str(ms.n), *(f"{v:.2f}" for v in (ms.p50, ms.p95, ms.p99, ms.max))))
    for i, job in enumerate(per_job):
        rows.append(
            (
                f"job {i + 1}",
                str(int(job["n"])),
                *(f"{job[k]:.2f}" for k in ("p50", "p95", "p99", "max")),
            )
        )
    report.tables.append(table(rows))
    report.goal(
        "13.5 CLI line -> SSE client latency, p99",
        f"{ms.p99:.1f} ms (p50 {ms.p50:.1f}, n {ms.n})",
        f"< {GOAL_P99_MS:g} ms",
        ms.p99 < GOAL_P99_MS,
    )
    return report
