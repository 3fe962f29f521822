"""The real Claude Code CLI in the loop: client -> service -> `claude` -> API stand-in.

The CLI is the pinned npm release (`make claude-cli`); it runs offline against
tests/fakes/anthropic_api.py, which answers as the Anthropic Messages API does.
Without the CLI these tests are skipped with the reason; with REQUIRE_REAL_CLI=1
(CI) that is a failure instead.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import chat
from tests.conftest import TOKEN, Server, git, make_remote, start_server
from tests.fakes.anthropic_api import FakeAnthropic
from tests.jobs.helpers import sse, submit, wait_for

REAL_CLAUDE = Path(__file__).resolve().parents[2] / ".cache/claude-cli/node_modules/.bin/claude"
ROOT_REFUSAL = "--dangerously-skip-permissions cannot be used with root/sudo privileges"


def _unavailable() -> str | None:
    if not REAL_CLAUDE.exists():
        return f"the real Claude CLI is not installed at {REAL_CLAUDE} (run `make claude-cli`)"
    try:
        subprocess.run([REAL_CLAUDE, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the real Claude CLI does not run: {exc}"
    return None


@pytest.fixture(scope="module")
def real_claude() -> Path:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("REQUIRE_REAL_CLI") == "1":
            pytest.fail(f"REQUIRE_REAL_CLI=1, but {reason}")
        pytest.skip(reason)
    return REAL_CLAUDE


@pytest.fixture(scope="module")
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic([{"text": "unscripted"}]) as fake:
        yield fake


def offline_env(
    root: Path, claude: Path, api: FakeAnthropic, **extra: str | None
) -> dict[str, str | None]:
    """A service whose agent is the real CLI, offline, against the stand-in."""
    (root / "home").mkdir(exist_ok=True)
    return {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(root / "workspace"),
        "DATA_DIR": str(root / "data"),
        "CLAUDE_BIN": str(claude),
        "HOME": str(root / "home"),
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": "dummy-key",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def served(
    real_claude: Path, api: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path, Path]]:
    """One service (GIT_PUSH to a bare remote) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    remote = make_remote(root)
    env = offline_env(root, real_claude, api, GIT_REPO_URL=str(remote), GIT_PUSH="true")
    server = start_server(env, root / "server.log")
    yield server, root / "workspace", remote
    server.stop()


def user_texts(request: dict[str, Any]) -> list[str]:
    """Every text block of the user messages of a recorded Messages API request."""
    texts = []
    for message in request["body"]["messages"]:
        if message["role"] != "user":
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [b["text"] for b in blocks if b.get("type") == "text"]
    return texts


def running_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (the CLI rewrites its argv)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_chat_completion_answers_with_the_apis_text_and_token_counts(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    usage = {
        "input_tokens": 1234,
        "output_tokens": 56,
        "cache_creation_input_tokens": 700,
        "cache_read_input_tokens": 8900,
    }
    api.script([{"text": "Paris is the capital of France.", "usage": usage}])
    client = openai.OpenAI(base_url=f"{served[0].base_url}/v1", api_key=TOKEN, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="haiku", messages=[{"role": "user", "content": "Capital of France?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1234 + 700 + 8900
    assert completion.usage.completion_tokens == 56
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 8900
    (request,) = api.message_requests
    assert request["body"]["model"] == "claude-haiku-5-5"
    assert "Capital of France?" in user_texts(request)[-1]

    # The cost header is the CLI's own total_cost_usd: the same exchange as a
    # job shows that number in the CLI's result event.
    api.script([{"text": "Paris is the capital of France.", "usage": usage}])
    with served[0].client() as http:
        job = wait_for(http, submit(http, "Capital of France?", model="haiku"))
        result = next(e for e in sse(http, job["job_id"]) if e["event"] == "result")
    assert job["total_cost_usd"] == result["json"]["total_cost_usd"] > 0
    assert raw.headers["X-Claude-Cost-USD"] == str(result["json"]["total_cost_usd"])


def test_a_job_whose_agent_writes_a_file_commits_it(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    server, workspace, remote = served
    target = workspace / "hello.txt"
    api.script(
        [
            {
                "text": "I will create the file.",
                "tool_use": {
                    "name": "Write",
                    "input": {"file_path": str(target), "content": "hello from the stand-in\n"},
                },
            },
            {"text": "Done."},
        ]
    )
    with server.client() as client:
        job, blocks = run_job(client, "Create hello.txt")
    assert job["status"] == "completed", job
    assert job["result"] == "Done." and job["num_turns"] == 2
    assert git("show", "main:hello.txt", cwd=remote) == "hello from the stand-in"
    assert job["git"]["pushed"] is True and job["git"]["branch"] == "main"
    tool_use = next(b for b in blocks if b["type"] == "tool_use")
    assert tool_use["name"] == "Write"
    tool_result = next(b for b in blocks if b["type"] == "tool_result")
    assert tool_result["tool_use_id"] == tool_use["id"]


def test_api_errors_surface_as_the_clis_readable_message(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    api.script(
        [{"error": {"status": 401, "type": "authentication_error", "message": "invalid x-api-key"}}]
    )
    with served[0].client() as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "haiku", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
        assert chat.json() == {
            "error": "execution failed",
            "detail": "Invalid API key · Fix external API key",
            "message": "Invalid API key · Fix external API key",
        }
        api.script(
            [{"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}}]
        )
        job = wait_for(client, submit(client, "hi", model="haiku"))
    assert job["status"] == "failed" and job["exit_code"] == 1
    assert job["error"].startswith("API Error: 529 Overloaded.")
    assert len(api.message_requests) == 1  # CLAUDE_CODE_MAX_RETRIES=0: no retry


@pytest.mark.timeout(90)  # the CLI's own retries of a 401 take about three minutes
def test_a_refused_key_ends_the_run_at_the_clis_first_retry(
    real_claude: Path, api: FakeAnthropic, tmp_path: Path
) -> None:
    # the CLI's default retries (10, over about three minutes), as users run it
    env = offline_env(tmp_path, real_claude, api, CLAUDE_CODE_MAX_RETRIES=None)
    api.script(
        [{"error": {"status": 401, "type": "authentication_error", "message": "invalid x-api-key"}}]
    )
    server = start_server(env, tmp_path / "server.log")
    try:
        with server.client() as client:
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "haiku", "messages": [{"role": "user", "content": "hi"}]},
            )
            job = wait_for(client, submit(client, "hi", model="haiku"), timeout_s=60)
    finally:
        server.stop()
    reason = "the Anthropic API refused the credential (401 authentication_failed); not retrying"
    assert chat.status_code == 503 and chat.json()["detail"] == reason
    assert job["status"] == "failed" and job["error"] == reason
    assert job["session_id"] is not None  # from the init event: the run can be resumed
    # each run was cut at its first retry (the CLI retries the first three within 4 s)
    assert len(api.message_requests) <= 4
    assert running_in(tmp_path / "workspace") == []
    assert server.log().count(f"ended failed: {reason}") == 2


def test_a_hung_api_times_the_job_out_and_leaves_no_process(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    server, workspace, _ = served
    api.script([{"hang": 600}])
    with server.client() as client:
        job_id = submit(client, "answer slowly", model="haiku", timeout_seconds=3)
        api.wait_for_requests(1, timeout=30)
        assert running_in(workspace)  # the CLI is there, waiting on the API
        job = wait_for(client, job_id, timeout_s=30)
    assert job["status"] == "timeout"
    assert job["error"] == "the run timed out after 3s (timeout_seconds)"
    assert running_in(workspace) == []


def test_a_large_prompt_and_a_dash_prompt_reach_the_api_intact(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    api.script([{"text": "received"}])
    big = "".join(f"line {i}: {uuid.uuid4().hex}\n" for i in range(7000))  # about 300 KB
    assert len(big.encode()) > 250_000
    with served[0].client() as client:
        job = wait_for(client, submit(client, big, model="haiku"))
        assert job["status"] == "completed", job
        assert big in user_texts(api.message_requests[0])
        api.script([{"text": "received"}])
        job = wait_for(client, submit(client, "--help me with --verbose", model="haiku"))
    assert job["status"] == "completed", job
    assert "--help me with --verbose" in user_texts(api.message_requests[0])


def test_the_budget_limit_fails_the_job_with_the_clis_reason(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    api.script(
        [
            {
                "tool_use": {"name": "Bash", "input": {"command": "true"}},
                "usage": {"input_tokens": 2_000_000, "output_tokens": 1000},
            }
        ]
    )
    with served[0].client() as client:
        job = wait_for(client, submit(client, "loop", model="haiku", max_budget_usd=0.5))
        result = next(e for e in sse(client, job["job_id"]) if e["event"] == "result")
    assert job["status"] == "failed"
    assert job["error"] == "Reached maximum budget ($0.5)"
    assert result["json"]["subtype"] == "error_max_budget_usd"
    assert job["total_cost_usd"] == result["json"]["total_cost_usd"] > 0.5


@pytest.mark.skipif(os.geteuid() != 0, reason="the CLI refuses bypassPermissions only as root")
def test_bypass_permissions_as_root_is_refused_with_the_clis_words(
    real_claude: Path, api: FakeAnthropic, tmp_path: Path
) -> None:
    env = offline_env(
        tmp_path, real_claude, api, CLAUDE_PERMISSION_MODE="bypassPermissions", IS_SANDBOX=None
    )
    server = start_server(env, tmp_path / "server.log")
    try:
        api.script([{"text": "should not be asked"}])
        with server.client() as client:
            job = wait_for(client, submit(client, "hi", model="haiku"))
    finally:
        server.stop()
    assert job["status"] == "failed" and job["exit_code"] == 1
    assert job["error"] == f"{ROOT_REFUSAL} for security reasons"
    assert api.message_requests == []


def assistant_texts(request: dict[str, Any]) -> list[str]:
    """Every text block of the assistant messages of a recorded request."""
    texts = []
    for message in request["body"]["messages"]:
        if message["role"] != "assistant":
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [b["text"] for b in blocks if b.get("type") == "text"]
    return texts


def test_a_session_made_in_one_slot_resumes_in_another(
    real_claude: Path, api: FakeAnthropic, tmp_path: Path
) -> None:
    remote = make_remote(tmp_path)
    env = offline_env(tmp_path, real_claude, api, GIT_REPO_URL=str(remote), MAX_CONCURRENT_RUNS="2")
    server = start_server(env, tmp_path / "server.log")
    try:
        with server.client() as client:
            api.script([{"text": "Noted: the password is swordfish."}])
            first = wait_for(client, submit(client, "Remember: the password is swordfish."))
            assert first["status"] == "completed", first
            # hold the first job's slot with a run whose API call hangs
            api.script([{"hang": 600}, {"text": "It was swordfish."}])
            holder = submit(client, "hold a slot", timeout_seconds=120)
            api.wait_for_requests(1, timeout=30)
            assert client.get(f"/jobs/{holder}").json()["slot"] == first["slot"]
            resumed = wait_for(
                client, submit(client, "What was the password?", session_id=first["session_id"])
            )
            client.post(f"/jobs/{holder}/cancel")
    finally:
        server.stop()
    assert resumed["status"] == "completed", resumed
    assert resumed["slot"] != first["slot"]
    assert resumed["session_id"] == first["session_id"]
    request = api.message_requests[1]  # the resumed run's, after the holder's
    assert "Remember: the password is swordfish." in " ".join(user_texts(request))
    assert "Noted: the password is swordfish." in assistant_texts(request)
    assert "What was the password?" in user_texts(request)[-1]


def test_a_chat_session_resumes_with_only_the_new_message(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    server = served[0]
    api.script([{"text": "Noted: the code word is heron."}, {"text": "It was heron."}])
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=TOKEN, max_retries=0)
    first = sdk.chat.completions.with_raw_response.create(
        model="haiku", messages=[{"role": "user", "content": "Remember the code word heron."}]
    )
    session = first.headers["X-Claude-Session-Id"]
    conversation = [
        {"role": "user", "content": "Remember the code word heron."},
        {"role": "assistant", "content": first.parse().choices[0].message.content},
        {"role": "user", "content": "Which code word?"},
    ]
    second = sdk.chat.completions.create(
        model="haiku", messages=conversation, extra_body={"session_id": session}
    )
    assert second.choices[0].message.content == "It was heron."
    request = api.message_requests[1]
    texts = user_texts(request)
    assert any("Remember the code word heron." in t for t in texts)  # the session's history
    assert "Noted: the code word is heron." in assistant_texts(request)
    assert texts[-1] == "Which code word?"  # only the new message was sent
    assert sum("Remember the code word heron." in t for t in texts) == 1  # not sent again
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.chat.completions.create(
            model="haiku", messages=conversation, extra_body={"session_id": str(uuid.uuid4())}
        )
    assert unknown.value.response.json()["error"] == "unknown session"


def test_structured_output_is_what_the_api_returned(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["name", "year"],
    }
    answer = {"name": "Ada Lovelace", "year": 1843}
    step = {"tool_use": {"name": "StructuredOutput", "input": answer}}
    api.script([step, {"text": "done"}])
    with served[0].client() as client:
        job = wait_for(client, submit(client, "Who wrote the first program?", json_schema=schema))
        assert job["status"] == "completed", job
        assert job["structured_output"] == answer
        api.script([step, {"text": "done"}])
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": "haiku",
                "messages": [{"role": "user", "content": "Who wrote the first program?"}],
                "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
            },
        )
    assert chat.status_code == 200, chat.text
    assert json.loads(chat.json()["choices"][0]["message"]["content"]) == answer
    tools = [t["name"] for t in api.message_requests[0]["body"]["tools"]]
    assert "StructuredOutput" in tools


def test_an_image_reaches_the_api_as_an_image_block(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    png = base64.b64encode(PIXEL_PNG).decode()
    api.script([{"text": "A single pixel."}])
    picture = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    remote_picture = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    question = {"type": "text", "text": "What is in this picture?"}
    with served[0].client() as client:
        chat, remote = (
            client.post(
                "/v1/chat/completions",
                json={"model": "haiku", "messages": [{"role": "user", "content": parts}]},
            )
            for parts in ([question, picture], [remote_picture])
        )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "A single pixel."
    (request,) = api.message_requests
    blocks = [b for m in request["body"]["messages"] if m["role"] == "user" for b in m["content"]]
    images = [b for b in blocks if isinstance(b, dict) and b.get("type") == "image"]
    assert images and images[0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": png,
    }
    assert remote.status_code == 400 and remote.json()["error"] == "unsupported content"


# A 1x1 transparent PNG.
PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c636000010000050001e2b0d7b30000000049454e44ae426082"
)


def offered_tools(request: dict[str, Any]) -> list[str]:
    """The names of the tools a recorded request offered the model."""
    return [tool["name"] for tool in request["body"]["tools"]]


def system_texts(request: dict[str, Any]) -> list[str]:
    """The text blocks of a recorded request's system prompt."""
    system = request["body"]["system"]
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    return [b["text"] for b in blocks if b.get("type") == "text"]


def run_job(client: httpx.Client, prompt: str, **fields: Any) -> tuple[dict[str, Any], list[Any]]:
    """Run a job to its end; return it and the content blocks of its events."""
    job = wait_for(client, submit(client, prompt, model="haiku", **fields))
    blocks = [
        block
        for event in sse(client, job["job_id"])
        if event["event"] in ("assistant", "user")
        for block in event["json"]["message"]["content"]
    ]
    return job, blocks


def tool_results(blocks: list[Any]) -> list[dict[str, Any]]:
    """The tool_result blocks among a job's content blocks."""
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]


def ask(client: httpx.Client, prompt: str, **controls: Any) -> httpx.Response:
    """A chat completion of one message with the agent controls in its body."""
    return client.post("/v1/chat/completions", json=chat(prompt, **controls))


@pytest.mark.timeout(60)
def test_disallowed_tools_are_not_offered_to_the_model(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    api.script([{"text": "ok"}])
    with served[0].client() as client:
        baseline, _ = run_job(client, "hi")
        job, _ = run_job(client, "hi", disallowed_tools=["Bash"])
        answer = ask(client, "hi", disallowed_tools=["Bash"])
    assert baseline["status"] == job["status"] == "completed", job
    assert answer.status_code == 200, answer.text
    assert job["disallowed_tools"] == ["Bash"]
    everything, for_the_job, for_the_chat = map(offered_tools, api.message_requests)
    assert {"Bash", "Read"} <= set(everything)
    for offered in (for_the_job, for_the_chat):
        assert "Bash" not in offered and "Read" in offered


@pytest.mark.timeout(60)
def test_allowed_tools_are_the_only_tools_offered_to_the_model(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    server, workspace, _ = served

    def write(name: str) -> dict[str, Any]:
        path = str(workspace / name)
        return {"tool_use": {"name": "Write", "input": {"file_path": path, "content": "x\n"}}}

    with server.client() as client:
        api.script([write("allowed.txt"), {"text": "Done."}])
        allowed, _ = run_job(client, "write it", allowed_tools=["Read", "Write"])
        with_write = offered_tools(api.message_requests[0])
        api.script([write("refused.txt"), {"text": "Done."}])
        narrowed, blocks = run_job(client, "write it", allowed_tools=["Read"])
        without_write = offered_tools(api.message_requests[0])
        api.script([{"text": "ok"}])
        answer = ask(client, "hi", allowed_tools=["Read"])
        for_the_chat = offered_tools(api.message_requests[0])
    assert allowed["status"] == narrowed["status"] == "completed", narrowed
    assert answer.status_code == 200, answer.text
    assert (workspace / "allowed.txt").read_text() == "x\n"
    assert {"Read", "Write"} <= set(with_write) and "Bash" not in with_write
    for offered in (without_write, for_the_chat):
        assert "Read" in offered
        assert not {"Write", "Edit", "Bash", "Agent"} & set(offered), offered
    # the model asked for Write anyway: the CLI has no such tool, nothing is written
    (refusal,) = tool_results(blocks)
    assert refusal["is_error"] is True
    assert "No such tool available: Write" in str(refusal["content"])
    assert not (workspace / "refused.txt").exists()
    assert narrowed["allowed_tools"] == ["Read"]


@pytest.mark.timeout(60)
def test_an_allowed_tools_pattern_approves_the_commands_it_matches(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    command = "awk 'BEGIN { print 6 * 7 }'"  # one the CLI asks approval for, and -p cannot
    step = {"tool_use": {"name": "Bash", "input": {"command": command}}}
    with served[0].client() as client:
        api.script([step, {"text": "Done."}])
        denied, denied_blocks = run_job(client, "compute")
        api.script([step, {"text": "Done."}])
        approved, approved_blocks = run_job(client, "compute", allowed_tools=["Bash(awk:*)"])
    assert denied["status"] == approved["status"] == "completed", approved
    (denial,) = denied["permission_denials"]
    assert denial["tool_name"] == "Bash" and denial["tool_input"]["command"] == command
    assert tool_results(denied_blocks)[0]["is_error"] is True
    assert approved["permission_denials"] == []
    assert tool_results(approved_blocks)[0]["content"] == "42"


@pytest.mark.timeout(60)
def test_append_system_prompt_reaches_the_system_prompt(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    for_the_job = f"Marker {uuid.uuid4().hex}: answer in Latin."
    for_the_chat = f"Marker {uuid.uuid4().hex}: answer in Greek."
    api.script([{"text": "ok"}])
    with served[0].client() as client:
        job, _ = run_job(client, "hi", append_system_prompt=for_the_job)
        answer = ask(client, "hi", append_system_prompt=for_the_chat)
    assert job["status"] == "completed", job
    assert answer.status_code == 200, answer.text
    job_request, chat_request = api.message_requests
    assert any(for_the_job in text for text in system_texts(job_request))
    assert any(for_the_chat in text for text in system_texts(chat_request))
    assert not any(for_the_job in text for text in user_texts(job_request))


@pytest.mark.timeout(60)
def test_max_turns_ends_the_run_when_the_agent_starts_one_turn_more(
    served: tuple[Server, Path, Path], api: FakeAnthropic
) -> None:
    """The pinned CLI's --help lists no turn limit, so the service counts the
    model turns in the stream and ends the run when one more begins (that
    model call has been made: the limit bounds the spend, one turn late)."""
    server, workspace, _ = served
    script = [
        {"tool_use": {"name": "Read", "input": {"file_path": str(workspace / "README")}}},
        {"text": "Done."},
    ]
    with server.client() as client:
        api.script(script)
        enough, _ = run_job(client, "read the README", max_turns=2)
        assert len(api.message_requests) == 2
        api.script(script)
        limited, blocks = run_job(client, "read the README", max_turns=1)
        api.script(script)
        answer = ask(client, "read the README", max_turns=1)
    assert enough["status"] == "completed" and enough["result"] == "Done.", enough
    assert limited["status"] == "failed", limited
    assert limited["error"] == "the run reached max_turns (1); it was ended"
    assert limited["max_turns"] == 1
    assert "one" in str(tool_results(blocks)[0]["content"])  # the allowed turn's tool ran
    assert answer.status_code == 503
    assert answer.json()["detail"] == "the run reached max_turns (1); it was ended"
