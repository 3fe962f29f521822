"""The command line: `claude-agent-service serve [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.config import LOGGING_CONFIG

from app import __version__
from app.settings import get_settings
from app.shutdown import SHUTDOWN_MARGIN_S, shutdown
from app.workspace.git import WorkspaceError, ensure_workspace, redact

EXIT_CONFIG = 2
EXIT_WORKSPACE = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="claude-agent-service",
        description="Run the Claude Code CLI as an agent behind an HTTP API.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to bind (default: PORT or 8000)")
    args = parser.parse_args(argv)
    return serve(host=args.host, port=args.port)


def serve(*, host: str | None, port: int | None) -> int:
    """Check the configuration and the workspace, then run uvicorn until stopped."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        _fail(f"invalid configuration:\n{exc}")
        return EXIT_CONFIG
    if settings.bearer_token is None:
        _fail(
            "API_BEARER_TOKEN is not set; refusing to serve without auth. "
            "Set it in the environment or in .env."
        )
        return EXIT_CONFIG
    try:
        ensure_workspace(
            settings.workspace_dir, repo_url=settings.git_repo_url, branch=settings.git_branch
        )
    except WorkspaceError as exc:
        _fail(redact(str(exc)))
        return EXIT_WORKSPACE
    config = uvicorn.Config(
        "app.main:app",
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=_log_config(),
        # a backstop: the drain (app.shutdown) ends the connections before it
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S),
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else EXIT_WORKSPACE


class _Server(uvicorn.Server):
    """uvicorn, telling the app the moment a shutdown signal arrives."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        shutdown.begin()


def _log_config() -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["app"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _fail(message: str) -> None:
    print(f"claude-agent-service: {message}", file=sys.stderr)
