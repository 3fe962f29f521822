"""Operations: metrics a Prometheus server scrapes, JSON log lines with request
ids, and no secret in either. Real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN, Server, free_port, start_server, wait_until
from tests.jobs.helpers import submit, wait_for


def scrape(server: Server, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{server.base_url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def log_lines(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def test_metrics_count_runs_busy_answers_requests_and_git(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(service_env, tmp_path / "s.log")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    gate = tmp_path / "go"
    try:
        before = scrape(server)
        assert value(before, "agent_slots") == 1 and value(before, "agent_busy") == 0
        with server.client() as client:
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
            crash = {"messages": [{"role": "user", "content": "@fake:crash"}]}
            assert client.post("/v1/chat/completions", json=crash).status_code == 503
            held = submit(client, f"@fake:wait_for={gate}")
            wait_until(lambda: value(scrape(server), "agent_busy") == 1, "the job holds the slot")
            queued = submit(client, "after")
            busy = client.post("/v1/chat/completions", json=chat)
            assert busy.status_code == 503
            during = scrape(server)
            gate.touch()
            wait_for(client, held)
            wait_for(client, queued)
        after = scrape(server)
    finally:
        server.stop()
    assert value(during, "agent_runs_active") == 1
    assert value(during, "agent_queue_depth") == 1
    assert value(after, "agent_runs_total", kind="chat", status="completed") == 1
    assert value(after, "agent_runs_total", kind="chat", status="failed") == 1
    assert value(after, "agent_runs_total", kind="chat", status="busy") == 1
    assert value(after, "agent_runs_total", kind="job", status="completed") == 2
    assert value(after, "agent_run_duration_seconds_count", kind="job") == 2
    assert value(after, "agent_cost_usd_total") == pytest.approx(3 * 0.0013197)
    # the fake reports input 13127, output 14, cache read 3000, creation 120 per run
    assert value(after, "agent_tokens_total", type="input") == 3 * 13127
    assert value(after, "agent_tokens_total", type="cache_creation") == 3 * 120
    assert value(after, "agent_queue_depth") == 0 and value(after, "agent_busy") == 0
    route = "/v1/chat/completions"
    assert value(after, "http_requests_total", route=route, code="200") == 1
    assert value(after, "http_requests_total", route=route, code="503") == 2
    assert value(after, "http_requests_total", route="/jobs/{job_id}", code="200") >= 2
    assert value(after, "http_request_duration_seconds_count", route="/metrics") >= 1
    assert value(after, "git_operations_total", op="sync", result="ok") == 4  # not the busy one
    routes = {dict(labels)["route"] for name, labels in after if name == "http_requests_total"}
    assert "/jobs/{job_id}" in routes and not any(held in route for route in routes)


def test_metrics_can_require_the_token(service_env: dict[str, str], tmp_path: Path) -> None:
    server = start_server({**service_env, "METRICS_REQUIRE_AUTH": "true"}, tmp_path / "s.log")
    try:
        assert httpx.get(f"{server.base_url}/metrics").status_code == 401
        assert value(scrape(server, Authorization=f"Bearer {TOKEN}"), "agent_slots") == 1
    finally:
        server.stop()


def test_log_lines_are_json_with_request_ids_and_never_a_token(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server({**service_env, "LOG_FORMAT": "json"}, tmp_path / "s.log")
    wrong = "sk-wrong-token-0123456789"
    try:
        with server.client() as client:
            response = client.post(
                "/execute",
                json={"prompt": "logged", "model": "haiku"},
                headers={"X-Request-ID": "req-42"},
            )
            assert response.headers["X-Request-ID"] == "req-42"
            job = wait_for(client, response.json()["job_id"])
            insane = client.get("/health", headers={"X-Request-ID": "x" * 200})
            assert len(insane.headers["X-Request-ID"]) == 32  # replaced by a new one
            failed = client.post(
                "/v1/chat/completions",
                json={"model": "opus", "messages": [{"role": "user", "content": "@fake:error=no"}]},
            )
            assert failed.status_code == 503
            probe = client.get("/health", headers={"X-Request-ID": "probe-1"})
            assert probe.status_code == 200 and probe.headers["X-Request-ID"] == "probe-1"
        refused = httpx.get(f"{server.base_url}/jobs", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401 and refused.headers["X-Request-ID"]
    finally:
        server.stop()
    assert job["request_id"] == "req-42"
    lines = log_lines(server)
    assert lines and all({"timestamp", "level", "logger", "event"} <= set(line) for line in lines)
    submitted = next(
        line
        for line in lines
        if line["logger"] == "app.access" and line.get("request_id") == "req-42"
    )
    assert submitted["route"] == "/execute" and submitted["status"] == 202
    assert submitted["token"] == "default" and submitted["duration_ms"] >= 0
    assert not any(line.get("request_id") == "probe-1" for line in lines)  # a probe: DEBUG
    refusal = next(line for line in lines if line.get("status") == 401)
    assert refusal["logger"] == "app.access" and refusal["level"] == "info"
    ran = [line for line in lines if line.get("job_id") == job["job_id"]]
    (end,) = [line for line in ran if line["logger"] == "app.runs"]
    assert (end["status"], end["model"]) == ("completed", "haiku")
    assert end["cost"] == job["total_cost_usd"] and end["cost"] > 0
    chat_end = next(line for line in lines if line["event"].startswith("chat "))
    assert chat_end["logger"] == "app.runs" and chat_end["level"] == "warning"
    assert (chat_end["status"], chat_end["model"]) == ("failed", "opus")
    assert TOKEN not in server.log() and wrong not in server.log()
    assert "logged" not in server.log()  # prompts are not logged by default


def test_prompts_are_logged_only_when_asked(service_env: dict[str, str], tmp_path: Path) -> None:
    server = start_server({**service_env, "LOG_PROMPTS": "true"}, tmp_path / "s.log")
    try:
        with server.client() as client:
            wait_for(client, submit(client, "a prompt worth logging"))
    finally:
        server.stop()
    assert "prompt: a prompt worth logging" in server.log()


def test_a_bare_uvicorn_logs_the_same_way(service_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        env={**os.environ, **service_env, "LOG_LEVEL": "DEBUG"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, "uvicorn serves", timeout_s=30)
        httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "bare-1"})
        models = httpx.get(
            f"http://127.0.0.1:{port}/v1/models",
            headers={"X-Request-ID": "bare-2", "Authorization": f"Bearer {TOKEN}"},
        )
        assert models.status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    text = (tmp_path / "uvicorn.log").read_text()
    lines = [json.loads(x) for x in text.splitlines()]  # every line, uvicorn's first ones too
    assert lines[0]["logger"] == "uvicorn.error" and "Started server process" in lines[0]["event"]
    by_id = {line.get("request_id"): line for line in lines if line["logger"] == "app.access"}
    # a successful probe of /health is logged at DEBUG, any other request at INFO
    assert (by_id["bare-1"]["route"], by_id["bare-1"]["level"]) == ("/health", "debug")
    assert (by_id["bare-2"]["route"], by_id["bare-2"]["level"]) == ("/v1/models", "info")
