"""The job API through a real server on loopback, with the fake `claude`."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAKE_CLAUDE, TOKEN, Server, git, group_members, read_log, start_server
from tests.jobs.helpers import sse, submit, wait_for
from tests.jobs.stores import BACKENDS
from tests.pgserver import PostgresServer


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    """One server for the tests that only need the defaults, on each job store."""
    root = tmp_path_factory.mktemp("jobs")
    database: dict[str, str] = {}
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database["DATABASE_URL"] = postgres.create_database(f"jobs_{uuid.uuid4().hex}")
    workspace = root / "workspace"
    workspace.mkdir()
    git("init", "--quiet", cwd=workspace)
    log = root / "fake.jsonl"
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(workspace),
        "DATA_DIR": str(root / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "FAKE_CLAUDE_LOG": str(log),
        "JOB_TIMEOUT_SECONDS": "60",
        "HOME": str(root / "home"),  # where the CLI keeps its sessions' transcripts
        **database,
    }
    server = start_server(env, root / "server.log")
    yield server, log
    server.stop()


@pytest.fixture
def client(shared: tuple[Server, Path]) -> Iterator[httpx.Client]:
    with shared[0].client() as c:
        yield c


def nested(levels: int) -> dict:
    """A JSON object `levels` deep."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def calls_for(log: Path, marker: str) -> list[dict]:
    return [c for c in read_log(log) if marker in c["prompt_head"]]


def test_jobs_run_one_at_a_time_in_submission_order(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [submit(client, f"{tag}-{i} @fake:sleep=0.3") for i in range(3)]
    jobs = [wait_for(client, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["completed"] * 3
    for earlier, later in itertools.pairwise(jobs):
        assert earlier["finished_at"] <= later["started_at"]
    calls = calls_for(shared[1], tag)
    assert [c["prompt_head"].split()[0] for c in calls] == [f"{tag}-0", f"{tag}-1", f"{tag}-2"]


def test_a_job_record_has_the_clis_accounting(client: httpx.Client) -> None:
    response = client.post(
        "/execute",
        json={"prompt": "@fake:say=done", "model": "haiku", "metadata": {"ticket": 42}},
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"job_id", "status", "queue_position"}
    assert body["status"] == "queued" and isinstance(body["queue_position"], int)
    assert response.headers["Location"] == f"/jobs/{body['job_id']}"
    job = wait_for(client, body["job_id"])
    assert job["status"] == "completed"
    assert job["result"] == "done" and job["is_error"] is False and job["error"] is None
    assert job["metadata"] == {"ticket": 42}
    assert job["model"] == "haiku"
    assert job["total_cost_usd"] == 0.0013197 and job["num_turns"] == 1
    assert job["usage"]["cache_read_input_tokens"] == 3000
    assert job["exit_code"] == 0 and job["permission_denials"] == []
    assert job["duration_ms"] == 111
    for key in ("created_at", "started_at", "finished_at"):
        assert job[key].endswith("Z") and "." in job[key]  # RFC 3339, UTC, microseconds


def test_a_failed_job_keeps_the_clis_message_and_the_queue_moves_on(client: httpx.Client) -> None:
    failing = submit(client, "@fake:error=Invalid_API_key")
    crashing = submit(client, "@fake:crash")
    after = submit(client, "after the failures")
    failed = wait_for(client, failing)
    assert failed["status"] == "failed"
    assert failed["error"] == "Invalid API key" and failed["exit_code"] == 1
    crashed = wait_for(client, crashing)
    assert crashed["status"] == "failed"
    assert crashed["error"] == "boom: fake crash"
    assert crashed["exit_code"] == 3 and crashed["stderr_tail"] == "boom: fake crash"
    assert wait_for(client, after)["status"] == "completed"


@pytest.mark.timeout(30)  # the fake retries for 60 s unless the run is cut
def test_a_refused_credential_fails_the_job_at_once(
    shared: tuple[Server, Path], client: httpx.Client
) -> None:
    job = wait_for(client, submit(client, "@fake:auth_retry=401"), timeout_s=20)
    reason = "the Anthropic API refused the credential (401 authentication_failed); not retrying"
    assert job["status"] == "failed" and job["error"] == reason
    assert job["session_id"] is not None  # from the init event
    kinds = [e["event"] for e in sse(client, job["job_id"])]
    assert "system" in kinds and kinds[-1] == "status"
    assert f"job {job['job_id']} ended failed: {reason}" in shared[0].log()


def test_half_an_emoji_in_the_cli_output_is_stored_not_a_stuck_job(client: httpx.Client) -> None:
    job = wait_for(client, submit(client, "@fake:half_emoji"))
    assert job["status"] == "completed" and job["result"] == "cut: \ufffd"
    assert [e["event"] for e in sse(client, job["job_id"])][-1] == "status"
    chat = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "@fake:half_emoji"}]}
    )
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "cut: \ufffd"


def test_a_job_read_by_id_is_the_job_the_list_shows(client: httpx.Client, tmp_path: Path) -> None:
    """`GET /jobs/{id}` and `/health` skip the framework (app/api/fast.py); the
    routed list must show each job exactly as its own read does."""
    gate = tmp_path / "go"
    blocker = submit(client, f"@fake:wait_for={gate}")
    wait_for(client, blocker, {"running"})
    queued = [submit(client, f"queued {i}") for i in range(2)]

    def compare(job_ids: list[str]) -> list[dict[str, object]]:
        listed = {j["job_id"]: j for j in client.get("/jobs", params={"limit": 3}).json()["jobs"]}
        read = [client.get(f"/jobs/{job_id}") for job_id in job_ids]
        assert all(r.headers["content-type"] == "application/json" for r in read)
        assert [r.json() for r in read] == [listed[job_id] for job_id in job_ids]
        return [r.json() for r in read]

    waiting = compare(queued)
    assert [j["queue_position"] for j in waiting] == [0, 1]
    gate.touch()
    for job_id in [blocker, *queued]:
        wait_for(client, job_id)
    done = compare([blocker, *queued])
    assert [j["status"] for j in done] == ["completed"] * 3
    health = client.get("/health")
    assert health.headers["content-type"] == "application/json"
    assert health.json()["status"] == "ok" and health.json()["busy"] is False
    head = client.head("/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == health.headers["content-length"]


def test_chat_completions_get_503_while_a_job_runs(client: httpx.Client) -> None:
    job_id = submit(client, "@fake:sleep=1.5")
    wait_for(client, job_id, {"running"})
    chat = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 503
    assert chat.json()["detail"] == "agent is busy"
    assert wait_for(client, job_id)["status"] == "completed"


def test_cancelling_a_queued_job_takes_effect_at_once(client: httpx.Client) -> None:
    blocker = submit(client, "@fake:sleep=2")
    queued = submit(client, "never runs")
    response = client.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert client.get(f"/jobs/{queued}").json()["started_at"] is None
    client.post(f"/jobs/{blocker}/cancel")
    wait_for(client, blocker)


def test_cancelling_a_running_job_kills_its_process_group(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    tag = uuid.uuid4().hex[:8]
    job_id = submit(client, f"{tag} @fake:grandchild @fake:ticks=1 @fake:sleep=60")
    wait_for(client, job_id, {"running"})
    deadline = time.monotonic() + 10
    while not calls_for(shared[1], tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    (call,) = calls_for(shared[1], tag)
    live = sse(client, job_id)
    init = next(e["json"] for e in live if e["event"] == "system")
    live.close()
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "cancelled" and job["error"] == "cancelled while running"
    assert job["session_id"] == init["session_id"] is not None  # resumable
    assert group_members(call["pgid"]) == []
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "job finished"


def test_a_finished_job_cannot_be_cancelled(client: httpx.Client) -> None:
    job_id = submit(client, "quick")
    wait_for(client, job_id)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert response.json() == {
        "error": "job finished",
        "detail": f"job {job_id} already ended: completed",
        "message": f"job {job_id} already ended: completed",
    }


def test_a_timed_out_job_is_recorded_and_leaves_no_process(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    tag = uuid.uuid4().hex[:8]
    job_id = submit(client, f"{tag} @fake:grandchild @fake:sleep=60", timeout_seconds=1)
    job = wait_for(client, job_id, timeout_s=30)
    assert job["status"] == "timeout"
    assert job["error"] == "the run timed out after 1s (timeout_seconds)"
    (call,) = calls_for(shared[1], tag)
    assert group_members(call["pgid"]) == []
    # no `result` came, but the init event named the session: it can be resumed
    init = next(e["json"] for e in sse(client, job_id) if e["event"] == "system")
    assert job["session_id"] == init["session_id"] is not None


def test_events_arrive_live_while_the_job_runs(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    job_id = submit(client, "@fake:ticks=10")
    statuses_at_first_tick = []
    kinds = []
    with shared[0].client() as other:
        for event in sse(client, job_id):
            kinds.append(event["event"])
            if event["event"] == "assistant" and not statuses_at_first_tick:
                statuses_at_first_tick.append(other.get(f"/jobs/{job_id}").json()["status"])
    assert statuses_at_first_tick == ["running"]  # seen before the run ended
    assert kinds[:3] == ["status", "status", "system"]
    assert kinds[-2:] == ["result", "status"]


def test_a_late_client_gets_the_replay_and_last_event_id_resumes(client: httpx.Client) -> None:
    job_id = submit(client, "@fake:ticks=3 @fake:garbage")
    wait_for(client, job_id)
    events = list(sse(client, job_id))
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert [e["json"]["status"] for e in events if e["event"] == "status"] == [
        "queued",
        "running",
        "completed",
    ]
    raw = [e["json"]["line"] for e in events if e["event"] == "raw"]
    assert raw == ["this is not json", "{broken json", "[1, 2]"]
    result = next(e for e in events if e["event"] == "result")
    assert result["json"]["result"] == "Hello from the fake claude!"
    resumed = list(sse(client, job_id, last_event_id=str(ids[4])))
    assert [int(e["id"]) for e in resumed] == ids[5:]
    assert list(sse(client, job_id, last_event_id=str(ids[-1]))) == []


def test_resuming_a_session_passes_resume(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    session = str(uuid.uuid4())
    transcripts = shared[1].parent / "home" / ".claude" / "projects" / "-elsewhere"
    transcripts.mkdir(parents=True, exist_ok=True)
    (transcripts / f"{session}.jsonl").write_text('{"type": "user"}\n')
    tag = uuid.uuid4().hex[:8]
    job = wait_for(client, submit(client, tag, session_id=session.upper()))
    assert job["session_id"] == session
    (call,) = calls_for(shared[1], tag)
    assert call["argv"][call["argv"].index("--resume") + 1] == session
    assert "--agent" not in call["argv"]  # CHAT_AGENT is for chat only
    before = client.get("/jobs", params={"limit": 1}).json()["jobs"]
    unknown = client.post("/execute", json={"prompt": tag, "session_id": str(uuid.uuid4())})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown session"
    assert client.get("/jobs", params={"limit": 1}).json()["jobs"] == before  # nothing queued


def test_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/execute", json={"prompt": "once"}, headers=key)
    assert first.status_code == 202
    second = client.post("/execute", json={"prompt": "once"}, headers=key)
    assert second.status_code == 200
    assert second.json()["job_id"] == first.json()["job_id"]
    assert set(second.json()) == {"job_id", "status", "queue_position"}
    other = client.post("/execute", json={"prompt": "something else"}, headers=key)
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency key reused"
    wait_for(client, first.json()["job_id"])


def test_listing_is_newest_first_with_a_cursor_and_a_status_filter(client: httpx.Client) -> None:
    ids = [submit(client, f"list {i}") for i in range(3)]
    for job_id in ids:
        wait_for(client, job_id)
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    rest = client.get("/jobs", params={"limit": 1, "before": page["next"]}).json()
    assert [j["job_id"] for j in rest["jobs"]] == [ids[0]]
    completed = client.get("/jobs", params={"status": "completed", "limit": 200}).json()
    assert all(j["status"] == "completed" for j in completed["jobs"])
    assert set(ids) <= {j["job_id"] for j in completed["jobs"]}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error"),
    [
        ({"json": {"prompt": ""}}, 422, "invalid request"),
        ({"json": {"prompt": "   "}}, 422, "invalid request"),
        ({"json": {}}, 422, "invalid request"),
        ({"json": {"prompt": 5}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "max_budget_usd": "1"}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "max_budget_usd": 0}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "max_budget_usd": 50}}, 400, "invalid request"),
        ({"json": {"prompt": "x", "timeout_seconds": 0.5}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "timeout_seconds": 61}}, 400, "invalid request"),
        ({"json": {"prompt": "x", "model": "gpt-4o"}}, 400, "unsupported model"),
        ({"json": {"prompt": "x", "session_id": "not-a-uuid"}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "metadata": ["a"]}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "metadata": {"k": "v" * 17000}}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "metadata": {"k": "é" * 9000}}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "metadata": nested(33)}}, 422, "invalid request"),
        # a schema the CLI cannot use: 400, as chat's response_format
        ({"json": {"prompt": "x", "json_schema": {"type": 12}}}, 400, "invalid request"),
        ({"json": {"prompt": "x", "json_schema": [1]}}, 400, "invalid request"),
        ({"json": {"prompt": "x", "json_schema": "object"}}, 400, "invalid request"),
        (
            {"json": {"prompt": "x", "json_schema": {"description": "x" * 70_000}}},
            400,
            "invalid request",
        ),
        (
            {
                "content": b'{"prompt": "x", "metadata": {"k": "\\ud800"}}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "invalid request",
        ),
        (
            {
                "content": b'{"prompt": "x", "metadata": {"\\udfff": 1}}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "invalid request",
        ),
        ({"json": {"prompt": "x", "agent": "--dangerous"}}, 422, "invalid request"),
        ({"json": {"prompt": "x", "surprise": 1}}, 422, "invalid request"),
        ({"json": {"prompt": "nul \x00 inside"}}, 422, "invalid request"),
        ({"json": {"prompt": "x"}, "headers": {"Idempotency-Key": ""}}, 422, "invalid request"),
        (
            {"json": {"prompt": "x"}, "headers": {"Idempotency-Key": "k" * 256}},
            422,
            "invalid request",
        ),
        (
            {
                "content": b'{"prompt": "x", "metadata": {"n": NaN}}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "invalid request",
        ),
        (
            {"content": b'{"prompt": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
            422,
            "invalid request",
        ),
        (
            {
                "content": b'{"prompt": "x", "max_budget_usd": NaN}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "invalid request",
        ),
        (
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed JSON",
        ),
        # json.loads would guess UTF-16 from the NUL bytes; the API says UTF-8
        ({"content": '{"prompt": "x"}'.encode("utf-16")}, 400, "bad request"),
        ({"content": '{"prompt": "x"}'.encode("utf-16-le")}, 400, "malformed JSON"),
        ({"content": '{"prompt": "caf\u00e9"}'.encode("latin-1")}, 400, "bad request"),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_stored(
    client: httpx.Client, request_kwargs: dict, status: int, error: str
) -> None:
    before = client.get("/jobs", params={"limit": 1}).json()["jobs"]
    response = client.post("/execute", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert client.get("/jobs", params={"limit": 1}).json()["jobs"] == before


def test_metadata_at_the_limits_is_stored_and_echoed(client: httpx.Client) -> None:
    metadata = {"deep": nested(31), "text": "café ☕ " * 1000, "n": None}
    job_id = submit(client, "@fake:say=ok", metadata=metadata)
    assert client.get(f"/jobs/{job_id}").json()["metadata"] == metadata
    assert job_id in [j["job_id"] for j in client.get("/jobs", params={"limit": 5}).json()["jobs"]]


def test_bad_queries_and_unknown_jobs(client: httpx.Client) -> None:
    assert client.get("/jobs", params={"status": "done"}).status_code == 400
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"limit": 201}).status_code == 422
    for cursor in ("abc", "²", "9" * 20, "-1"):
        assert client.get("/jobs", params={"before": cursor}).status_code == 400
    for method, path in [
        ("GET", "/jobs/nope"),
        ("POST", "/jobs/nope/cancel"),
        ("GET", "/jobs/nope/events"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404
        assert response.json() == {
            "error": "not found",
            "detail": "no job 'nope'",
            "message": "no job 'nope'",
        }
    job_id = submit(client, "for a bad Last-Event-ID")
    for bad in ("x", "9" * 20, "-3"):
        response = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
        assert response.status_code == 400
    wait_for(client, job_id)


def test_the_job_api_needs_the_token(shared: tuple[Server, Path]) -> None:
    with httpx.Client(base_url=shared[0].base_url) as anonymous:
        for method, path in [
            ("POST", "/execute"),
            ("GET", "/jobs"),
            ("GET", "/jobs/x"),
            ("POST", "/jobs/x/cancel"),
            ("GET", "/jobs/x/events"),
        ]:
            response = anonymous.request(method, path)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_remote_credentials_the_agent_prints_are_redacted_in_the_record(
    client: httpx.Client,
) -> None:
    job = wait_for(client, submit(client, "@fake:say=pushed_to_https://bot:hunter2@git.example/r"))
    assert job["result"] == "pushed to https://***@git.example/r"
    events = list(sse(client, job["job_id"]))
    assert all("hunter2" not in e["data"] for e in events)
    assert any("https://***@git.example/r" in e["data"] for e in events if e["event"] == "result")


def test_the_bearer_token_an_agent_prints_is_redacted_everywhere(
    shared: tuple[Server, Path], client: httpx.Client
) -> None:
    """A hostile agent reads the service's environment and prints the token:
    it reaches no event, record, chat answer or log line."""
    job = wait_for(client, submit(client, "@fake:leak_env"))
    chat = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "@fake:leak_env @fake:chat"}]},
    )
    events = list(sse(client, job["job_id"]))
    listed = client.get("/jobs").text
    assert job["status"] == "failed" and job["error"] == "the token is ***"
    assert job["stderr_tail"] == "the token is ***"
    assert chat.json()["choices"][0]["message"]["content"] == "the token is ***"
    texts = [e["data"] for e in events if e["event"] == "assistant"]
    assert any("the token is ***" in text for text in texts)
    for text in [str(job), chat.text, listed, *(e["data"] for e in events), shared[0].log()]:
        assert TOKEN not in text


def test_a_job_shows_the_system_prompt_its_run_was_given(
    client: httpx.Client, shared: tuple[Server, Path]
) -> None:
    tag = uuid.uuid4().hex[:8]
    job = wait_for(client, submit(client, tag, append_system_prompt="Answer in French."))
    (call,) = calls_for(shared[1], tag)
    assert call["argv"][call["argv"].index("--append-system-prompt") + 1] == "Answer in French."
    assert job["append_system_prompt"] == "Answer in French."
    plain = wait_for(client, submit(client, "no extra prompt"))
    assert plain["append_system_prompt"] is None
