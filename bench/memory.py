"""The service's memory under a flood of CLI output, and how long a single
huge CLI line holds its event loop (the two benchmarks kept from before)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.core import MIB, Report, Summary, table
from bench.jobs import run_job, warm_up
from bench.server import FAKE_CLAUDE, Service, memory_kib, service, temp_dir

FLOOD_SIZES_MB = (20, 200)
LONG_LINE_SIZES_MIB = (1, 8)
HEALTH_PROBE_S = 0.05
SAMPLE_S = 0.1
SETTLE_S = 1.0
JOB_TIMEOUT_S = 300.0
CLI_ARGV = ("-p", "--output-format", "stream-json", "--verbose", "--model", "haiku", "--")


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


class HealthProber:
    """GETs /health every `HEALTH_PROBE_S` on a thread, timing each answer: how
    long the server's event loop was kept from serving anyone else."""

    def __init__(self, base_url: str, interval_s: float = HEALTH_PROBE_S) -> None:
        self._base_url = base_url
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.latencies: list[float] = []
        self.failures = 0

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=60) as http:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    http.get("/health").raise_for_status()
                except httpx.HTTPError:
                    self.failures += 1
                else:
                    self.latencies.append(time.perf_counter() - start)
                self._stop.wait(self._interval_s)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(70)


def cli_output_bytes(prompt: str, timeout_s: float = 120.0) -> tuple[int, float]:
    """Bytes the fake CLI prints for `prompt` when run directly, and how long it takes."""
    start = time.monotonic()
    total = 0
    with subprocess.Popen(
        [str(FAKE_CLAUDE), *CLI_ARGV, prompt], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(MIB):
            total += len(chunk)
            if time.monotonic() - start > timeout_s:
                proc.kill()
                raise TimeoutError(f"the fake CLI ran over {timeout_s:g} s")
        proc.wait(timeout_s)
    return total, time.monotonic() - start


def _db_mib(data_dir: Path) -> dict[str, float]:
    sizes = {}
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal"):
        path = data_dir / name
        sizes[name] = round(path.stat().st_size / MIB, 2) if path.exists() else 0.0
    return sizes


def _flood_once(svc: Service, size_mb: int) -> dict[str, Any]:
    prompt = f"@fake:flood={size_mb}"
    cli_bytes, cli_s = cli_output_bytes(prompt)
    with svc.client() as http:
        warm_up(http)
        time.sleep(SETTLE_S)
        before = memory_kib(svc.pid)
        start = time.monotonic()
        with RssSampler(svc.pid) as sampler:
            job = run_job(http, prompt, JOB_TIMEOUT_S)
        wall_s = time.monotonic() - start
        time.sleep(SETTLE_S)
        after = memory_kib(svc.pid)
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
        "events_truncated": job["events_truncated"],
        "db_mib": _db_mib(svc.data_dir),
    }


def bench_flood() -> Report:
    """Server RSS while a job's CLI prints 20 and 200 MiB (a fresh server each)."""
    report = Report()
    rows: list[dict[str, Any]] = []
    for size in FLOOD_SIZES_MB:
        with temp_dir() as root, service(root, f"flood{size}") as svc:
            rows.append(_flood_once(svc, size))
    report.data["flood"] = rows
    fields: list[tuple[str, str]] = [
        ("CLI output (MiB)", "cli_output_mib"),
        ("fake CLI alone, to a pipe (s)", "cli_direct_s"),
        ("server RSS before (MiB)", "rss_before_mib"),
        ("server RSS peak, 100 ms samples (MiB)", "rss_peak_mib"),
        ("server VmHWM after (MiB)", "hwm_after_mib"),
        ("server RSS after (MiB)", "rss_after_mib"),
        ("wall time, submit to terminal (s)", "wall_s"),
        ("CLI output processed (MiB/s)", "mib_per_s"),
        ("job status", "status"),
        ("events_truncated", "events_truncated"),
    ]
    out = [("memory under a flood of CLI output", *(f"flood={r['flood_mb']}" for r in rows))]
    out += [(name, *(str(r[key]).lower() for r in rows)) for name, key in fields]
    out.append(("jobs.sqlite3 (MiB)", *(str(r["db_mib"]["jobs.sqlite3"]) for r in rows)))
    out.append(("jobs.sqlite3-wal (MiB)", *(str(r["db_mib"]["jobs.sqlite3-wal"]) for r in rows)))
    report.tables.append(table(out))
    report.goal(
        "memory: peak RSS over idle, flood=" + "/".join(str(r["flood_mb"]) for r in rows),
        " / ".join(f"+{r['rss_peak_mib'] - r['rss_before_mib']:.1f} MiB" for r in rows),
        "reported (kept from before)",
        None,
    )
    for r in rows:
        if r["status"] != "completed":
            report.errors.append(f"flood={r['flood_mb']}: the job ended {r['status']}")
    return report


def bench_long_line() -> Report:
    """/health latency while a job's CLI prints one line of 1 and 8 MiB."""
    report = Report()
    rows: list[dict[str, Any]] = []
    for size in LONG_LINE_SIZES_MIB:
        with temp_dir() as root, service(root, f"line{size}") as svc, svc.client() as http:
            warm_up(http)
            start = time.monotonic()
            with HealthProber(svc.base_url) as prober:
                job = run_job(http, f"@fake:huge_line={size * MIB}", JOB_TIMEOUT_S)
            wall_s = time.monotonic() - start
        health = Summary.of(prober.latencies).scaled(1000) if prober.latencies else None
        rows.append(
            {
                "line_mib": size,
                "wall_s": round(wall_s, 2),
                "status": job["status"],
                "probes": len(prober.latencies),
                "health_ms": health.as_dict(1) if health else None,
            }
        )
        if job["status"] != "completed":
            report.errors.append(f"long line {size} MiB: the job ended {job['status']}")
    report.data["long_line"] = rows
    for r in rows:
        h = r["health_ms"] or {}
        report.goal(
            f"stalls: /health max during a {r['line_mib']} MiB CLI line",
            f"{h.get('max', '-')} ms (p50 {h.get('p50', '-')})",
            "reported (kept from before)",
            None,
        )
    out: list[tuple[str, ...]] = [
        ("one CLI line of", "job wall (s)", "probes", "/health p50", "p95", "max (ms)")
    ]
    for r in rows:
        h = r["health_ms"] or {}
        out.append(
            (
                f"{r['line_mib']} MiB",
                str(r["wall_s"]),
                str(r["probes"]),
                *(str(h.get(k, "-")) for k in ("p50", "p95", "max")),
            )
        )
    report.tables.append(table(out))
    return report
