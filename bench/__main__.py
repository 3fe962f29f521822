"""`python -m bench [--only NAME ...] [--json] [--loadgen auto|wrk|python]`:
run the benchmarks against real service processes and report (BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import Report, loadavg, log, table
from bench.server import ROOT


@dataclass(frozen=True)
class Options:
    """What the command line says about how to measure."""

    loadgen: str


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its name for --only, what it measures, how to run it."""

    name: str
    title: str
    run: Callable[[Options], Report]


def _chat_real(options: Options) -> Report:
    from bench.chat import bench_chat_real

    return bench_chat_real()


def _sync(options: Options) -> Report:
    from bench.sync import bench_sync

    return bench_sync()


def _http_rps(options: Options) -> Report:
    from bench.http_rate import bench_http_rps

    return bench_http_rps(options.loadgen)


def _sse_latency(options: Options) -> Report:
    from bench.sse import bench_sse_latency

    return bench_sse_latency()


def _queue_depth(options: Options) -> Report:
    from bench.queue_depth import bench_queue_depth

    return bench_queue_depth()


def _header_flood(options: Options) -> Report:
    from bench.header_flood import bench_header_flood

    return bench_header_flood()


def _parallel(options: Options) -> Report:
    from bench.parallel import bench_parallel

    return bench_parallel()


def _instances(options: Options) -> Report:
    from bench.instances import bench_instances

    return bench_instances()


def _flood(options: Options) -> Report:
    from bench.memory import bench_flood

    return bench_flood()


def _long_line(options: Options) -> Report:
    from bench.memory import bench_long_line

    return bench_long_line()


BENCHMARKS = (
    Benchmark("sync", "13.2 git sync vs fetch + rebase", _sync),
    Benchmark("http_rps", "13.3/13.4 GET /health and GET /jobs/{id} req/s", _http_rps),
    Benchmark("sse_latency", "13.5 CLI line -> SSE client latency", _sse_latency),
    Benchmark("queue_depth", "13.6/13.7/11 latency at 10,000 queued vs 100", _queue_depth),
    Benchmark("header_flood", "9 oversized heads without a token", _header_flood),
    Benchmark("parallel", "10 8 jobs of 2 s with MAX_CONCURRENT_RUNS 1, 2, 4", _parallel),
    Benchmark("instances", "11 jobs/s claimed by 1, 2, 4 instances on PostgreSQL", _instances),
    Benchmark("chat_real", "13.1 chat overhead over the bare real CLI", _chat_real),
    Benchmark("flood", "memory under a flood of CLI output (20, 200 MiB)", _flood),
    Benchmark("long_line", "event-loop stalls on long CLI lines (1, 8 MiB)", _long_line),
)


def machine() -> dict[str, str]:
    """Where and when: CPU, cores, memory, kernel, Python, date, commit, load."""

    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def command(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.SubprocessError):
            return "?"
        return done.stdout.strip() or "?"

    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "nproc": str(os.cpu_count()),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": command("date", "-u"),
        "commit": command("git", "rev-parse", "--short", "HEAD"),
        # (command() says "?" for an empty answer: no changes)
        "git_status": "clean" if command("git", "status", "--porcelain") == "?" else "dirty",
        "loadavg": " ".join(f"{x:.2f}" for x in loadavg()),
    }


SETTLE_S = 1.0


def settle() -> None:
    """Let the machine finish what the last benchmark left it (dirty pages of
    deleted databases, exiting processes) before the next one measures."""
    os.sync()
    time.sleep(SETTLE_S)


def run_one(bench: Benchmark, options: Options) -> dict[str, Any]:
    """Run one benchmark; a failure becomes its error, never the end of the run."""
    settle()
    log(f"{bench.name}: {bench.title} ...")
    before = loadavg()
    start = time.monotonic()
    try:
        report = bench.run(options)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        report = Report(errors=[f"{type(exc).__name__}: {exc}"])
    wall_s = time.monotonic() - start
    after = loadavg()
    log(f"{bench.name}: done in {wall_s:.1f} s{' with errors' if report.errors else ''}")
    return {
        "name": bench.name,
        "title": bench.title,
        "wall_s": round(wall_s, 1),
        "loadavg_before": before,
        "loadavg_after": after,
        "data": report.data,
        "tables": report.tables,
        "notes": report.notes,
        "goals": [dataclasses.asdict(g) | {"verdict": g.verdict} for g in report.goals],
        "errors": report.errors,
    }


def render(results: dict[str, Any]) -> str:
    """The report for people: machine, each benchmark's tables, the goals."""
    m = results["machine"]
    parts = [
        f"machine: {m['cpu']}, nproc {m['nproc']}, MemTotal {m['memory']}, "
        f"kernel {m['kernel']}, Python {m['python']}\n"
        f"date: {m['date']}; commit {m['commit']} (work tree {m['git_status']}); "
        f"load generator: {results['loadgen']}"
    ]
    for r in results["benchmarks"]:
        load = (
            f"load {' '.join(f'{x:.2f}' for x in r['loadavg_before'])} -> "
            f"{' '.join(f'{x:.2f}' for x in r['loadavg_after'])}"
        )
        lines = [f"== {r['name']}: {r['title']} ({r['wall_s']} s; {load})"]
        lines += [f"\n{t}" for t in r["tables"]]
        lines += [f"note: {n}" for n in r["notes"]]
        lines += [f"ERROR {e}" for e in r["errors"]]
        parts.append("\n".join(lines))
    goals = [g for r in results["benchmarks"] for g in r["goals"]]
    if goals:
        rows = [("goal", "measured", "target", "verdict")]
        rows += [(g["figure"], g["measured"], g["target"], g["verdict"]) for g in goals]
        parts.append("== goals\n\n" + table(rows))
    parts.append(f"total wall time {results['wall_s']} s; errors: {results['errors']}")
    return "\n\n".join(parts)


def main() -> int:
    """Parse the command line, run the chosen benchmarks, print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    names = [b.name for b in BENCHMARKS]
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="the request-rate load generator (auto: wrk if installed, else Python)",
    )
    args = parser.parse_args()
    from bench.loadgen import which_tool

    options = Options(loadgen=which_tool(args.loadgen))
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    start = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "loadgen": options.loadgen}
    results["benchmarks"] = [run_one(b, options) for b in chosen]
    results["wall_s"] = round(time.monotonic() - start, 1)
    results["errors"] = sum(len(r["errors"]) for r in results["benchmarks"])
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
