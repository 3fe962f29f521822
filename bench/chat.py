"""Issue 13.1: what a chat completion costs over running the same real CLI by
hand, both against the Anthropic API stand-in, interleaved."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from bench.core import Comparison, Report, comparison_table, interleaved, log
from bench.server import REAL_CLAUDE, clean_environ, clone, make_remote, service, temp_dir
from tests.fakes.anthropic_api import FakeAnthropic

ROUNDS = 30
WARM_UPS = 2
CLI_TIMEOUT_S = 60.0
CHAT_BODY = {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}
CLI_ARGV = ("-p", "--output-format", "stream-json", "--verbose", "--model", "haiku", "--", "hi")
GOAL_RATIO_P50 = 1.02
GOAL_DIFF_P95_MS = 50.0


def _offline_env(home: str, api_url: str) -> dict[str, str]:
    """The real CLI, offline, against the stand-in (as tests/e2e run it)."""
    return {
        "HOME": home,
        "ANTHROPIC_BASE_URL": api_url,
        "ANTHROPIC_API_KEY": "dummy",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


def bench_chat_real() -> Report:
    """POST /v1/chat/completions (GIT_SYNC on, a local bare remote) vs the same
    CLI run directly in a clone of the same remote."""
    if not REAL_CLAUDE.exists():
        raise RuntimeError(f"the real CLI is not installed at {REAL_CLAUDE}: run `make claude-cli`")
    report = Report()
    with temp_dir() as root, FakeAnthropic([{"text": "Hello from the stand-in."}]) as api:
        remote = make_remote(root)
        (root / "home").mkdir()
        agent_env = _offline_env(str(root / "home"), api.url)
        direct_dir = clone(remote, root / "direct")
        direct_env = {**clean_environ(), **agent_env}
        with (
            service(root, "chat", remote=remote, claude_bin=REAL_CLAUDE, env=agent_env) as svc,
            svc.client() as http,
        ):

            def chat() -> float:
                start = time.perf_counter()
                response = http.post("/v1/chat/completions", json=CHAT_BODY)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(
                        f"chat completion answered {response.status_code}: {response.text}"
                    )
                return elapsed

            def direct() -> float:
                start = time.perf_counter()
                done = run_cli([str(REAL_CLAUDE), *CLI_ARGV], direct_dir, direct_env)
                elapsed = time.perf_counter() - start
                _check_direct(done)
                return elapsed

            for _ in range(WARM_UPS):
                chat()
                direct()
            log(f"chat_real: {ROUNDS} interleaved rounds, a chat and a direct run each")
            service_s, direct_s = interleaved(ROUNDS, chat, direct)
            sync_ok = _sync_count(http)
    comparison = Comparison.of([s * 1000 for s in service_s], [s * 1000 for s in direct_s])
    report.data = {
        "rounds": ROUNDS,
        "cli": str(REAL_CLAUDE),
        "ms": comparison.as_dict(1),
        "git_syncs_ok": sync_ok,
    }
    report.tables.append(
        comparison_table(
            f"POST /v1/chat/completions vs the real CLI direct (ms), {ROUNDS} rounds",
            [("chat completion / direct CLI", comparison)],
        )
    )
    report.notes.append(
        "the direct run: `claude "
        + " ".join(CLI_ARGV)
        + "`, stdin /dev/null, in a clone of the same remote, the same HOME and API stand-in; "
        "the service adds its own options (--permission-mode, --max-budget-usd) to that argv"
    )
    if sync_ok is not None:
        report.notes.append(f"git syncs recorded by the service (git_operations_total): {sync_ok}")
    report.goal(
        "13.1 chat overhead over the bare real CLI, p50",
        f"ratio {comparison.ratio_p50:.3f} ({comparison.diff_p50:+.0f} ms; paired "
        f"{comparison.paired_diff.p50:+.0f} ms, 95% CI {_ci_ms(comparison)})",
        f"ratio <= {GOAL_RATIO_P50}",
        comparison.ratio_p50 <= GOAL_RATIO_P50,
    )
    report.goal(
        "13.1 chat overhead over the bare real CLI, p95",
        f"{comparison.diff_p95:+.0f} ms",
        f"<= +{GOAL_DIFF_P95_MS:g} ms",
        comparison.diff_p95 <= GOAL_DIFF_P95_MS,
    )
    return report


def run_cli(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would (stdin /dev/null), bounded; its process group
    is killed afterwards, whatever it left running."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _ci_ms(comparison: Comparison) -> str:
    interval = comparison.paired_ci95
    return "-" if interval is None else f"{interval[0]:+.0f}..{interval[1]:+.0f}"


def _check_direct(done: subprocess.CompletedProcess[bytes]) -> None:
    """The direct run must have answered as the service's did: a result, not an error."""
    if done.returncode != 0:
        raise RuntimeError(f"the direct CLI run exited {done.returncode}: {done.stderr[-500:]!r}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(b"{"):
            event = json.loads(line)
            if event.get("type") == "result":
                if event.get("is_error"):
                    raise RuntimeError(f"the direct CLI run failed: {event.get('result')}")
                return
    raise RuntimeError("the direct CLI run printed no result")


def _sync_count(http: httpx.Client) -> int | None:
    """Syncs the service counted as ok, from /metrics (None if it has no such metric)."""
    try:
        text = http.get("/metrics").text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("git_operations_total") and 'op="sync"' in line and "ok" in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return None
