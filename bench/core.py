"""What every benchmark shares: statistics, interleaved A/B loops, the report
a benchmark returns, goals and their verdicts, tables, the load average."""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 2**20


def log(message: str) -> None:
    """Progress on stderr (stdout is the report)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg)."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `samples` (not empty)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """Order statistics of one series of samples, in the samples' unit."""

    n: int
    p50: float
    p95: float
    p99: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        """The summary of a non-empty series."""
        if not samples:
            raise ValueError("no samples")
        return cls(
            n=len(samples),
            p50=statistics.median(samples),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            min=min(samples),
            max=max(samples),
            mean=statistics.fmean(samples),
        )

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (seconds * 1000 = milliseconds)."""
        return Summary(
            self.n,
            self.p50 * factor,
            self.p95 * factor,
            self.p99 * factor,
            self.min * factor,
            self.max * factor,
            self.mean * factor,
        )

    def as_dict(self, digits: int = 2) -> dict[str, float]:
        """For JSON: every field rounded."""
        return {
            "n": self.n,
            "p50": round(self.p50, digits),
            "p95": round(self.p95, digits),
            "p99": round(self.p99, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
            "mean": round(self.mean, digits),
        }


def median_ci95(samples: Sequence[float]) -> tuple[float, float] | None:
    """A distribution-free 95% confidence interval of the median: the order
    statistics k and n-k+1, k the largest rank with P(Binomial(n, 1/2) < k)
    <= 2.5%. None for fewer than 6 samples (no such k)."""
    n = len(samples)
    ordered = sorted(samples)
    below = 0.0  # P(X < k)
    k = 0
    while True:
        nxt = below + math.comb(n, k) / 2**n
        if nxt > 0.025:
            break
        below = nxt
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


@dataclass(frozen=True)
class Comparison:
    """A measured series against its baseline, taken interleaved in one loop."""

    measured: Summary
    baseline: Summary
    paired_diff: Summary  # measured - baseline, round by round
    diffs: tuple[float, ...]

    @classmethod
    def of(cls, measured: Sequence[float], baseline: Sequence[float]) -> Comparison:
        """Compare two series of the same length, sample i of each from round i."""
        diffs = tuple(m - b for m, b in zip(measured, baseline, strict=True))
        return cls(Summary.of(measured), Summary.of(baseline), Summary.of(diffs), diffs)

    @property
    def ratio_p50(self) -> float:
        return self.measured.p50 / self.baseline.p50

    @property
    def ratio_p95(self) -> float:
        return self.measured.p95 / self.baseline.p95

    @property
    def diff_p50(self) -> float:
        return self.measured.p50 - self.baseline.p50

    @property
    def diff_p95(self) -> float:
        return self.measured.p95 - self.baseline.p95

    def as_dict(self, digits: int = 2) -> dict[str, Any]:
        """For JSON."""
        return {
            "measured": self.measured.as_dict(digits),
            "baseline": self.baseline.as_dict(digits),
            "paired_diff": self.paired_diff.as_dict(digits),
            "ratio_p50": round(self.ratio_p50, 3),
            "ratio_p95": round(self.ratio_p95, 3),
            "diff_p50": round(self.diff_p50, digits),
            "diff_p95": round(self.diff_p95, digits),
            "paired_diff_p50_ci95": (
                [round(x, digits) for x in self.paired_ci95] if self.paired_ci95 else None
            ),
        }

    @property
    def paired_ci95(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the median paired difference."""
        return median_ci95(self.diffs)


def interleaved(
    rounds: int, measured: Callable[[], float], baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run A and B once per round, A first in even rounds and B first in odd
    ones, so drift in the machine's load falls on both alike."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(measured())
            b.append(baseline())
        else:
            b.append(baseline())
            a.append(measured())
    return a, b


async def interleaved_async(
    rounds: int,
    measured: Callable[[], Awaitable[float]],
    baseline: Callable[[], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """`interleaved`, for coroutines on one event loop."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(await measured())
            b.append(await baseline())
        else:
            b.append(await baseline())
            a.append(await measured())
    return a, b


async def rotated_async(
    rounds: int, fns: Sequence[Callable[[], Awaitable[float]]]
) -> list[list[float]]:
    """Run each of `fns` once per round, the order rotated by one each round (A B C,
    B C A, C A B, ...); one list of samples per function."""
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(rounds):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            samples[j].append(await fns[j]())
    return samples


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A callable that runs `fn` and returns how long it took, in seconds."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def run_async(coro: Awaitable[Any], timeout_s: float) -> Any:
    """Run a coroutine on a fresh event loop, bounded."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


@dataclass(frozen=True)
class Goal:
    """One figure an issue asked for, its target, and whether it is met."""

    figure: str
    measured: str
    target: str
    met: bool | None  # None: reported, no target to judge

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]


@dataclass
class Report:
    """What one benchmark hands back: tables for people, data for --json, goals."""

    tables: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def goal(self, figure: str, measured: str, target: str, met: bool | None) -> None:
        """Record a goal's verdict."""
        self.goals.append(Goal(figure, measured, target, met))


def table(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first row is the header, the first column left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table."""
    return f"{value:.{digits}f}"


def comparison_table(
    title: str, rows: Sequence[tuple[str, Comparison]], unit: str = "ms", digits: int = 1
) -> str:
    """`title`, then measured vs baseline per row: n, the p50s, their ratio and
    difference, the p95s and their difference, the median of the paired
    (round by round) differences with its 95% confidence interval."""
    header = (
        "series",
        "n",
        f"p50 ({unit})",
        "base p50",
        "ratio p50",
        "diff p50",
        f"p95 ({unit})",
        "base p95",
        "diff p95",
        "paired diff p50 [95% CI]",
    )
    out: list[tuple[str, ...]] = [header]
    for name, c in rows:
        out.append(
            (
                name,
                str(c.measured.n),
                fmt(c.measured.p50, digits),
                fmt(c.baseline.p50, digits),
                f"{c.ratio_p50:.3f}",
                f"{c.diff_p50:+.{digits}f}",
                fmt(c.measured.p95, digits),
                fmt(c.baseline.p95, digits),
                f"{c.diff_p95:+.{digits}f}",
                f"{c.paired_diff.p50:+.{digits}f} {_ci(c.paired_ci95, digits)}",
            )
        )
    return f"{title}\n{table(out)}"


def _ci(interval: tuple[float, float] | None, digits: int) -> str:
    if interval is None:
        return "[-]"
    return f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"
