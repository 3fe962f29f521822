"""Issue 11: jobs per second claimed from one PostgreSQL queue by 1, 2 and 4
service instances, with a no-op CLI, so that the store and the worker are the
limit rather than the agent.

The no-op CLI is a `/bin/sh` script written here (the fake CLI, a Python
program, takes a few hundred milliseconds of CPU to start, which would be
the ceiling instead). Each instance has MAX_CONCURRENT_RUNS=2, GIT_SYNC and
GIT_PUSH off. The slots are first held by jobs that wait for a gate file;
the measured jobs are queued behind them; then the gate opens."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.core import Report, log, table
from bench.jobs import fill_queue, submit
from bench.queue_depth import postgres
from bench.server import Service, make_remote, service, temp_dir

INSTANCES = (1, 2, 4)
SLOTS_EACH = 2
JOBS = 200
WAIT_S = 120.0
HOLD = "@hold"
_SESSION = "00000000-0000-4000-8000-000000000000"
NOOP_CLI = """#!/bin/sh
# A no-op `claude` for the benchmarks: an init event and a result, at once;
# a prompt with @hold first waits (up to 60 s) for the gate file.
case "$1" in --version) echo "2.1.330 (Claude Code)"; exit 0;; esac
for prompt; do :; done
case "$prompt" in *@hold*)
  i=0
  while [ ! -e "{gate}" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i + 1)); done;;
esac
echo '{{"type":"system","subtype":"init","session_id":"{session}","model":"haiku"}}'
echo '{{"type":"result","subtype":"success","is_error":false,"result":"ok",\
"session_id":"{session}","total_cost_usd":0,"num_turns":1,"duration_ms":0,\
"usage":{{"input_tokens":0,"output_tokens":0}}}}'
"""


def write_noop_cli(root: Path, gate: Path) -> Path:
    """The no-op CLI script, executable, under `root`."""
    path = root / "noop-claude"
    path.write_text(NOOP_CLI.format(gate=gate, session=_SESSION))
    path.chmod(0o755)
    return path


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _count(http: httpx.Client, status: str) -> int:
    jobs = http.get("/jobs", params={"status": status, "limit": 200}).raise_for_status()
    return len(jobs.json()["jobs"])


def _all_jobs(http: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        page = http.get("/jobs", params=params).raise_for_status().json()
        jobs += page["jobs"]
        if page["next"] is None:
            return jobs
        params["before"] = page["next"]


def _wait(what: str, condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not so after {WAIT_S:g} s")
        time.sleep(0.05)


def _run(count: int, root: Path, pg: Any, remote: Path) -> dict[str, Any]:
    gate = root / f"gate-{count}"
    cli_dir = root / f"cli-{count}"
    cli_dir.mkdir()
    cli = write_noop_cli(cli_dir, gate)
    url = pg.create_database(f"claims_{count}")
    env = {
        "DATABASE_URL": url,
        "MAX_CONCURRENT_RUNS": str(SLOTS_EACH),
        "GIT_SYNC": "false",
        "GIT_PUSH": "false",
        "MAX_QUEUE_DEPTH": "100000",
    }
    with contextlib.ExitStack() as stack:
        services: list[Service] = []
        for i in range(count):
            instance_env = {**env, "INSTANCE_ID": f"bench-{count}-{i}"}
            services.append(
                stack.enter_context(
                    service(root, f"i{count}-{i}", env=instance_env, remote=remote, claude_bin=cli)
                )
            )
        http = stack.enter_context(services[0].client())
        holders = [submit(http, HOLD) for _ in range(count * SLOTS_EACH)]
        _wait("every slot held", lambda: _count(http, "running") == len(holders))
        ids, fill_s = fill_queue(services[0], JOBS, WAIT_S)
        log(f"instances: {count}: {JOBS} jobs queued in {fill_s:.1f} s; opening the gate")
        opened = time.time()
        gate.touch()
        _wait(
            "the queue drained",
            lambda: _count(http, "queued") == 0 and _count(http, "running") == 0,
        )
        wanted = set(ids)
        jobs = [j for j in _all_jobs(http) if j["job_id"] in wanted]
    if len(jobs) != JOBS:
        raise RuntimeError(f"{count} instances: {len(jobs)} of {JOBS} jobs found")
    statuses = sorted({j["status"] for j in jobs})
    started = sorted(_when(j["started_at"]) for j in jobs)
    finished = max(_when(j["finished_at"]) for j in jobs)
    per_instance: dict[str, int] = {}
    for j in jobs:
        per_instance[j["instance"]] = per_instance.get(j["instance"], 0) + 1
    return {
        "instances": count,
        "claimed_per_s": round((len(started) - 1) / (started[-1] - started[0]), 1),
        "done_per_s": round(JOBS / (finished - opened), 1),
        "drain_s": round(finished - opened, 2),
        "statuses": statuses,
        "per_instance": sorted(per_instance.values(), reverse=True),
    }


def bench_instances() -> Report:
    """1, 2 and 4 instances on one fresh database each."""
    report = Report()
    rows: list[dict[str, Any]] = []
    with temp_dir() as root, postgres() as pg:
        remote = make_remote(root)
        for count in INSTANCES:
            rows.append(_run(count, root, pg, remote))
            if rows[-1]["statuses"] != ["completed"]:
                report.errors.append(f"{count} instances: jobs ended {rows[-1]['statuses']}")
    base = rows[0]["claimed_per_s"]
    out = [
        (
            "instances",
            "slots",
            "claimed jobs/s",
            "vs 1 instance",
            "completed jobs/s",
            "drain (s)",
            "jobs per instance",
        )
    ]
    for r in rows:
        out.append(
            (
                str(r["instances"]),
                str(r["instances"] * SLOTS_EACH),
                f"{r['claimed_per_s']:.1f}",
                f"{r['claimed_per_s'] / base:.2f}",
                f"{r['done_per_s']:.1f}",
                f"{r['drain_s']:.2f}",
                "/".join(map(str, r["per_instance"])),
            )
        )
        report.goal(
            f"11 jobs/s claimed by {r['instances']} instance(s), no-op CLI",
            f"{r['claimed_per_s']:.1f} claimed/s, {r['done_per_s']:.1f} completed/s",
            "reported",
            None,
        )
    report.tables.append(
        f"{JOBS} queued jobs per run, PostgreSQL, a no-op sh CLI, {SLOTS_EACH} slots per "
        "instance; claimed/s from the jobs' started_at, completed/s from the gate to the "
        "last finished_at\n" + table(out)
    )
    report.data = {"jobs": JOBS, "slots_each": SLOTS_EACH, "runs": rows}
    return report
