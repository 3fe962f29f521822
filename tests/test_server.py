"""A real server on a loopback port, driven by the official openai SDK."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import TOKEN, Server, group_members, read_log, start_server


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def test_the_openai_sdk_gets_an_answer(server: Server, fake_log: Path) -> None:
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="haiku",
        messages=[
            {"role": "system", "content": "You are concise."},
            {"role": "user", "content": "Capital of France? @fake:say=Paris."},
        ],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "haiku"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 13127 + 120 + 3000
    assert completion.usage.completion_tokens == 14
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 3000
    assert raw.headers["x-claude-cost-usd"] == "0.0013197"
    (call,) = read_log(fake_log)
    assert "You are concise." in call["prompt_head"]
    assert call["env_has_token"] is False


def test_the_sdk_lists_models_and_sees_auth_errors(server: Server) -> None:
    assert [m.id for m in sdk(server).models.list()] == ["haiku", "sonnet", "opus"]
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        sdk(server).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 400
    assert err.value.response.json() == {
        "error": "unsupported model",
        "detail": "model 'gpt-4o' is not supported",
        "message": "model 'gpt-4o' is not supported",
        "supported": ["haiku", "sonnet", "opus"],
    }


def test_a_second_request_while_one_runs_gets_503(server: Server) -> None:
    client = sdk(server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            client.chat.completions.create,
            model="haiku",
            messages=[{"role": "user", "content": "@fake:sleep=2"}],
        )
        with server.client() as http:
            deadline = time.monotonic() + 10
            while not http.get("/health").json()["busy"] and time.monotonic() < deadline:
                time.sleep(0.02)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(
                model="haiku", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.status_code == 503
        assert err.value.response.headers["retry-after"] == "5"
        assert slow.result(timeout=30).choices[0].message.content == "Hello from the fake claude!"


def test_a_client_that_hangs_up_cancels_the_run(server: Server, fake_log: Path) -> None:
    impatient = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=TOKEN, max_retries=0, timeout=1.0
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "@fake:grandchild @fake:sleep=60"}]
        )
    with server.client() as http:
        deadline = time.monotonic() + 15
        while http.get("/health").json()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/health").json()["busy"] is False
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []


def test_sigterm_stops_the_server_cleanly(service_env: dict[str, str], tmp_path: Path) -> None:
    srv = start_server(service_env, tmp_path / "own.log")
    # uvicorn re-raises the signal after its graceful shutdown, as it should
    assert srv.stop(signal.SIGTERM) == -signal.SIGTERM
    assert "Application shutdown complete" in srv.log()


def test_at_sigterm_a_chat_gets_the_grace_then_a_503(
    service_env: dict[str, str], tmp_path: Path, fake_log: Path
) -> None:
    srv = start_server({**service_env, "SHUTDOWN_GRACE_SECONDS": "1"}, tmp_path / "own.log")
    client = sdk(srv)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            client.chat.completions.create,
            model="haiku",
            messages=[{"role": "user", "content": "@fake:grandchild @fake:sleep=60"}],
        )
        deadline = time.monotonic() + 10
        while not read_log(fake_log) and time.monotonic() < deadline:
            time.sleep(0.02)
        srv.stop(signal.SIGTERM, timeout_s=30)
        with pytest.raises(openai.InternalServerError) as err:
            slow.result(timeout=5)
    assert err.value.status_code == 503
    assert err.value.response.json() == {
        "error": "execution failed",
        "detail": "the service shut down during the run; it was cancelled",
        "message": "the service shut down during the run; it was cancelled",
    }
    (call,) = read_log(fake_log)
    assert group_members(call["pgid"]) == []
    assert "Application shutdown complete" in srv.log()
