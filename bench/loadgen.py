"""The load generator of the request-rate benchmarks: `wrk` when it is
installed, else a small asyncio HTTP/1.1 client of our own (run as
`python -m bench.loadgen URL ...`, printing one JSON line).

Both keep `connections` keep-alive connections busy for `duration_s`, one
request in flight on each, and count the answers; neither pipelines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.server import taskset

EXTRA_WAIT_S = 20.0  # beyond the run's duration, before the generator is killed


@dataclass(frozen=True)
class LoadResult:
    """One run of the load generator against one URL."""

    tool: str
    requests: int
    duration_s: float
    rps: float
    non_2xx: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


def which_tool(preferred: str = "auto") -> str:
    """Which load generator to use: wrk when asked for or found on PATH (auto), else python."""
    if preferred == "python":
        return "python"
    if preferred == "wrk" or (preferred == "auto" and shutil.which("wrk")):
        if shutil.which("wrk") is None:
            raise RuntimeError("wrk was asked for but is not installed (apt-get install wrk)")
        return "wrk"
    return "python"


def run_load(
    url: str,
    *,
    tool: str,
    connections: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
    cpus: str | None = None,
) -> LoadResult:
    """Load `url` for `duration_s` with `tool`, pinned to `cpus` if given."""
    header_args: list[str] = []
    for name, value in (headers or {}).items():
        header_args += ["-H", f"{name}: {value}"]
    if tool == "wrk":
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "--latency",
            *header_args,
            url,
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            "--connections",
            str(connections),
            "--duration",
            str(duration_s),
            *header_args,
        ]
    done = subprocess.run(
        [*taskset(cpus), *argv],
        capture_output=True,
        text=True,
        timeout=duration_s + EXTRA_WAIT_S,
        check=False,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return _parse_wrk(done.stdout) if tool == "wrk" else _parse_python(done.stdout)


def _parse_wrk(out: str) -> LoadResult:
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None or rps is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    seconds = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return LoadResult(
        tool="wrk",
        requests=int(found.group(1)),
        duration_s=seconds,
        rps=float(rps.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        p50_ms=_wrk_latency(out, "50%"),
        p99_ms=_wrk_latency(out, "99%"),
    )


def _wrk_latency(out: str, label: str) -> float | None:
    found = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if found is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return float(found.group(1)) * scale


def _parse_python(out: str) -> LoadResult:
    body = json.loads(out.strip().splitlines()[-1])
    return LoadResult(tool="python", **body)


# -- the fallback client, run in its own process --------------------------------


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    counts: dict[str, int],
    latencies: list[float],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline:
            start = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.monotonic() - start)
            counts["requests"] += 1
            if not 200 <= status < 400:
                counts["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["errors"] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _load(url: str, connections: int, duration_s: float, headers: list[str]) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path or '/'} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    request = "\r\n".join(lines).encode()
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}
    latencies: list[float] = []
    start = time.monotonic()
    deadline = start + duration_s
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _connection(host, port, request, deadline, counts, latencies)
                for _ in range(connections)
            )
        ),
        duration_s + EXTRA_WAIT_S / 2,
    )
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else None

    return LoadResult(
        tool="python",
        requests=counts["requests"],
        duration_s=elapsed,
        rps=counts["requests"] / elapsed,
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
        p50_ms=pct(0.5),
        p99_ms=pct(0.99),
    )


def main() -> int:
    """`python -m bench.loadgen URL [--connections N] [--duration S] [-H 'Name: value']`."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("-H", dest="headers", action="append", default=[])
    args = parser.parse_args()
    load = _load(args.url, args.connections, args.duration, args.headers)
    try:
        import uvloop  # the fastest loop there is here: the client must not be the limit
    except ImportError:
        result = asyncio.run(load)
    else:
        result = uvloop.run(load)
    body = {k: v for k, v in result.__dict__.items() if k != "tool"}
    print(json.dumps(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
