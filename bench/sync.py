"""Issue 13.2: the service's pre-run git sync (`sync_workspace`, called in
process) against a bare `git fetch` + `git rebase --autostash`, on up-to-date
clones of one local bare remote; and how many git processes each one starts."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core import Comparison, Report, comparison_table, rotated_async, run_async, table
from bench.server import clone, make_remote, temp_dir

ROUNDS = 40
WARM_UPS = 3
COUNT_RUNS = 3
GIT_TIMEOUT_S = 60.0
THROTTLE_S = 3600.0
GOAL_MS = 25.0
GOAL_THROTTLED_MS = 5.0
BRANCH = "main"


async def _git(cwd: Path, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {err.decode(errors='replace').strip()}")


async def baseline_sync(cwd: Path) -> None:
    """What a user's wrapper does: fetch, then rebase with autostash."""
    await _git(cwd, "fetch", "--quiet", "origin", BRANCH)
    await _git(cwd, "rebase", "--quiet", "--autostash", f"refs/remotes/origin/{BRANCH}")


def _sync_call() -> tuple[Callable[..., Awaitable[str | None]], Callable[[], Any]]:
    """`sync_workspace` and `FetchThrottle` as app/ has them now."""
    from app.workspace import sync as sync_module

    return sync_module.sync_workspace, sync_module.FetchThrottle


def _kwargs(fn: Callable[..., Any], **wanted: Any) -> dict[str, Any]:
    """The keyword arguments `fn` accepts, of those the service passes (app/main.py's
    run_git_sync), so that the benchmark follows app/ as it changes."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in wanted.items() if k in params}


@contextmanager
def counting_git(root: Path) -> Iterator[Path]:
    """PATH with a `git` first that appends its arguments to a log, then execs
    the real git; yields the log's path. Restores PATH afterwards."""
    real = shutil.which("git")
    if real is None:
        raise RuntimeError("git is not on PATH")
    shim_dir = root / "shim"
    shim_dir.mkdir()
    log_path = root / "git-calls.log"
    shim = shim_dir / "git"
    shim.write_text(f'#!/bin/sh\necho "$*" >> "{log_path}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{shim_dir}{os.pathsep}{old}"
    try:
        yield log_path
    finally:
        os.environ["PATH"] = old


def _calls(log_path: Path) -> list[str]:
    return log_path.read_text().splitlines() if log_path.exists() else []


def _subcommand(line: str) -> str:
    """The git subcommand of a logged call (skipping `-c key=value` options)."""
    words = line.split()
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] == "-c" else 1
    return words[i] if i < len(words) else "?"


def bench_sync() -> Report:
    """sync_workspace (unthrottled and throttled) vs fetch + rebase, rotated each round."""
    report = Report()
    sync_workspace, fetch_throttle = _sync_call()
    with temp_dir() as root:
        remote = make_remote(root)
        service_clone = clone(remote, root / "service-clone")
        throttled_clone = clone(remote, root / "throttled-clone")
        baseline_clone = clone(remote, root / "baseline-clone")
        throttle = fetch_throttle()
        # has_origin: the service knows it from the config it restores (where
        # sync_workspace takes it); the clones have an origin
        plain = _kwargs(
            sync_workspace,
            timeout_s=GIT_TIMEOUT_S,
            branch=BRANCH,
            min_interval_s=0,
            has_origin=True,
        )
        held = _kwargs(
            sync_workspace,
            timeout_s=GIT_TIMEOUT_S,
            branch=BRANCH,
            min_interval_s=THROTTLE_S,
            throttle=throttle,
            has_origin=True,
        )

        async def service_sync() -> float:
            start = time.perf_counter()
            error = await sync_workspace(service_clone, **plain)
            elapsed = time.perf_counter() - start
            if error is not None:
                raise RuntimeError(f"sync_workspace failed: {error}")
            return elapsed

        async def throttled_sync() -> float:
            start = time.perf_counter()
            error = await sync_workspace(throttled_clone, **held)
            elapsed = time.perf_counter() - start
            if error is not None:
                raise RuntimeError(f"sync_workspace (throttled) failed: {error}")
            return elapsed

        async def baseline() -> float:
            start = time.perf_counter()
            await baseline_sync(baseline_clone)
            return time.perf_counter() - start

        async def measure() -> list[list[float]]:
            for _ in range(WARM_UPS):  # the first throttled one fetches and marks
                await service_sync()
                await throttled_sync()
                await baseline()
            return await rotated_async(ROUNDS, [service_sync, throttled_sync, baseline])

        service_s, throttled_s, baseline_s = run_async(measure(), 300)

        async def count() -> dict[str, list[list[str]]]:
            calls: dict[str, list[list[str]]] = {"sync": [], "throttled": [], "baseline": []}
            with counting_git(root) as log_path:
                for name, fn in (
                    ("sync", service_sync),
                    ("throttled", throttled_sync),
                    ("baseline", baseline),
                ):
                    for _ in range(COUNT_RUNS):
                        before = len(_calls(log_path))
                        await fn()
                        calls[name].append([_subcommand(c) for c in _calls(log_path)[before:]])
            return calls

        calls = run_async(count(), 120)

    ms = [[s * 1000 for s in series] for series in (service_s, throttled_s, baseline_s)]
    unthrottled = Comparison.of(ms[0], ms[2])
    throttled = Comparison.of(ms[1], ms[2])
    counts = {name: len(runs[-1]) for name, runs in calls.items()}
    report.data = {
        "rounds": ROUNDS,
        "unthrottled_ms": unthrottled.as_dict(2),
        "throttled_ms": throttled.as_dict(2),
        "git_processes_per_call": counts,
        "git_subcommands": {name: runs[-1] for name, runs in calls.items()},
    }
    report.tables.append(
        comparison_table(
            f"git sync vs fetch + rebase --autostash (ms), {ROUNDS} rounds, order rotated",
            [
                ("sync_workspace", unthrottled),
                (f"sync_workspace, throttled ({THROTTLE_S:g} s)", throttled),
            ],
            digits=2,
        )
    )
    report.tables.append(
        table(
            [
                ("git processes per call", "count", "subcommands (in order)"),
                *(
                    (name, str(counts[name]), " ".join(calls[name][-1]) or "-")
                    for name in ("sync", "throttled", "baseline")
                ),
            ]
        )
    )
    report.goal(
        "13.2 sync_workspace, up to date, p50",
        f"{unthrottled.measured.p50:.1f} ms ({counts['sync']} git processes; "
        f"baseline {unthrottled.baseline.p50:.1f} ms)",
        f"<= {GOAL_MS:g} ms",
        unthrottled.measured.p50 <= GOAL_MS,
    )
    report.goal(
        "13.2 sync_workspace, fetch throttled, p50",
        f"{throttled.measured.p50:.1f} ms ({counts['throttled']} git processes)",
        f"<= {GOAL_THROTTLED_MS:g} ms",
        throttled.measured.p50 <= GOAL_THROTTLED_MS,
    )
    return report
