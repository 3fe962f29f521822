"""`python -m bench [--json]`: run every benchmark against a real server, report."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.server import FAKE_CLAUDE, Server, memory_kib, running_server

FLOOD_SIZES_MB = (20, 200)
LONG_LINE_SIZES_MIB = (1, 8)
HEALTH_PROBE_S = 0.05
JOB_TIMEOUT_S = 300.0
POLL_S = 0.2
SAMPLE_S = 0.1
SETTLE_S = 1.0
CHAT_RUNS = 20
CHAT_BODY = {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}
CLI_ARGV = ("-p", "--output-format", "stream-json", "--verbose", "--model", "haiku", "--", "hi")
TERMINAL = {"completed", "failed", "timeout", "cancelled", "interrupted"}
MIB = 2**20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RssSampler:
    """Samples a process's VmRSS every `SAMPLE_S` on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_kib = 0
        self.samples = 0

    def _run(self) -> None:
        while True:
            try:
                rss = memory_kib(self._pid)["VmRSS"]
            except (OSError, KeyError):
                return  # the process is gone
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1
            if self._stop.wait(SAMPLE_S):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_job(http: httpx.Client, prompt: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Submit a job and poll it (bounded) until its status is terminal."""
    response = http.post("/execute", json={"prompt": prompt})
    response.raise_for_status()
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:g} s")
        time.sleep(POLL_S)


def cli_output_bytes(prompt: str, timeout_s: float = 120.0) -> tuple[int, float]:
    """Bytes the fake CLI prints for `prompt` when run directly, and how long it takes."""
    argv = [str(FAKE_CLAUDE), *CLI_ARGV[:-1], prompt]
    start = time.monotonic()
    total = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(MIB):
            total += len(chunk)
            if time.monotonic() - start > timeout_s:
                proc.kill()
                raise TimeoutError(f"the fake CLI ran over {timeout_s:g} s")
        proc.wait(timeout_s)
    return total, time.monotonic() - start


def db_mib(data_dir: Path) -> dict[str, float]:
    sizes = {}
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal"):
        path = data_dir / name
        sizes[name] = round(path.stat().st_size / MIB, 2) if path.exists() else 0.0
    return sizes


def bench_flood(size_mb: int) -> dict[str, Any]:
    prompt = f"@fake:flood={size_mb}"
    cli_bytes, cli_s = cli_output_bytes(prompt)
    with running_server() as server, server.client() as http:
        warm = run_job(http, "warm up", timeout_s=60)
        if warm["status"] != "completed":
            raise RuntimeError(f"the warm-up job ended {warm['status']}: {warm['error']}")
        time.sleep(SETTLE_S)
        before = memory_kib(server.pid)
        start = time.monotonic()
        with RssSampler(server.pid) as sampler:
            job = run_job(http, prompt)
        wall_s = time.monotonic() - start
        time.sleep(SETTLE_S)
        after = memory_kib(server.pid)
        return {
            "flood_mb": size_mb,
            "cli_output_mib": round(cli_bytes / MIB, 1),
            "cli_direct_s": round(cli_s, 2),
            "rss_before_mib": round(before["VmRSS"] / 1024, 1),
            "rss_peak_mib": round(sampler.peak_kib / 1024, 1),
            "rss_after_mib": round(after["VmRSS"] / 1024, 1),
            "hwm_after_mib": round(after["VmHWM"] / 1024, 1),
            "rss_samples": sampler.samples,
            "wall_s": round(wall_s, 2),
            "mib_per_s": round(cli_bytes / MIB / wall_s, 1),
            "status": job["status"],
            "error": job["error"],
            "events_truncated": job["events_truncated"],
            "db_mib": db_mib(server.data_dir),
        }


class HealthProber:
    """GETs /health every `HEALTH_PROBE_S` on a thread, timing each answer: how
    long the server's event loop was kept from serving anyone else."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.latencies: list[float] = []

    def _run(self) -> None:
        with self._server.client() as http:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    http.get("/health", timeout=120).raise_for_status()
                except httpx.HTTPError:
                    return
                self.latencies.append(time.monotonic() - start)
                self._stop.wait(HEALTH_PROBE_S)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(130)


def bench_long_line(size_mib: int) -> dict[str, Any]:
    """One job whose CLI prints a single line of `size_mib` MiB, with /health
    probed all along."""
    prompt = f"@fake:huge_line={size_mib * MIB}"
    with running_server() as server, server.client() as http:
        run_job(http, "warm up", timeout_s=60)
        start = time.monotonic()
        with HealthProber(server) as prober:
            job = run_job(http, prompt)
        wall_s = time.monotonic() - start
    return {
        "line_mib": size_mib,
        "wall_s": round(wall_s, 2),
        "status": job["status"],
        "health_probes": len(prober.latencies),
        "health": latency_ms(prober.latencies) if prober.latencies else None,
    }


def latency_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def chat_once(http: httpx.Client) -> float:
    start = time.monotonic()
    response = http.post("/v1/chat/completions", json=CHAT_BODY)
    elapsed = time.monotonic() - start
    if response.status_code != 200:
        raise RuntimeError(f"chat completion answered {response.status_code}: {response.text}")
    return elapsed


def cli_once() -> float:
    start = time.monotonic()
    subprocess.run([str(FAKE_CLAUDE), *CLI_ARGV], capture_output=True, check=True, timeout=30)
    return time.monotonic() - start


def bench_chat(server: Server) -> dict[str, Any]:
    with server.client() as http:
        chat_once(http)  # warm-up, not counted
        service = [chat_once(http) for _ in range(CHAT_RUNS)]
    cli_once()  # warm-up, not counted
    direct = [cli_once() for _ in range(CHAT_RUNS)]
    service_stats, direct_stats = latency_ms(service), latency_ms(direct)
    return {
        "runs": CHAT_RUNS,
        "service": service_stats,
        "direct_cli": direct_stats,
        "overhead_median_ms": round(service_stats["median_ms"] - direct_stats["median_ms"], 1),
        "overhead_p95_ms": round(service_stats["p95_ms"] - direct_stats["p95_ms"], 1),
    }


def run_all() -> dict[str, Any]:
    results: dict[str, Any] = {"flood": [], "long_line": [], "chat": None, "errors": []}
    for size in FLOOD_SIZES_MB:
        log(f"flood={size}: running ...")
        try:
            results["flood"].append(bench_flood(size))
        except Exception as exc:
            results["errors"].append(f"flood={size}: {exc}")
    for size in LONG_LINE_SIZES_MIB:
        log(f"one line of {size} MiB: running ...")
        try:
            results["long_line"].append(bench_long_line(size))
        except Exception as exc:
            results["errors"].append(f"long line {size} MiB: {exc}")
    log(f"chat: {CHAT_RUNS} completions and {CHAT_RUNS} direct CLI runs ...")
    try:
        with running_server() as server:
            results["chat"] = bench_chat(server)
    except Exception as exc:
        results["errors"].append(f"chat: {exc}")
    return results


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    parts = []
    floods: list[dict[str, Any]] = results["flood"]
    if floods:
        fields: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("CLI output (MiB)", lambda r: f"{r['cli_output_mib']}"),
            ("fake CLI alone, to a pipe (s)", lambda r: f"{r['cli_direct_s']}"),
            ("server RSS before (MiB)", lambda r: f"{r['rss_before_mib']}"),
            ("server RSS peak, 100 ms samples (MiB)", lambda r: f"{r['rss_peak_mib']}"),
            ("server VmHWM after (MiB)", lambda r: f"{r['hwm_after_mib']}"),
            ("server RSS after (MiB)", lambda r: f"{r['rss_after_mib']}"),
            ("wall time, submit to terminal (s)", lambda r: f"{r['wall_s']}"),
            ("CLI output processed (MiB/s)", lambda r: f"{r['mib_per_s']}"),
            ("job status", lambda r: r["status"]),
            ("events_truncated", lambda r: str(r["events_truncated"]).lower()),
            ("jobs.sqlite3 (MiB)", lambda r: f"{r['db_mib']['jobs.sqlite3']}"),
            ("jobs.sqlite3-wal (MiB)", lambda r: f"{r['db_mib']['jobs.sqlite3-wal']}"),
        ]
        rows = [("job memory", *(f"flood={r['flood_mb']}" for r in floods))]
        rows += [(name, *(get(r) for r in floods)) for name, get in fields]
        parts.append(table(rows))
    long_lines: list[dict[str, Any]] = results["long_line"]
    if long_lines:
        probe_keys = ("median_ms", "p95_ms", "max_ms")
        rows = [("one CLI line of", "job wall (s)", "probes", "/health median", "p95", "max (ms)")]
        for r in long_lines:
            health = r["health"] or {}
            probes = (str(health.get(k, "-")) for k in probe_keys)
            rows.append(
                (f"{r['line_mib']} MiB", str(r["wall_s"]), str(r["health_probes"]), *probes)
            )
        parts.append(table(rows))
    chat = results["chat"]
    if chat:
        keys = ("median_ms", "p95_ms", "min_ms", "max_ms")
        rows = [(f"latency of {chat['runs']} sequential runs (ms)", "median", "p95", "min", "max")]
        rows.append(("POST /v1/chat/completions", *(str(chat["service"][k]) for k in keys)))
        rows.append(("fake CLI, direct", *(str(chat["direct_cli"][k]) for k in keys)))
        overhead = (str(chat["overhead_median_ms"]), str(chat["overhead_p95_ms"]), "", "")
        rows.append(("difference (service overhead)", *overhead))
        parts.append(table(rows))
    for error in results["errors"]:
        parts.append(f"ERROR {error}")
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = run_all()
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
