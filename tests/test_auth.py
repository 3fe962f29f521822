"""Named tokens (API_BEARER_TOKENS_FILE): who submitted what, re-read on SIGHUP."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from app.auth import Tokens, TokensFileError, read_tokens_file
from app.redact import service_secrets
from app.settings import Settings
from tests.conftest import cli, start_server, wait_until
from tests.jobs.helpers import submit, wait_for

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
CAROL = "carol-token-5555555555"


def as_(server_url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_tokens_are_identified_by_name() -> None:
    tokens = Tokens.of([("default", "main-token-000"), ("alice", ALICE)])
    assert tokens.identify(ALICE) == "alice"
    assert tokens.identify("main-token-000") == "default"
    assert tokens.identify("nope") is None
    assert tokens.identify(ALICE + "x") is None


def test_a_tokens_file_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# team tokens\n\nalice: {ALICE}\nbob:{BOB}\n")
    assert read_tokens_file(path) == [("alice", ALICE), ("bob", BOB)]
    for text, problem in [
        ("alice\n", "line 1: expected name:token"),
        ("alice:\n", "line 1: expected name:token"),
        ("al ice:x\n", "line 1: a name is letters"),
        (f"a:{ALICE}\na:{BOB}\n", "line 2: the name 'a' is used twice"),
    ]:
        path.write_text(text)
        with pytest.raises(TokensFileError, match=problem):
            read_tokens_file(path)


def test_file_tokens_are_secrets_to_redact(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"alice:{ALICE}\n")
    settings = Settings(api_bearer_token=None, api_bearer_tokens_file=path)
    assert ALICE in service_secrets(settings)


def test_named_tokens_submit_jobs_under_their_name_and_reload_on_sighup(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    env: dict[str, str | None] = {
        **service_env,
        "API_BEARER_TOKEN": None,
        "API_BEARER_TOKENS_FILE": str(tokens),
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        with as_(server.base_url, ALICE) as alice, as_(server.base_url, BOB) as bob:
            assert wait_for(alice, submit(alice, "from alice"))["submitted_by"] == "alice"
            assert wait_for(bob, submit(bob, "from bob"))["submitted_by"] == "bob"
            tokens.write_text(f"alice:{ALICE}\ncarol:{CAROL}\n")
            server.proc.send_signal(signal.SIGHUP)
            with as_(server.base_url, CAROL) as carol:
                wait_until(lambda: carol.get("/jobs").status_code == 200, "carol is let in")
                job = wait_for(carol, submit(carol, f"@fake:say=key_{CAROL}"))
                assert job["submitted_by"] == "carol"
                assert job["result"] == "key ***"  # a token added by SIGHUP is a secret too
            assert bob.get("/jobs").status_code == 401
            assert alice.get("/jobs").status_code == 200
            tokens.write_text("broken line\n")  # a bad file keeps the tokens in force
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "tokens not reloaded" in server.log(), "the reload is refused")
            assert alice.get("/jobs").status_code == 200
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert ALICE not in server.log() and CAROL not in server.log()


def test_a_bad_tokens_file_refuses_to_start(service_env: dict[str, str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("no colon here\n")
    env = {**service_env, "API_BEARER_TOKENS_FILE": str(tokens)}
    done = cli("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert f"API_BEARER_TOKENS_FILE {tokens} line 1: expected name:token" in done.stderr
    missing = cli(
        "serve", env={**env, "API_BEARER_TOKENS_FILE": str(tmp_path / "nope")}, cwd=tmp_path
    )
    assert missing.returncode == 2 and "cannot be read" in missing.stderr
