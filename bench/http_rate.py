"""Issues 13.3 and 13.4: requests per second of `GET /health` and
`GET /jobs/{id}` on the service against a minimal Starlette app on plain
uvicorn (httptools), with the same load generator, interleaved."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.core import Report, log, table
from bench.jobs import run_job
from bench.loadgen import LoadResult, run_load
from bench.server import TOKEN, baseline_uvicorn, service, temp_dir

ROUNDS = 5
DURATION_S = 2.0
WARM_UP_S = 1.0
CONNECTIONS = 16
GOAL_HEALTH = 0.8
GOAL_JOB = 0.5


def _cpus() -> tuple[str | None, str | None]:
    """(server CPUs, client CPUs): apart when there are two cores or more."""
    count = os.cpu_count() or 1
    if count < 2:
        return None, None
    return "0", "1" if count == 2 else f"1-{count - 1}"


def bench_http_rps(tool: str) -> Report:
    """For each endpoint, ROUNDS rounds of (service, baseline), the order alternating."""
    report = Report()
    server_cpus, client_cpus = _cpus()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        temp_dir() as root,
        service(root, "rps", cpus=server_cpus) as svc,
        baseline_uvicorn(root, cpus=server_cpus) as base_url,
    ):
        with svc.client() as http:
            job = run_job(http, "a job to read", timeout_s=60)
        targets = {
            "GET /health": f"{svc.base_url}/health",
            "GET /jobs/{id}": f"{svc.base_url}/jobs/{job['job_id']}",
        }
        baseline = f"{base_url}/health"

        def load(url: str, seconds: float) -> LoadResult:
            result = run_load(
                url,
                tool=tool,
                connections=CONNECTIONS,
                duration_s=seconds,
                headers=auth,
                cpus=client_cpus,
            )
            if result.non_2xx or result.errors or result.requests == 0:
                raise RuntimeError(
                    f"{url}: {result.non_2xx} non-2xx answers, {result.errors} socket "
                    f"errors in {result.requests} requests"
                )
            return result

        for url in (*targets.values(), baseline):
            load(url, WARM_UP_S)
        runs: dict[str, dict[str, list[LoadResult]]] = {}
        for name, url in targets.items():
            log(f"http_rps: {name}, {ROUNDS} rounds of {DURATION_S:g} s each side")
            measured: list[LoadResult] = []
            base: list[LoadResult] = []
            for i in range(ROUNDS):
                if i % 2 == 0:
                    measured.append(load(url, DURATION_S))
                    base.append(load(baseline, DURATION_S))
                else:
                    base.append(load(baseline, DURATION_S))
                    measured.append(load(url, DURATION_S))
            runs[name] = {"service": measured, "baseline": base}
    rows: list[tuple[str, ...]] = [
        (
            "endpoint",
            "rounds",
            "service req/s p50",
            "min",
            "max",
            "baseline req/s p50",
            "min",
            "max",
            "ratio p50",
            "ratio per round (min..max)",
            "latency p50/p99 ms (svc | base)",
        )
    ]
    data: dict[str, Any] = {}
    for name, sides in runs.items():
        svc_rps = [r.rps for r in sides["service"]]
        base_rps = [r.rps for r in sides["baseline"]]
        per_round = [s / b for s, b in zip(svc_rps, base_rps, strict=True)]
        ratio = statistics.median(svc_rps) / statistics.median(base_rps)
        lat = (
            f"{_ms(sides['service'], 'p50_ms')}/{_ms(sides['service'], 'p99_ms')} | "
            f"{_ms(sides['baseline'], 'p50_ms')}/{_ms(sides['baseline'], 'p99_ms')}"
        )
        rows.append(
            (
                name,
                str(len(svc_rps)),
                f"{statistics.median(svc_rps):.0f}",
                f"{min(svc_rps):.0f}",
                f"{max(svc_rps):.0f}",
                f"{statistics.median(base_rps):.0f}",
                f"{min(base_rps):.0f}",
                f"{max(base_rps):.0f}",
                f"{ratio:.3f}",
                f"{min(per_round):.3f}..{max(per_round):.3f}",
                lat,
            )
        )
        data[name] = {
            "service_rps": [round(x) for x in svc_rps],
            "baseline_rps": [round(x) for x in base_rps],
            "ratio_p50": round(ratio, 3),
            "ratio_per_round": [round(x, 3) for x in per_round],
        }
        goal = GOAL_HEALTH if name == "GET /health" else GOAL_JOB
        figure = "13.3 GET /health req/s" if name == "GET /health" else "13.4 GET /jobs/{id} req/s"
        report.goal(
            f"{figure} / minimal Starlette",
            f"ratio {ratio:.3f} ({statistics.median(svc_rps):.0f} vs "
            f"{statistics.median(base_rps):.0f})",
            f">= {goal}",
            ratio >= goal,
        )
    report.data = {
        "tool": tool,
        "connections": CONNECTIONS,
        "duration_s": DURATION_S,
        "rounds": ROUNDS,
        "server_cpus": server_cpus,
        "client_cpus": client_cpus,
        "endpoints": data,
    }
    report.tables.append(
        f"{tool}, {CONNECTIONS} keep-alive connections, {DURATION_S:g} s per run; servers on CPU "
        f"{server_cpus}, load generator on CPU {client_cpus}; baseline: Starlette GET /health\n"
        + table(rows)
    )
    return report


def _ms(results: list[LoadResult], key: str) -> str:
    values = [getattr(r, key) for r in results if getattr(r, key) is not None]
    return f"{statistics.median(values):.2f}" if values else "-"
