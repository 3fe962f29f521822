"""The command line: `claude-agent-service serve [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import enum
import math
import os
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from app import __version__, logs
from app.doctor import Check, report, run_checks
from app.instance import DataDirLocked, bind_listener, lock_data_dir, setting_problems
from app.jobs.backends import check_store
from app.jobs.store import DatabaseError
from app.protocol import HttpLimits, guarded_httptools
from app.redact import redact
from app.settings import Settings, describe_problems, get_settings, setting_rows
from app.shutdown import SHUTDOWN_MARGIN_S, shutdown
from app.workspace.git import WorkspaceError
from app.workspace.pool import prepare_slots


class ExitCode(enum.IntEnum):
    """What `serve` exits with when it cannot start (each says why on stderr)."""

    OK = 0
    START_FAILED = 1
    CONFIG = 2
    DATABASE = 3
    DATA_DIR_IN_USE = 4
    ADDRESS = 5


EXIT_CODE_MEANINGS = {
    ExitCode.START_FAILED: "the workspace cannot be used (or the app's start-up failed)",
    ExitCode.CONFIG: "a setting is missing or invalid, or the CLI cannot be found",
    ExitCode.DATABASE: "the job database is damaged, cannot be written, or is too new",
    ExitCode.DATA_DIR_IN_USE: "another service process holds DATA_DIR",
    ExitCode.ADDRESS: "HOST:PORT cannot be listened on (in use, or not allowed)",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="claude-agent-service",
        description="Run the Claude Code CLI as an agent behind an HTTP API.",
        epilog="Run `claude-agent-service serve --help` for the settings and exit codes.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Check the settings, the job database and the workspace, then serve.",
        epilog=_serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_parser.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to bind (default: PORT or 8000)")
    doctor_parser = commands.add_parser(
        "doctor",
        help="check that this set-up is ready to serve",
        description="Check the CLI, its credential and permissions, the workspace and its "
        "remote, the job store and the token; say how to fix what fails. "
        "Exit 0 when every check passes, 1 otherwise.",
    )
    doctor_parser.add_argument("--json", action="store_true", help="print JSON for machines")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor(as_json=args.json)
    return serve(host=args.host, port=args.port)


def doctor(*, as_json: bool) -> int:
    """Run every check of the set-up; print them; 0 when all pass, 1 otherwise."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = [Check("settings", False, line) for line in describe_problems(exc)]
        print(report(problems, as_json=as_json))
        return 1
    checks = run_checks(settings)
    print(report(checks, as_json=as_json))
    return 0 if all(check.ok for check in checks) else 1


def _serve_epilog() -> str:
    settings = "\n".join(
        f"  {name} (default: {default})\n      {description}"
        for name, default, description in setting_rows()
    )
    codes = "\n".join(f"  {code.value}  {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items())
    return (
        "settings (environment variables, or a .env file in the working directory;\n"
        "the README's Configuration section says more):\n"
        f"{settings}\n\nexit codes:\n{codes}\n"
        "  (stopped by a signal, it ends by that signal: 143 for SIGTERM in a shell)"
    )


def serve(*, host: str | None, port: int | None) -> int:
    """Check everything that can be checked before serving, in an order that
    touches nothing another process may own; then run uvicorn until stopped."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        _fail("invalid configuration:", *describe_problems(exc))
        return ExitCode.CONFIG
    problems = setting_problems(settings)
    if problems:
        _fail(*problems)
        return ExitCode.CONFIG
    try:
        lock_data_dir(settings.data_dir)
    except DataDirLocked as exc:
        _fail(str(exc))
        return ExitCode.DATA_DIR_IN_USE
    except OSError as exc:
        _fail(f"cannot use DATA_DIR {settings.data_dir}: {exc.strerror or exc}")
        return ExitCode.DATABASE
    host = host or settings.host
    port = settings.port if port is None else port
    try:
        listener = bind_listener(host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        _fail(f"cannot listen on {host}:{port}: {reason} (HOST, PORT, --port)")
        return ExitCode.ADDRESS
    try:
        check_store(settings)
        prepare_slots(
            count=settings.max_concurrent_runs,
            workspace_dir=settings.workspace_dir,
            data_dir=settings.data_dir,
            repo_url=settings.git_repo_url,
            branch=settings.git_branch,
        )
    except DatabaseError as exc:
        listener.close()
        _fail(str(exc))
        return ExitCode.DATABASE
    except WorkspaceError as exc:
        listener.close()
        _fail(redact(str(exc)))
        return ExitCode.START_FAILED
    return _run(settings, listener)


def _run(settings: Settings, listener: socket.socket) -> int:
    limits = HttpLimits(
        max_head_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        head_timeout_s=settings.header_timeout_seconds,
        body_timeout_s=settings.body_timeout_seconds,
    )
    logs.configure(settings.log_format, settings.log_level)
    config = uvicorn.Config(
        "app.main:app",
        http=guarded_httptools(limits),
        limit_concurrency=settings.max_connections,
        log_config=None,  # configured above: one formatter for every line
        access_log=False,  # the service writes its own (app.access)
        # a backstop: the drain (app.shutdown) ends the connections before it
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S),
    )
    server = _Server(config)
    server.run(sockets=[listener])
    return ExitCode.OK if server.started else ExitCode.START_FAILED


class _Server(uvicorn.Server):
    """uvicorn, telling the app the moment a shutdown signal arrives."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        shutdown.begin()


def _fail(*lines: str) -> None:
    for line in lines:
        print(f"claude-agent-service: {line}", file=sys.stderr)
