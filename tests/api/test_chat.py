"""`POST /v1/chat/completions` in process, with the fake `claude` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app import main as app_main
from app.shutdown import shutdown
from tests.api.conftest import chat
from tests.conftest import TOKEN, group_members, read_log

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_answer_usage_and_accounting_headers_come_from_the_result(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat("hi @fake:say=pong"), headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "pong"}
    # the fake reports input 13127, cache creation 120, cache read 3000, output 14
    assert body["usage"] == {
        "prompt_tokens": 13127 + 120 + 3000,
        "completion_tokens": 14,
        "total_tokens": 13127 + 120 + 3000 + 14,
        "prompt_tokens_details": {"cached_tokens": 3000},
    }
    assert response.headers["X-Claude-Cost-USD"] == "0.0013197"
    assert response.headers["X-Claude-Num-Turns"] == "1"
    assert len(response.headers["X-Claude-Session-Id"]) == 36


async def test_the_cli_gets_the_documented_argv(
    client: httpx.AsyncClient, fake_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_AGENT", "reviewer")
    monkeypatch.setenv("CHAT_MAX_BUDGET_USD", "0.5")
    monkeypatch.setenv("CLAUDE_PERMISSION_MODE", "plan")
    app_main.get_settings.cache_clear()
    response = await client.post(
        "/v1/chat/completions", json=chat("-x starts with a dash"), headers=AUTH
    )
    assert response.status_code == 200, response.text
    (call,) = read_log(fake_log)
    assert call["argv"] == [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "haiku",
        "--permission-mode",
        "plan",
        "--max-budget-usd",
        "0.5",
        "--agent",
        "reviewer",
        "--",
        "-x starts with a dash",
    ]


async def test_a_failed_run_is_a_503_with_the_clis_own_message(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=chat("@fake:error=Invalid_API_key_·_Fix_external_API_key"),
        headers=AUTH,
    )
    assert response.status_code == 503
    assert response.json() == {
        "error": "execution failed",
        "detail": "Invalid API key · Fix external API key",
        "message": "Invalid API key · Fix external API key",
    }


@pytest.mark.timeout(30)  # the fake retries for 60 s unless the run is cut
@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_credential_ends_the_run_at_once_not_after_the_clis_retries(
    client: httpx.AsyncClient,
    fake_log: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat(f"@fake:auth_retry={status}"), headers=AUTH
    )
    assert response.status_code == 503
    reason = f"the Anthropic API refused the credential ({status} authentication_failed)"
    assert response.json()["detail"] == f"{reason}; not retrying"
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []
    ended = [r.getMessage() for r in caplog.records if r.name == "app.runs"]
    assert len(ended) == 1 and ended[0].endswith(f"ended failed: {reason}; not retrying")


async def test_every_chat_end_is_logged_with_its_outcome(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.runs")
    await client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH)
    await client.post("/v1/chat/completions", json=chat("@fake:crash"), headers=AUTH)
    ended = [r.getMessage() for r in caplog.records if r.name == "app.runs"]
    assert len(ended) == 2
    assert ended[0].startswith("chat chatcmpl-") and ended[0].endswith(
        " completed (cost $0.0013197)"
    )
    assert ended[1].endswith(" ended failed: boom: fake crash")


async def test_a_crash_is_a_503_with_the_stderr_tail(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("@fake:crash"), headers=AUTH)
    assert response.status_code == 503
    assert response.json()["detail"] == "boom: fake crash"


async def test_a_limit_is_a_503_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("@fake:max_turns"), headers=AUTH)
    assert response.status_code == 503
    assert response.json()["detail"] == "Reached maximum number of turns (1)"


async def test_a_timeout_is_a_503_naming_the_timeout(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_TIMEOUT_SECONDS", "0.5")
    app_main.get_settings.cache_clear()
    response = await client.post("/v1/chat/completions", json=chat("@fake:sleep=30"), headers=AUTH)
    assert response.status_code == 503
    assert response.json()["detail"] == "the agent run timed out after 0.5s (CHAT_TIMEOUT_SECONDS)"


async def test_a_missing_cli_is_a_503_that_says_so(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_BIN", "/nonexistent/claude")
    app_main.get_settings.cache_clear()
    response = await client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH)
    assert response.status_code == 503
    assert "'/nonexistent/claude' was not found" in response.json()["detail"]


async def test_a_long_error_is_one_line_of_at_most_500_characters(
    client: httpx.AsyncClient,
) -> None:
    long_error = "@fake:error=" + "x" * 2000
    response = await client.post("/v1/chat/completions", json=chat(long_error), headers=AUTH)
    detail = response.json()["detail"]
    assert response.status_code == 503
    assert len(detail) == 500 and "\n" not in detail


async def test_busy_is_a_503_with_retry_after(client: httpx.AsyncClient) -> None:
    slow = asyncio.create_task(
        client.post("/v1/chat/completions", json=chat("@fake:sleep=2"), headers=AUTH)
    )
    for _ in range(200):
        if app_main.execution_lock.locked():
            break
        await asyncio.sleep(0.01)
    busy = await client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH)
    assert busy.status_code == 503
    assert busy.json() == {
        "error": "execution failed",
        "detail": "agent is busy",
        "message": "agent is busy",
    }
    assert busy.headers["Retry-After"] == "5"
    assert (await slow).status_code == 200
    health = await client.get("/health")
    assert health.json()["busy"] is False


async def test_a_chat_after_the_shutdown_began_is_a_503(client: httpx.AsyncClient) -> None:
    begun = shutdown.arm()
    try:
        shutdown.begin()
        await asyncio.wait_for(begun.wait(), 5)
        response = await client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH)
    finally:
        shutdown.disarm()
    assert response.status_code == 503
    assert response.json() == {
        "error": "execution failed",
        "detail": "the service is shutting down",
        "message": "the service is shutting down",
    }
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        (chat("hi", stream=True), 400, "streaming not supported"),
        (chat("hi", n=2), 400, "invalid request"),
        (chat([{"type": "image_url", "image_url": {"url": "x"}}]), 400, "unsupported content"),
        (
            {"model": "haiku", "messages": [{"role": "system", "content": "s"}]},
            400,
            "invalid request",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            400,
            "unsupported model",
        ),
        ({"model": "haiku", "messages": []}, 422, "invalid request"),
        ({"model": "haiku"}, 422, "invalid request"),
        (
            {"model": "haiku", "messages": [{"role": "wizard", "content": "hi"}]},
            422,
            "invalid request",
        ),
        ({"model": "haiku", "messages": "hi"}, 422, "invalid request"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, 422, "invalid request"),
    ],
)
async def test_bad_input_gets_a_4xx_in_the_error_shape(
    client: httpx.AsyncClient, payload: dict[str, object], status: int, error: str, fake_log: Path
) -> None:
    response = await client.post("/v1/chat/completions", json=payload, headers=AUTH)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["detail"]
    assert read_log(fake_log) == []  # the agent never ran


async def test_unknown_openai_fields_are_ignored(client: httpx.AsyncClient) -> None:
    payload = chat("hi", temperature=0.2, max_tokens=10, tools=[], response_format={"type": "text"})
    response = await client.post("/v1/chat/completions", json=payload, headers=AUTH)
    assert response.status_code == 200, response.text


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed JSON"


async def test_a_body_over_the_limit_is_a_413(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_REQUEST_BYTES", "1000")
    app_main.get_settings.cache_clear()
    response = await client.post("/v1/chat/completions", json=chat("x" * 2000), headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"] == "request too large"

    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(chat("y" * 2000)).encode()

    response = await client.post("/v1/chat/completions", content=chunks(), headers=AUTH)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer"},
    ],
)
async def test_auth_failures_are_401_with_www_authenticate(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models")]:
        response = await client.request(method, path, json=chat("hi"), headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"


async def test_no_configured_token_refuses_everyone(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_BEARER_TOKEN", "")
    app_main.get_settings.cache_clear()
    response = await client.get("/v1/models", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    response = await client.get("/v1/models", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401


async def test_unknown_paths_and_methods_use_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found", "detail": "Not Found", "message": "Not Found"}
    wrong = await client.get("/v1/chat/completions", headers=AUTH)
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method not allowed"


async def test_models_lists_the_supported_aliases(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models", headers=AUTH)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["haiku", "sonnet", "opus"]
    assert response.json()["object"] == "list"


async def test_health_needs_no_auth(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["busy"] is False and body["version"]
    head = await client.head("/health")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}', 400),
        (b'{"messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}', 400),
        (
            b'{"messages": [{"role": "assistant", "name": "a\\u0000b", "content": "x"},'
            b' {"role": "user", "content": "hi"}]}',
            400,
        ),
        (
            b'{"messages": [{"role": "assistant", "name": "a\\ud800b", "content": "x"},'
            b' {"role": "user", "content": "hi"}]}',
            400,
        ),
        (b'{"messages": NaN}', 422),
        (b'{"model": Infinity, "messages": [{"role": "user", "content": "hi"}]}', 422),
    ],
)
async def test_text_the_cli_cannot_take_is_refused_not_a_500(
    client: httpx.AsyncClient, raw: bytes, status: int, fake_log: Path
) -> None:
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == "invalid request"
    assert read_log(fake_log) == []


async def test_strangers_learn_nothing_before_auth(client: httpx.AsyncClient) -> None:
    malformed = await client.post(
        "/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 401
    for path in ("/openapi.json", "/docs", "/redoc", "/nope"):
        assert (await client.get(path)).status_code == 401
    schema = await client.get("/openapi.json", headers=AUTH)
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    assert (await client.get("/docs", headers=AUTH)).status_code == 404
