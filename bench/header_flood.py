"""Issue 9: request heads too large for the service, sent without a token: a
1 MB header, and 10,000 header fields. What the answer is and how long it
takes, and how a `/health` probe fares during the flood against quiet
phases, interleaved.

The flood runs in processes of its own (`python -m bench.header_flood`), so
that its threads do not share an interpreter with the probe.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from bench.core import Report, Summary, table
from bench.server import ROOT, service, temp_dir

KINDS = ("1 MB header", "10,000 headers")
PHASE_S = 2.0
ROUNDS = 2
FLOOD_THREADS = 4
PROBE_INTERVAL_S = 0.01
ANSWER_TIMEOUT_S = 10.0
CHUNK = 64 * 1024


def head_of(kind: str, port: int) -> bytes:
    """The request head of a flood request: no token, far too large."""
    start = f"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    if kind == KINDS[0]:
        fields = b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n"
    else:
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    return start + fields + b"\r\n"


def one_request(port: int, head: bytes) -> tuple[str, float]:
    """Send `head` on a new connection, stopping as soon as an answer arrives;
    the status (or what went wrong) and the seconds from connect to the answer."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        answer = b""
        try:
            for i in range(0, len(head), CHUNK):
                sock.sendall(head[i : i + CHUNK])
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
            answer = sock.recv(4096)
        except OSError as exc:
            if not answer:
                try:
                    answer = sock.recv(4096)
                except OSError:
                    return type(exc).__name__, time.perf_counter() - start
        elapsed = time.perf_counter() - start
    if not answer:
        return "closed", elapsed
    parts = answer.split(b" ", 2)
    return (parts[1].decode() if len(parts) > 1 else "garbled"), elapsed


def flood(port: int, kind: str, seconds: float, threads: int) -> dict[str, Any]:
    """Send `kind` requests from `threads` threads for `seconds`; statuses and latencies."""
    head = head_of(kind, port)
    deadline = time.monotonic() + seconds
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < deadline:
            status, elapsed = one_request(port, head)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "431":
                    latencies.append(elapsed)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + ANSWER_TIMEOUT_S * 2)
    return {"statuses": statuses, "latencies": latencies}


def _run_flood(port: int, kind: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.header_flood",
            str(port),
            str(KINDS.index(kind)),
            str(PHASE_S),
            str(FLOOD_THREADS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _probe(http: httpx.Client, until: float, out: list[float], slowest: dict[str, float]) -> None:
    """GET /health every PROBE_INTERVAL_S until `until`; keep the slowest answer
    and when it began, in seconds into the phase."""
    began = time.perf_counter()
    while time.monotonic() < until:
        start = time.perf_counter()
        http.get("/health").raise_for_status()
        elapsed = time.perf_counter() - start
        out.append(elapsed)
        if elapsed > slowest.get("latency_s", 0.0):
            slowest.update(latency_s=elapsed, at_s=start - began)
        time.sleep(PROBE_INTERVAL_S)


def bench_header_flood() -> Report:
    """ROUNDS rounds of: quiet, flood of one kind, quiet, flood of the other
    (the kinds' order alternating); /health probed every 10 ms throughout."""
    report = Report()
    probes: dict[str, list[float]] = {"quiet": [], **{k: [] for k in KINDS}}
    slowest: dict[str, dict[str, float]] = {phase: {} for phase in probes}
    answers: dict[str, dict[str, Any]] = {k: {"statuses": {}, "latencies": []} for k in KINDS}
    with (
        temp_dir() as root,
        service(root, "heads") as svc,
        httpx.Client(base_url=svc.base_url, timeout=30) as http,
    ):
        http.get("/health").raise_for_status()
        for i in range(ROUNDS):
            order = KINDS if i % 2 == 0 else KINDS[::-1]
            for kind in order:
                _probe(http, time.monotonic() + PHASE_S, probes["quiet"], slowest["quiet"])
                proc = _run_flood(svc.port, kind)
                try:
                    _probe(http, time.monotonic() + PHASE_S, probes[kind], slowest[kind])
                    out, _ = proc.communicate(timeout=PHASE_S + ANSWER_TIMEOUT_S * 3)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(5)
                got = json.loads(out)
                for status, n in got["statuses"].items():
                    answers[kind]["statuses"][status] = answers[kind]["statuses"].get(status, 0) + n
                answers[kind]["latencies"] += got["latencies"]
        alive = http.get("/health").status_code == 200
    rows: list[tuple[str, ...]] = [
        ("flood request", "sent", "answers", "answer p50 (ms)", "p95", "max")
    ]
    data: dict[str, Any] = {"phase_s": PHASE_S, "rounds": ROUNDS, "threads": FLOOD_THREADS}
    for kind in KINDS:
        statuses = answers[kind]["statuses"]
        lat = answers[kind]["latencies"]
        summary = Summary.of(lat).scaled(1000) if lat else None
        rows.append(
            (
                kind,
                str(sum(statuses.values())),
                ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
                *(
                    (f"{summary.p50:.2f}", f"{summary.p95:.2f}", f"{summary.max:.2f}")
                    if summary
                    else ("-", "-", "-")
                ),
            )
        )
        data[kind] = {"statuses": statuses, "answer_ms": summary.as_dict(2) if summary else None}
        only_431 = bool(statuses) and set(statuses) == {"431"}
        report.goal(
            f"9 {kind} without a token: the answer",
            ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items()))
            + (
                f"; p50 {summary.p50:.1f} / p95 {summary.p95:.1f} / max {summary.max:.0f} ms"
                if summary
                else ""
            ),
            "431 to each",
            only_431,
        )
    report.tables.append(
        f"{FLOOD_THREADS} threads per flood, each request on a new connection, {PHASE_S:g} s "
        f"phases, {ROUNDS} rounds\n" + table(rows)
    )
    rows = [
        (
            "GET /health during",
            "n",
            "p50 (ms)",
            "p95",
            "max",
            "max at (s into phase)",
            "p95 / quiet p95",
        )
    ]
    quiet = Summary.of(probes["quiet"]).scaled(1000)
    for phase, samples in probes.items():
        s = Summary.of(samples).scaled(1000)
        rows.append(
            (
                phase if phase != "quiet" else "no flood",
                str(s.n),
                f"{s.p50:.2f}",
                f"{s.p95:.2f}",
                f"{s.max:.2f}",
                f"{slowest[phase].get('at_s', 0.0):.2f}",
                f"{s.p95 / quiet.p95:.2f}",
            )
        )
        data[f"probe_{phase}_ms"] = s.as_dict(2)
        if phase != "quiet":
            report.goal(
                f"9 /health during a flood of {phase} (vs no flood)",
                f"p50 {s.p50:.1f} / p95 {s.p95:.1f} / max {s.max:.0f} ms "
                f"(quiet {quiet.p50:.1f} / {quiet.p95:.1f} / {quiet.max:.0f})",
                "reported",
                None,
            )
    report.tables.append(table(rows))
    if not alive:
        report.errors.append("the service did not answer /health after the floods")
    report.data = data
    return report


def main() -> int:
    """`python -m bench.header_flood PORT KIND_INDEX SECONDS THREADS`: one flood, JSON out."""
    parser = argparse.ArgumentParser(prog="python -m bench.header_flood")
    parser.add_argument("port", type=int)
    parser.add_argument("kind", type=int, choices=range(len(KINDS)))
    parser.add_argument("seconds", type=float)
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    print(json.dumps(flood(args.port, KINDS[args.kind], args.seconds, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
