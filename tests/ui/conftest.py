"""The dashboard's fixtures: a real server that commits and pushes, a signed-in
client, and one headless Chromium (Debian's, driven by Playwright) per module."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAKE_CLAUDE, TOKEN, Server, make_remote, start_server, unavailable

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# As root, offline: no sandbox (it needs user namespaces), and nothing that
# would reach for the network by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKENS_FILE = "alice:alice-token-0123\nbob:bob-token-4567\ncarol:carol-token-89ab\n"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Dashboard:
    """A service with GIT_PUSH on a local remote (a bare repository at `remote`),
    two slots, and a gate directory: runs whose prompt says
    `@fake:wait_for=<gate>/NAME` wait until NAME exists."""

    server: Server
    gate: Path
    tokens_file: Path
    remote: Path
    held: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.server.base_url

    def hold(self, name: str) -> Path:
        """A gate's path, for a prompt; `release_all` opens it if the test does not."""
        self.held.add(name)
        return self.gate / name

    def open(self, name: str) -> None:
        (self.gate / name).touch()

    def release_all(self) -> None:
        """Open every gate handed out: a test that failed half-way must not
        leave runs holding the slots the next test needs."""
        for name in self.held:
            self.open(name)
        self.held.clear()


def dashboard_env(root: Path) -> tuple[dict[str, str], Path, Path]:
    remote = make_remote(root)
    gate = root / "gate"
    gate.mkdir()
    tokens_file = root / "tokens"
    tokens_file.write_text(TOKENS_FILE)
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "API_BEARER_TOKENS_FILE": str(tokens_file),
        "WORKSPACE_DIR": str(root / "ws"),
        "DATA_DIR": str(root / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "GIT_REPO_URL": str(remote),
        "GIT_PUSH": "true",
        "MAX_CONCURRENT_RUNS": "2",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "JOB_TIMEOUT_SECONDS": "120",
    }
    return env, gate, tokens_file


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One server per test module."""
    root = tmp_path_factory.mktemp("ui")
    env, gate, tokens_file = dashboard_env(root)
    server = start_server(env, root / "server.log")
    yield Dashboard(server, gate, tokens_file, Path(env["GIT_REPO_URL"]))
    server.stop()


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF token"
    return found.group(1)


@contextlib.contextmanager
def signed_in(base_url: str, token: str = TOKEN) -> Iterator[httpx.Client]:
    """An httpx client holding a dashboard session (it posts as the pages do)."""
    with httpx.Client(base_url=base_url, timeout=30, headers={"Origin": base_url}) as client:
        response = client.post("/ui/sign-in", data={"token": token, "next": "/ui/"})
        assert response.status_code == 303, response.text
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package: Playwright's own download cannot work offline).

    One per module, not per session: while Playwright's sync API is open, the
    thread counts as running an event loop, and an async test of another
    module that the same xdist worker runs meanwhile could not start its own.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
