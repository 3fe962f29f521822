"""The real process path: the fake `claude` as a subprocess, checked with `ps`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from app import proc
from app.agent import process
from app.agent.command import build_command
from app.agent.process import SpawnError, run_agent_process
from app.agent.stream import AgentResult, Event
from app.proc import child_environment
from tests.conftest import FAKE_CLAUDE, group_members, living, read_log, wait_until


async def run(
    prompt: str,
    cwd: Path,
    *,
    timeout_s: float = 20,
    claude_bin: str = str(FAKE_CLAUDE),
    env: dict[str, str] | None = None,
    on_line: process.OnLine | None = None,
) -> AgentResult:
    command = build_command(
        claude_bin=claude_bin,
        prompt=prompt,
        model="haiku",
        permission_mode="acceptEdits",
        max_budget_usd=1.0,
    )
    return await run_agent_process(
        command,
        cwd=cwd,
        env=env if env is not None else child_environment(os.environ),
        timeout_s=timeout_s,
        spawn=asyncio.create_subprocess_exec,
        on_line=on_line,
    )


@pytest.fixture
def env(fake_log: Path) -> dict[str, str]:
    return {**child_environment(os.environ), "FAKE_CLAUDE_LOG": str(fake_log)}


@pytest.fixture
def fast_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "TERM_GRACE_S", 0.5)
    monkeypatch.setattr(process, "EXIT_GRACE_S", 0.5)


async def test_a_run_answers_in_the_workspace(
    workspace: Path, env: dict[str, str], fake_log: Path
) -> None:
    result = await run("hi @fake:say=from_the_fake", workspace, env=env)
    assert result.ok, result
    assert result.text == "from the fake"
    assert result.exit_code == 0
    assert result.usage is not None and result.usage["cache_read_input_tokens"] == 3000
    (call,) = read_log(fake_log)
    assert Path(call["cwd"]) == workspace
    assert call["pgid"] == call["pid"]  # leader of its own process group
    assert call["stdin_devnull"]
    assert living([call["pid"]]) == []


async def test_the_agent_never_sees_the_service_token(
    workspace: Path, fake_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_BEARER_TOKEN", "secret")
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(fake_log))
    assert (await run("hi", workspace)).ok
    (call,) = read_log(fake_log)
    assert call["env_has_token"] is False
    assert call["env_has_claudecode"] is False


async def test_every_line_reaches_the_callback_as_it_is_printed(workspace: Path) -> None:
    seen: list[tuple[float, Event | None]] = []
    loop = asyncio.get_running_loop()

    async def on_line(line: bytes, event: Event | None) -> None:
        seen.append((loop.time(), event))

    result = await run("@fake:ticks=5 @fake:garbage", workspace, on_line=on_line)
    assert result.ok
    types = [e["type"] if e else None for _, e in seen]
    assert types[0] == "system" and types[-1] == "result"
    assert types.count(None) == 4  # the garbage lines, passed on as non-events
    ticks = [t for t, e in seen if e and e["type"] == "assistant"][:5]
    assert ticks[-1] - ticks[0] > 0.2  # arrived one by one, not in one batch at the end


async def test_a_timeout_kills_the_whole_group_grandchildren_included(
    workspace: Path, env: dict[str, str], fake_log: Path, fast_kill: None
) -> None:
    result = await run("@fake:grandchild @fake:sleep=60", workspace, env=env, timeout_s=1.5)
    assert result.timed_out and not result.ok
    (call,) = read_log(fake_log)
    grandchild = int(re.search(r"grandchild (\d+)", result.stderr_tail).group(1))  # type: ignore[union-attr]
    assert living([call["pid"], grandchild]) == []
    assert group_members(call["pgid"]) == []


async def test_a_cli_that_ignores_sigterm_gets_sigkill(
    workspace: Path, env: dict[str, str], fake_log: Path, fast_kill: None
) -> None:
    result = await run("@fake:ignore_term @fake:sleep=60", workspace, env=env, timeout_s=1)
    assert result.timed_out
    (call,) = read_log(fake_log)
    assert living([call["pid"]]) == []
    assert result.exit_code == -9


async def test_cancellation_kills_the_group_and_propagates(
    workspace: Path, env: dict[str, str], fake_log: Path
) -> None:
    started = asyncio.Event()

    async def on_line(line: bytes, event: Event | None) -> None:
        started.set()

    task = asyncio.create_task(
        run("@fake:grandchild @fake:ticks=1 @fake:sleep=60", workspace, env=env, on_line=on_line)
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []


async def test_a_descendant_holding_stdout_does_not_hold_the_run(
    workspace: Path, env: dict[str, str], fake_log: Path
) -> None:
    # The CLI exits without a result; the grandchild keeps the pipe open.
    result = await run("@fake:grandchild @fake:no_result", workspace, env=env, timeout_s=30)
    assert not result.timed_out
    assert result.exit_code == 0
    assert "partial answer" in result.text  # the raw-text fallback
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []


async def test_a_cli_lingering_after_its_result_is_ended(
    workspace: Path, env: dict[str, str], fake_log: Path, fast_kill: None
) -> None:
    result = await run("@fake:linger=60", workspace, env=env)
    assert result.ok and result.text == "Hello from the fake claude!"
    (call,) = read_log(fake_log)
    assert living([call["pid"]]) == []


async def test_a_chatty_stderr_does_not_stall_the_cli(workspace: Path) -> None:
    result = await run("@fake:stderr=2000000", workspace, timeout_s=20)
    assert result.ok
    assert set(result.stderr_tail) == {"e"}


async def test_a_one_megabyte_line_is_read_whole(workspace: Path) -> None:
    sizes: list[int] = []

    async def on_line(line: bytes, event: Event | None) -> None:
        if event and event["type"] == "assistant":
            sizes.append(len(event["message"]["content"][0]["text"]))

    result = await run("@fake:huge_line=1048576", workspace, on_line=on_line)
    assert result.ok
    assert 1048576 in sizes


async def test_a_line_over_the_reader_limit_is_dropped_and_the_run_goes_on(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "STDOUT_LINE_LIMIT_BYTES", 256 * 1024)
    result = await run("@fake:huge_line=1048576", workspace)
    assert result.ok and result.text == "Hello from the fake claude!"


async def test_a_large_prompt_travels_on_stdin_intact(
    workspace: Path, env: dict[str, str], fake_log: Path
) -> None:
    prompt = "--looks like an option @fake:digest " + "0123456789abcdef" * 20_000
    result = await run(prompt, workspace, env=env)
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    assert result.text == f"bytes={len(prompt.encode())} sha256={digest}"
    (call,) = read_log(fake_log)
    assert call["argv"][-1] == "--"


async def test_a_crash_reports_stderr_and_the_exit_code(workspace: Path) -> None:
    result = await run("@fake:crash", workspace)
    assert not result.ok
    assert result.text == "boom: fake crash"
    assert result.exit_code == 3


async def test_an_api_error_reports_the_clis_message(workspace: Path) -> None:
    result = await run("@fake:error=Invalid_API_key", workspace)
    assert not result.ok
    assert result.text == "Invalid API key"
    assert result.exit_code == 1


async def test_a_missing_cli_is_a_spawn_error(workspace: Path) -> None:
    with pytest.raises(SpawnError, match="was not found"):
        await run("hi", workspace, claude_bin=str(workspace / "no-such-claude"))


async def test_a_missing_workspace_is_a_spawn_error(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="workspace"):
        await run("hi", tmp_path / "missing")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0]


def test_a_group_whose_last_member_is_a_zombie_counts_as_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process that exited but is not reaped (its parent does not wait) is
    gone for the kill: waiting for PID 1 to reap it took seconds, or forever."""
    zombie = subprocess.Popen(["true"], start_new_session=True)  # not reaped until the end
    try:
        wait_until(lambda: _state(zombie.pid) == "Z", "the process is a zombie")
        assert proc.group_alive(zombie.pid) is False
        assert asyncio.run(proc.kill_group_by_id(zombie.pid)) is True  # something to signal
        # ...and it counted as gone after SIGTERM: no wait, no SIGKILL
        assert "ignored SIGTERM" not in caplog.text and "survived" not in caplog.text
        sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            assert proc.group_alive(sleeper.pid) is True
        finally:
            sleeper.kill()
            sleeper.wait(10)
    finally:
        zombie.wait(10)
    assert proc.group_alive(zombie.pid) is False
