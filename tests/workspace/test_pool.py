"""Several agents at once, each in a workspace of its own (MAX_CONCURRENT_RUNS > 1).

Real servers, real git, a local bare remote; the fake `claude` holds a run
until the test releases it (`@fake:wait_for=PATH`), so "at the same time" is
seen, not timed.
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.workspace.pool import slot_path
from tests.conftest import (
    FAKE_CLAUDE,
    TOKEN,
    Server,
    cli,
    git,
    group_members,
    make_remote,
    read_log,
    start_server,
    wait_until,
)
from tests.jobs.helpers import submit, wait_for


def pool_env(tmp_path: Path, remote: Path, slots: int, **extra: str) -> dict[str, str]:
    return {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(tmp_path / "ws"),
        "DATA_DIR": str(tmp_path / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "FAKE_CLAUDE_LOG": str(tmp_path / "fake.jsonl"),
        "GIT_REPO_URL": str(remote),
        "GIT_PUSH": "true",
        "MAX_CONCURRENT_RUNS": str(slots),
        "SHUTDOWN_GRACE_SECONDS": "1",
        **extra,
    }


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """Runs whose prompt says `@fake:wait_for=<gate>/NAME` wait until NAME exists."""
    path = tmp_path / "gate"
    path.mkdir()
    return path


def statuses(client: httpx.Client, job_ids: list[str]) -> list[str]:
    return [client.get(f"/jobs/{job_id}").json()["status"] for job_id in job_ids]


def calls(tmp_path: Path, marker: str) -> list[dict]:
    return [c for c in read_log(tmp_path / "fake.jsonl") if marker in c["prompt_head"]]


def started(tmp_path: Path, marker: str, count: int = 1) -> list[dict]:
    """Wait until `count` CLIs whose prompt holds `marker` have started; return them."""
    wait_until(lambda: len(calls(tmp_path, marker)) >= count, f"{count} x {marker!r} started")
    return calls(tmp_path, marker)


@pytest.fixture
def three(tmp_path: Path, remote: Path) -> Iterator[Server]:
    server = start_server(pool_env(tmp_path, remote, 3), tmp_path / "server.log")
    yield server
    server.stop()


def test_three_jobs_run_at_once_in_three_workspaces_and_all_land(
    three: Server, tmp_path: Path, remote: Path, gate: Path
) -> None:
    with three.client() as client:
        jobs = [
            submit(client, f"job-{i} @fake:write=file-{i}.txt @fake:wait_for={gate}/go-{i}")
            for i in range(3)
        ]
        started(tmp_path, "job-", 3)
        assert statuses(client, jobs) == ["running"] * 3  # all three at once
        health = client.get("/health").json()
        assert (health["busy"], health["runs"], health["slots"]) == (True, 3, 3)
        cwds = {c["cwd"] for c in started(tmp_path, "job-", 3)}
        assert len(cwds) == 3  # three workspaces
        for i in range(3):
            (gate / f"go-{i}").touch()
        done = [wait_for(client, job_id) for job_id in jobs]
    assert [j["status"] for j in done] == ["completed"] * 3
    assert sorted(j["slot"] for j in done) == [0, 1, 2]
    assert all(j["git"]["pushed"] and j["git"]["branch"] == "main" for j in done)
    files = git("ls-tree", "--name-only", "main", cwd=remote).split()
    assert {"file-0.txt", "file-1.txt", "file-2.txt"} <= set(files)
    subjects = git("log", "--format=%s", "main", cwd=remote).splitlines()
    assert sum(1 for s in subjects if s.startswith("agent: job-")) == 3
    assert (tmp_path / "data" / "workspaces" / "1" / ".git").is_dir()
    assert slot_path(tmp_path / "data", 2, tmp_path / "ws") == tmp_path / "data/workspaces/2"


def test_chats_get_a_free_slot_and_503_only_when_all_are_taken(
    tmp_path: Path, remote: Path, gate: Path
) -> None:
    server = start_server(pool_env(tmp_path, remote, 2), tmp_path / "server.log")
    chat = {"messages": [{"role": "user", "content": "hi @fake:say=pong"}]}
    try:
        with server.client() as client:
            first = submit(client, f"first @fake:wait_for={gate}/first")
            started(tmp_path, "first")
            answer = client.post("/v1/chat/completions", json=chat)  # the other slot
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "pong"
            second = submit(client, f"second @fake:wait_for={gate}/second")
            (second_call,) = started(tmp_path, "second")
            busy = client.post("/v1/chat/completions", json=chat)
            assert busy.status_code == 503 and busy.json()["detail"] == "agent is busy"
            assert busy.headers["Retry-After"] == "5"
            cancelled = client.post(f"/jobs/{second}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert group_members(second_call["pgid"]) == []
            assert client.get(f"/jobs/{first}").json()["status"] == "running"
            (gate / "first").touch()
            assert wait_for(client, first)["status"] == "completed"
    finally:
        server.stop()


def test_a_slot_cannot_see_or_break_another_slots_work(
    three: Server, tmp_path: Path, remote: Path, gate: Path
) -> None:
    """An uncommitted file in one slot is not in another; `rm -rf .git` in one
    slot leaves the others' repositories working."""
    with three.client() as client:
        writer = submit(client, f"writer @fake:write=secret.txt @fake:wait_for={gate}/writer")
        writer_cwd = Path(started(tmp_path, "writer")[0]["cwd"])
        # The fake logs its start before it writes: wait for the file, uncommitted.
        wait_until(lambda: (writer_cwd / "secret.txt").exists(), "the writer's file")
        reader = wait_for(client, submit(client, "reader @fake:read=secret.txt"))
        assert reader["status"] == "failed"  # the file is not there to read
        assert Path(calls(tmp_path, "reader")[0]["cwd"]) != writer_cwd
        breaker = submit(client, f"breaker @fake:shell=rm_-rf_.git @fake:wait_for={gate}/brk")
        started(tmp_path, "breaker")
        builder = wait_for(client, submit(client, "builder @fake:write=built.txt"))
        assert builder["status"] == "completed" and builder["git"]["pushed"] is True
        (gate / "writer").touch()
        (gate / "brk").touch()
        assert wait_for(client, writer)["git"]["pushed"] is True
        broken = wait_for(client, breaker)
    assert "no longer a git repository" in broken["git"]["push_error"]
    files = git("ls-tree", "--name-only", "main", cwd=remote).split()
    assert {"secret.txt", "built.txt"} <= set(files)


def test_two_slots_editing_the_same_line_lose_nothing(
    three: Server, tmp_path: Path, remote: Path, gate: Path
) -> None:
    with three.client() as client:
        jobs = [
            submit(
                client,
                f"edit-{i} @fake:shell=echo_{i}_>README @fake:wait_for={gate}/go-{i}",
            )
            for i in range(2)
        ]
        started(tmp_path, "edit-", 2)
        (gate / "go-0").touch()
        first = wait_for(client, jobs[0])
        (gate / "go-1").touch()
        second = wait_for(client, jobs[1])
    assert first["git"]["branch"] == "main" and first["git"]["pushed"] is True
    assert second["git"]["branch"] == f"agent-service/{jobs[1]}"
    assert second["git"]["pushed"] is True
    assert git("show", "main:README", cwd=remote) == "0"
    assert git("show", f"agent-service/{jobs[1]}:README", cwd=remote) == "1"


def test_after_sigkill_with_two_jobs_running_both_are_interrupted_and_the_queue_runs(
    tmp_path: Path, remote: Path, gate: Path
) -> None:
    env = pool_env(tmp_path, remote, 2)
    server = start_server(env, tmp_path / "server.log")
    with server.client() as client:
        running = [
            submit(client, f"held-{i} @fake:grandchild @fake:wait_for={gate}/never")
            for i in range(2)
        ]
        groups = [c["pgid"] for c in started(tmp_path, "held-", 2)]
        queued = [submit(client, f"queued-{i}") for i in range(3)]
    server.stop(signal.SIGKILL)
    assert all(group_members(pgid) for pgid in groups)  # they outlived the service
    again = start_server(env, tmp_path / "server2.log")
    try:
        assert [group_members(pgid) for pgid in groups] == [[], []]
        with again.client() as client:
            assert statuses(client, running) == ["interrupted"] * 2
            finished = [wait_for(client, job_id) for job_id in queued]
            assert [j["status"] for j in finished] == ["completed"] * 3
    finally:
        again.stop()


def test_slots_on_an_empty_bare_remote_start_and_all_land(tmp_path: Path, gate: Path) -> None:
    """`git init --bare` as the README suggests: nothing to clone a branch of
    yet. Both slots start on the unborn branch; two runs at once, each the
    first commit of its slot, both land on it, one rebased onto the other."""
    remote = tmp_path / "empty.git"
    git("init", "--quiet", "--bare", "--initial-branch=trunk", str(remote), cwd=tmp_path)
    server = start_server(pool_env(tmp_path, remote, 2), tmp_path / "server.log")
    try:
        with server.client() as client:
            jobs = [
                submit(client, f"first-{i} @fake:write=f{i}.txt @fake:wait_for={gate}/go")
                for i in range(2)
            ]
            assert len({c["cwd"] for c in started(tmp_path, "first-", 2)}) == 2
            (gate / "go").touch()
            done = [wait_for(client, job_id) for job_id in jobs]
    finally:
        server.stop()
    assert [j["status"] for j in done] == ["completed"] * 2
    assert [(j["git"]["pushed"], j["git"]["branch"]) for j in done] == [(True, "trunk")] * 2
    assert git("ls-tree", "--name-only", "trunk", cwd=remote).split() == ["f0.txt", "f1.txt"]
    assert git("branch", "--format=%(refname:short)", cwd=remote).split() == ["trunk"]


def test_several_slots_without_a_remote_refuse_to_start(tmp_path: Path) -> None:
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(tmp_path / "ws"),
        "DATA_DIR": str(tmp_path / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "MAX_CONCURRENT_RUNS": "2",
    }
    done = cli("serve", "--port", "0", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "MAX_CONCURRENT_RUNS=2 needs a remote the slots share" in done.stderr
    assert "set GIT_REPO_URL" in done.stderr


def test_slots_are_kept_across_restarts(tmp_path: Path, remote: Path) -> None:
    env = pool_env(tmp_path, remote, 2)
    server = start_server(env, tmp_path / "server.log")
    server.stop()
    slot = tmp_path / "data" / "workspaces" / "1"
    (slot / "kept.txt").write_text("left by a run\n")
    again = start_server(env, tmp_path / "server2.log")
    try:
        assert (slot / "kept.txt").exists()  # not cloned again
        with again.client() as client:
            assert client.get("/health").json()["slots"] == 2
    finally:
        again.stop()


def test_one_slot_behaves_as_before(tmp_path: Path, remote: Path) -> None:
    server = start_server(pool_env(tmp_path, remote, 1), tmp_path / "server.log")
    try:
        with server.client() as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(
                client.post,
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "@fake:sleep=2"}]},
            )
            wait_until(lambda: client.get("/health").json()["busy"], "the chat holds the slot")
            health = client.get("/health").json()
            assert (health["runs"], health["slots"]) == (1, 1)
            assert held.result(30).status_code == 200
        assert not (tmp_path / "data" / "workspaces").exists()
    finally:
        server.stop()
