"""Issue 10: wall time of 8 jobs that each sleep 2 s with MAX_CONCURRENT_RUNS
= 1, 2 and 4 (a local bare remote behind the slots), and the server's RSS."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from bench.core import Report, table
from bench.jobs import TERMINAL, get_job, submit, warm_up
from bench.memory import RssSampler
from bench.server import make_remote, memory_kib, service, temp_dir

JOBS = 8
SLEEP_S = 2.0
SLOTS = (1, 2, 4)
POLL_S = 0.1
TIMEOUT_S = 120.0


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def bench_parallel() -> Report:
    """One fresh service per N; the 8 jobs submitted at once."""
    report = Report()
    rows: list[dict[str, Any]] = []
    with temp_dir() as root:
        remote = make_remote(root)
        for slots in SLOTS:
            env = {"MAX_CONCURRENT_RUNS": str(slots)}
            with (
                service(root, f"slots{slots}", remote=remote, env=env) as svc,
                svc.client() as http,
            ):
                warm_up(http)
                rss_before = memory_kib(svc.pid)["VmRSS"]
                start = time.monotonic()
                with RssSampler(svc.pid) as sampler:
                    ids = [submit(http, f"@fake:sleep={SLEEP_S:g}") for _ in range(JOBS)]
                    jobs: dict[str, dict[str, Any]] = {}
                    deadline = start + TIMEOUT_S
                    while len(jobs) < JOBS:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"N={slots}: jobs unfinished after {TIMEOUT_S}")
                        for job_id in ids:
                            if job_id not in jobs:
                                job = get_job(http, job_id)
                                if job["status"] in TERMINAL:
                                    jobs[job_id] = job
                        time.sleep(POLL_S)
                client_wall = time.monotonic() - start
            statuses = sorted({j["status"] for j in jobs.values()})
            if statuses != ["completed"]:
                report.errors.append(f"N={slots}: jobs ended {statuses}")
            server_wall = max(_when(j["finished_at"]) for j in jobs.values()) - min(
                _when(j["created_at"]) for j in jobs.values()
            )
            ideal = JOBS * SLEEP_S / slots
            rows.append(
                {
                    "slots": slots,
                    "server_wall_s": round(server_wall, 2),
                    "client_wall_s": round(client_wall, 2),
                    "ideal_s": ideal,
                    "over_ideal_s": round(server_wall - ideal, 2),
                    "slots_used": sorted({j["slot"] for j in jobs.values()}),
                    "rss_before_mib": round(rss_before / 1024, 1),
                    "rss_peak_mib": round(sampler.peak_kib / 1024, 1),
                }
            )
    out = [
        (
            "MAX_CONCURRENT_RUNS",
            "wall (s)",
            "ideal",
            "over ideal",
            "seen by client",
            "slots used",
            "RSS before",
            "peak (MiB)",
        )
    ]
    for r in rows:
        out.append(
            (
                str(r["slots"]),
                f"{r['server_wall_s']:.2f}",
                f"{r['ideal_s']:g}",
                f"{r['over_ideal_s']:+.2f}",
                f"{r['client_wall_s']:.2f}",
                ",".join(map(str, r["slots_used"])),
                f"{r['rss_before_mib']}",
                f"{r['rss_peak_mib']}",
            )
        )
    report.tables.append(
        f"{JOBS} jobs of @fake:sleep={SLEEP_S:g}, submitted at once; wall = first created_at to "
        "last finished_at (the service's own times)\n" + table(out)
    )
    report.data = {"jobs": JOBS, "sleep_s": SLEEP_S, "runs": rows}
    for r in rows:
        report.goal(
            f"10 wall of {JOBS} x {SLEEP_S:g} s jobs, MAX_CONCURRENT_RUNS={r['slots']}",
            f"{r['server_wall_s']:.2f} s ({r['over_ideal_s']:+.2f} s over ideal)",
            f"about {r['ideal_s']:g} s plus overhead",
            None,
        )
        if r["slots"] == max(SLOTS):
            report.goal(
                f"10 server RSS with MAX_CONCURRENT_RUNS={r['slots']}",
                f"peak {r['rss_peak_mib']} MiB (idle {r['rss_before_mib']})",
                "reported",
                None,
            )
    return report
