"""Issues 13.6, 13.7 and 11: request latency with 10,000 jobs queued against
the same requests with 100 queued, on SQLite and on PostgreSQL.

Two services run side by side, one per queue depth, each with its only slot
held by a job that sleeps, so nothing else is ever claimed; requests go to
one and the other in turn (the order alternating each round)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.core import Comparison, Report, comparison_table, log, table
from bench.jobs import fill_queue, fill_store, submit
from bench.server import Service, service, temp_dir

SMALL = 100
LARGE = 10_000
ROUNDS = 60
HOLDER = "@fake:sleep=600"
START_WAIT_S = 30.0
FILL_API_TIMEOUT_S = 300.0
GOAL_LIST = 1.3
GOAL_SUBMIT_GET = 1.2


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server (tests/pgserver.py), stopped afterwards."""
    from tests.pgserver import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    server = PostgresServer()  # its own dir, which the postgres user can reach
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _holder_running(svc: Service, http: httpx.Client) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        running = http.get("/jobs", params={"status": "running", "limit": 1}).json()["jobs"]
        if running:
            if running[0]["prompt"] != HOLDER:
                raise RuntimeError(f"{svc.root.name}: a job other than the holder is running")
            return
        time.sleep(0.05)
    raise RuntimeError(f"{svc.root.name}: the holder job did not start in {START_WAIT_S:g} s")


def _probes(http: httpx.Client) -> dict[str, Callable[[], float]]:
    """The timed requests against one service: list, get (the last queued job), submit."""
    newest = http.get("/jobs", params={"limit": 1}).raise_for_status().json()["jobs"][0]
    if newest["status"] != "queued":
        raise RuntimeError(f"the newest job is {newest['status']}, not queued")
    last_id = newest["job_id"]

    def timed_get(path: str, **params: Any) -> float:
        start = time.perf_counter()
        response = http.get(path, params=params)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text}")
        return elapsed

    def submit() -> float:
        start = time.perf_counter()
        response = http.post("/execute", json={"prompt": "probe"})
        elapsed = time.perf_counter() - start
        if response.status_code != 202:
            raise RuntimeError(f"POST /execute answered {response.status_code}: {response.text}")
        # cancelled (untimed), so the queue stays as deep as it was
        job_id = response.json()["job_id"]
        http.post(f"/jobs/{job_id}/cancel").raise_for_status()
        return elapsed

    return {
        "GET /jobs?limit=50": lambda: timed_get("/jobs", limit=50),
        "GET /jobs/{id}": lambda: timed_get(f"/jobs/{last_id}"),
        "POST /execute": submit,
    }


def _measure(backend: str, root: Path, report: Report) -> dict[str, Comparison]:
    envs: dict[str, dict[str, str]] = {}
    fills: dict[str, float] = {}
    via_api: set[str] = set()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres()) if backend == "postgres" else None
        for name, depth in (("small", SMALL), ("large", LARGE)):
            prompts = [HOLDER, *(f"queued job {i}" for i in range(depth))]
            env = {"MAX_QUEUE_DEPTH": "1000000"}
            log(f"queue_depth: {backend}: writing {depth} queued jobs with the store's code")
            url = pg.create_database(f"bench_{name}") if pg is not None else None
            if url is not None:
                env["DATABASE_URL"] = url
            try:
                if url is not None:
                    fills[name] = fill_store(prompts, database_url=url, concurrency=4)
                else:
                    fills[name] = fill_store(prompts, data_dir=root / name / "data")
            except (ImportError, AttributeError, TypeError) as exc:
                # the store's code changed under us: the API will do, slowly
                report.notes.append(f"{backend}: the store's submit() failed ({exc!r})")
                via_api.add(name)
            envs[name] = env
        small = stack.enter_context(service(root, "small", env=envs["small"]))
        large = stack.enter_context(service(root, "large", env=envs["large"]))
        small_http = stack.enter_context(small.client())
        large_http = stack.enter_context(large.client())
        for name, svc, http, depth in (
            ("small", small, small_http, SMALL),
            ("large", large, large_http, LARGE),
        ):
            if name in via_api:
                submit(http, HOLDER)
                _holder_running(svc, http)
                log(f"queue_depth: {backend}: submitting {depth} jobs through the API")
                fills[name] = fill_queue(svc, depth, FILL_API_TIMEOUT_S)[1]
            _holder_running(svc, http)
        small_probes, large_probes = _probes(small_http), _probes(large_http)
        samples: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in small_probes}
        # The reads first: the submissions (each then cancelled) would put
        # cancelled jobs at the top of the list's first page.
        for phase in (("GET /jobs?limit=50", "GET /jobs/{id}"), ("POST /execute",)):
            for name in phase:  # warm-up
                small_probes[name]()
                large_probes[name]()
            log(f"queue_depth: {backend}: {ROUNDS} rounds of {', '.join(phase)} each side")
            for i in range(ROUNDS):
                for name in phase:
                    big, little = samples[name]
                    if i % 2 == 0:
                        big.append(large_probes[name]())
                        little.append(small_probes[name]())
                    else:
                        little.append(small_probes[name]())
                        big.append(large_probes[name]())
    how = (
        "through the API (POST /execute) after the services started"
        if via_api
        else "with the store's own submit() before the services started"
    )
    report.notes.append(
        f"{backend}: queues written {how}: {SMALL} in {fills['small']:.1f} s, "
        f"{LARGE} in {fills['large']:.1f} s"
    )
    return {
        name: Comparison.of([s * 1000 for s in big], [s * 1000 for s in little])
        for name, (big, little) in samples.items()
    }


def bench_queue_depth() -> Report:
    """Both backends; goals judged on each."""
    report = Report()
    results: dict[str, dict[str, Comparison]] = {}
    for backend in ("sqlite", "postgres"):
        try:
            with temp_dir() as root:
                results[backend] = _measure(backend, root, report)
        except Exception as exc:  # the other backend still runs
            report.errors.append(f"{backend}: {type(exc).__name__}: {exc}")
            continue
        report.tables.append(
            comparison_table(
                f"{backend}: {LARGE} queued (measured) vs {SMALL} queued (baseline), ms, "
                f"{ROUNDS} rounds",
                list(results[backend].items()),
                digits=2,
            )
        )
        by = results[backend]
        report.goal(
            f"13.6 GET /jobs?limit=50 p50, {LARGE} vs {SMALL} queued ({backend})",
            f"{by['GET /jobs?limit=50'].ratio_p50:.2f}x "
            f"({by['GET /jobs?limit=50'].measured.p50:.1f} vs "
            f"{by['GET /jobs?limit=50'].baseline.p50:.1f} ms)",
            f"<= {GOAL_LIST}x",
            by["GET /jobs?limit=50"].ratio_p50 <= GOAL_LIST,
        )
        for name in ("POST /execute", "GET /jobs/{id}"):
            report.goal(
                f"13.7 {name} p50, {LARGE} vs {SMALL} queued ({backend})",
                f"{by[name].ratio_p50:.2f}x ({by[name].measured.p50:.1f} vs "
                f"{by[name].baseline.p50:.1f} ms)",
                f"<= {GOAL_SUBMIT_GET}x",
                by[name].ratio_p50 <= GOAL_SUBMIT_GET,
            )
    if results:
        rows = [("GET /jobs/{id} p50 (ms)", f"{SMALL} jobs", f"{LARGE} jobs", "ratio")]
        for backend, by in results.items():
            c = by["GET /jobs/{id}"]
            rows.append(
                (backend, f"{c.baseline.p50:.2f}", f"{c.measured.p50:.2f}", f"{c.ratio_p50:.2f}")
            )
        report.tables.append("issue 11: GET /jobs/{id} by backend\n" + table(rows))
    report.data = {
        "small": SMALL,
        "large": LARGE,
        "rounds": ROUNDS,
        "ms": {b: {n: c.as_dict(2) for n, c in by.items()} for b, by in results.items()},
    }
    return report
