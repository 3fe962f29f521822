"""Agent controls through the API, with the fake `claude`: tool limits, the
system prompt, turns, structured output, images, chat sessions."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import httpx
import pytest

from app import main as app_main
from tests.api.conftest import chat
from tests.conftest import TOKEN, group_members, read_log

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def option_values(argv: list[str], option: str) -> list[str]:
    """The values after `option` in argv, up to the next option."""
    start = argv.index(option) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("-"):
        end += 1
    return argv[start:end]


def settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    app_main.get_settings.cache_clear()


async def test_tool_limits_and_the_system_prompt_reach_the_cli_as_its_flags(
    client: httpx.AsyncClient, fake_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, DISALLOWED_TOOLS="WebFetch", APPEND_SYSTEM_PROMPT="Be brief.")
    body = chat(
        "hi",
        allowed_tools=["Read", "Bash(git:*)"],
        disallowed_tools=["Write"],
        append_system_prompt="Use British spelling.",
        max_turns=3,
    )
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    (call,) = read_log(fake_log)
    argv = call["argv"]
    assert option_values(argv, "--tools") == ["Read", "Bash"]
    assert option_values(argv, "--allowedTools") == ["Read", "Bash(git:*)"]
    assert option_values(argv, "--disallowedTools") == ["WebFetch", "Write"]
    assert "--max-turns" not in argv  # not in the pinned CLI's --help: the service counts
    assert option_values(argv, "--append-system-prompt") == ["Be brief.\n\nUse British spelling."]
    assert argv[-2:] == ["--", "hi"]  # the variadic options cannot swallow the prompt


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({"allowed_tools": ["--dangerously-skip-permissions"]}, 422, "is not a tool name"),
        ({"disallowed_tools": ["Bash", " -x"]}, 422, "is not a tool name"),
        ({"allowed_tools": [f"Tool{i}" for i in range(65)]}, 422, "at most 64"),
        ({"allowed_tools": []}, 400, "must name at least one tool"),
        ({"append_system_prompt": "x" * (64 * 1024 + 1)}, 422, "at most 65536 bytes"),
        ({"append_system_prompt": "nul\x00"}, 422, "NUL"),
        ({"max_turns": 0}, 422, "greater than or equal to 1"),
        ({"max_turns": 101}, 400, "at most 100 (JOB_MAX_TURNS)"),
    ],
)
async def test_bad_controls_are_refused(
    client: httpx.AsyncClient, fake_log: Path, extra: dict, status: int, words: str
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("hi", **extra), headers=AUTH)
    assert response.status_code == status, response.text
    assert words in json.dumps(response.json())
    assert read_log(fake_log) == []


async def test_a_request_can_narrow_the_operators_tools_but_never_widen_them(
    client: httpx.AsyncClient, fake_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, ALLOWED_TOOLS="Read,Grep", DISALLOWED_TOOLS="Bash")
    wider = await client.post(
        "/v1/chat/completions", json=chat("hi", allowed_tools=["Read", "Bash"]), headers=AUTH
    )
    assert wider.status_code == 400
    assert wider.json()["detail"] == (
        "allowed_tools may only narrow ALLOWED_TOOLS (Read, Grep); not allowed: Bash"
    )
    narrower = await client.post(
        "/v1/chat/completions", json=chat("hi", allowed_tools=["Read"]), headers=AUTH
    )
    default = await client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH)
    assert narrower.status_code == default.status_code == 200
    first, second = read_log(fake_log)
    assert option_values(first["argv"], "--allowedTools") == ["Read"]
    assert option_values(second["argv"], "--allowedTools") == ["Read", "Grep"]
    assert option_values(second["argv"], "--disallowedTools") == ["Bash"]


async def test_max_turns_ends_the_run_when_the_agent_starts_one_more(
    client: httpx.AsyncClient, fake_log: Path
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("@fake:turns=5 @fake:sleep=30", max_turns=2), headers=AUTH
    )
    assert response.status_code == 503
    assert response.json()["detail"] == "the run reached max_turns (2); it was ended"
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []
    # one turn, then the answer's own: two
    enough = await client.post(
        "/v1/chat/completions", json=chat("@fake:turns=1", max_turns=2), headers=AUTH
    )
    assert enough.status_code == 200


async def test_a_json_schema_answer_is_the_json_the_cli_returns(
    client: httpx.AsyncClient, fake_log: Path
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response = await client.post(
        "/v1/chat/completions",
        json=chat("hi", response_format={"type": "json_schema", "json_schema": {"schema": schema}}),
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"answer": "Hello from the fake claude!"}
    as_object = await client.post(
        "/v1/chat/completions",
        json=chat("hi", response_format={"type": "json_object"}),
        headers=AUTH,
    )
    assert as_object.status_code == 200
    first, second = read_log(fake_log)
    assert json.loads(option_values(first["argv"], "--json-schema")[0]) == schema
    assert json.loads(option_values(second["argv"], "--json-schema")[0]) == {"type": "object"}


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": 12}}},
            "not a valid JSON Schema",
        ),
        ({"type": "json_schema", "json_schema": {"schema": [1]}}, "must be a JSON Schema object"),
        ({"type": "json_schema", "json_schema": {}}, "must be a JSON Schema object"),
        (
            {"type": "json_schema", "json_schema": {"schema": {"description": "x" * 70_000}}},
            "at most 65536 bytes",
        ),
        ({"type": "xml"}, "is not supported"),
    ],
)
async def test_a_schema_that_cannot_be_used_is_a_400(
    client: httpx.AsyncClient, response_format: dict, words: str
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("hi", response_format=response_format), headers=AUTH
    )
    assert response.status_code == 400 and words in response.json()["detail"]


async def test_an_image_reaches_the_cli_as_an_image_block(
    client: httpx.AsyncClient, fake_log: Path
) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    response = await client.post("/v1/chat/completions", json=chat(parts), headers=AUTH)
    assert response.status_code == 200, response.text
    (call,) = read_log(fake_log)
    assert call["images"] == ["image/png"]
    assert call["prompt_head"] == "what is this?"
    assert option_values(call["argv"], "--input-format") == ["stream-json"]
    assert "--" not in call["argv"]  # the prompt went on stdin
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    refused = await client.post("/v1/chat/completions", json=chat(remote), headers=AUTH)
    assert refused.status_code == 400 and refused.json()["error"] == "unsupported content"


async def test_a_session_resumes_with_only_the_new_messages(
    client: httpx.AsyncClient, fake_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    session = str(uuid.uuid4())
    transcript = home / ".claude" / "projects" / "-elsewhere" / f"{session}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("{}\n")
    monkeypatch.setenv("HOME", str(home))
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "the follow-up"},
    ]
    body = {"messages": conversation}
    by_header = await client.post(
        "/v1/chat/completions", json=body, headers={**AUTH, "X-Claude-Session-Id": session}
    )
    by_body = await client.post(
        "/v1/chat/completions", json={**body, "session_id": session}, headers=AUTH
    )
    assert by_header.status_code == by_body.status_code == 200, by_header.text
    for call in read_log(fake_log):
        assert option_values(call["argv"], "--resume") == [session]
        assert call["argv"][-1] == "the follow-up"  # not the conversation again
    unknown = await client.post(
        "/v1/chat/completions", json={**body, "session_id": str(uuid.uuid4())}, headers=AUTH
    )
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown session"
    answered = {**body, "messages": conversation[:3], "session_id": session}
    nothing_new = await client.post("/v1/chat/completions", json=answered, headers=AUTH)
    assert nothing_new.status_code == 400
    not_uuid = await client.post(
        "/v1/chat/completions", json={**body, "session_id": "abc"}, headers=AUTH
    )
    assert not_uuid.status_code == 400
    assert len(read_log(fake_log)) == 2
