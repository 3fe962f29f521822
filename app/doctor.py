"""`claude-agent-service doctor`: is this set-up ready to serve? Each check
says what it found and, when it fails, how to fix it.

`readiness` is the cheap subset behind `GET /health/ready`: nothing in it
starts a process or reaches the network.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from app.auth import TokensFileError, tokens_of
from app.proc import child_environment
from app.redact import redact
from app.settings import CLI_INSTALL_HINT, Settings, agent_dotenv, find_cli

# The CLI release the tests pin (the Makefile's CLAUDE_CLI_VERSION).
PINNED_CLI_VERSION = "2.1.330"
MIN_TOKEN_CHARS = 16
_VERSION_TIMEOUT_S = 30
_REMOTE_TIMEOUT_S = 20
_CREDENTIAL_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
_PROVIDERS = {"CLAUDE_CODE_USE_BEDROCK": "Amazon Bedrock", "CLAUDE_CODE_USE_VERTEX": "Vertex AI"}


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was looked at, whether it passed, what was found, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a set-up is built (blocking: processes, network)."""
    env = child_environment(os.environ, agent_dotenv())
    return [
        _cli(settings),
        _permissions(settings, env),
        _credential(env),
        _workspace(settings),
        _remote(settings),
        _store(settings),
        _token(settings),
    ]


def readiness(settings: Settings, *, store_error: str | None) -> list[Check]:
    """The checks that cost nothing: for a readiness probe, on every call."""
    found = find_cli(settings.claude_bin)
    cli = Check(
        "claude cli",
        found is not None,
        found or f"{settings.claude_bin!r} not found",
        None if found else CLI_INSTALL_HINT,
    )
    store = Check(
        "job store",
        store_error is None,
        "takes writes" if store_error is None else store_error,
        None if store_error is None else "see the job store check of `doctor`",
    )
    workspace = settings.workspace_dir
    is_repo = (workspace / ".git").exists()
    tree = Check(
        "workspace",
        is_repo,
        f"{workspace} is a git work tree" if is_repo else f"{workspace} has no .git",
        None if is_repo else "restore the workspace, or point WORKSPACE_DIR at a git work tree",
    )
    return [cli, store, tree, _token_set(settings)]


def report(checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}, indent=2
        )
    lines = []
    for check in checks:
        lines.append(f"{'✓' if check.ok else '✗'} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"    fix: {check.fix}")
    failed = sum(1 for c in checks if not c.ok)
    lines.append("all checks passed" if not failed else f"{failed} of {len(checks)} checks failed")
    return "\n".join(lines)


# -- the checks ---------------------------------------------------------------------------


def _cli(settings: Settings) -> Check:
    path = find_cli(settings.claude_bin)
    if path is None:
        return Check(
            "claude cli", False, f"{settings.claude_bin!r} was not found", CLI_INSTALL_HINT
        )
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("claude cli", False, f"{path} does not run: {exc}", CLI_INSTALL_HINT)
    version = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if done.returncode != 0 or not version:
        why = (done.stderr or done.stdout).strip()[:200] or f"exit {done.returncode}"
        return Check("claude cli", False, f"{path} --version failed: {why}", CLI_INSTALL_HINT)
    pinned = (
        "the version the tests pin"
        if version.split()[0] == PINNED_CLI_VERSION
        else f"the tests pin {PINNED_CLI_VERSION}"
    )
    return Check("claude cli", True, f"{path}: {version} ({pinned})")


def _permissions(settings: Settings, env: Mapping[str, str]) -> Check:
    mode = settings.claude_permission_mode
    as_root = os.geteuid() == 0
    if mode == "bypassPermissions" and as_root and env.get("IS_SANDBOX") != "1":
        return Check(
            "permissions",
            False,
            "CLAUDE_PERMISSION_MODE=bypassPermissions while running as root: the CLI refuses it",
            "run as a non-root user, or set IS_SANDBOX=1 (only inside a container or VM), "
            "or use CLAUDE_PERMISSION_MODE=acceptEdits",
        )
    who = "root" if as_root else "a non-root user"
    return Check("permissions", True, f"{mode} as {who}")


def _credential(env: Mapping[str, str]) -> Check:
    for name in _CREDENTIAL_VARIABLES:
        if env.get(name, "").strip():
            return Check("credential", True, f"{name} is set")
    for name, provider in _PROVIDERS.items():
        if env.get(name, "").strip() not in ("", "0", "false"):
            return Check("credential", True, f"{provider} ({name})")
    home = Path(env.get("HOME") or Path.home())
    login = home / ".claude" / ".credentials.json"
    if login.is_file():
        return Check("credential", True, f"a login in {login}")
    return Check(
        "credential",
        False,
        "no credential for the CLI: no ANTHROPIC_API_KEY, no CLAUDE_CODE_OAUTH_TOKEN, no login "
        f"in {home / '.claude'}, no Bedrock or Vertex setting",
        "set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`) in the "
        "environment or .env; or configure Bedrock/Vertex (README: Getting a working agent)",
    )


def _git(path: Path, *args: str, timeout_s: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CEILING_DIRECTORIES": str(path.parent)},
        check=False,
    )


def _workspace(settings: Settings) -> Check:
    path = settings.workspace_dir
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        source = "cloned from GIT_REPO_URL" if settings.git_repo_url else "git init-ed"
        return Check("workspace", True, f"{path} will be {source} at start-up")
    if not (path / ".git").exists():
        return Check(
            "workspace",
            False,
            f"{path} is not a git repository",
            "point WORKSPACE_DIR at a git work tree or an empty directory",
        )
    branch = _git(path, "symbolic-ref", "--quiet", "--short", "HEAD")
    if branch.returncode != 0:
        return Check(
            "workspace",
            False,
            f"{path} is on a detached HEAD",
            f"check out a branch in {path} (git switch <branch>)",
        )
    name = branch.stdout.strip()
    if settings.git_branch and name != settings.git_branch:
        return Check(
            "workspace",
            False,
            f"{path} is on {name}, GIT_BRANCH is {settings.git_branch}",
            f"git -C {path} switch {settings.git_branch}",
        )
    return Check("workspace", True, f"{path} on branch {name}")


def _remote(settings: Settings) -> Check:
    path = settings.workspace_dir
    url = settings.git_repo_url
    if url is None and (path / ".git").exists():
        found = _git(path, "remote", "get-url", "origin")
        url = found.stdout.strip() if found.returncode == 0 else None
    if not url:
        return Check("remote", True, "no origin: runs are not synced or pushed")
    where = path if path.is_dir() else Path.cwd()
    try:
        done = _git(where, "ls-remote", "--heads", "--", url, timeout_s=_REMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Check(
            "remote",
            False,
            f"{redact(url)} did not answer within {_REMOTE_TIMEOUT_S}s",
            "check the network and the URL",
        )
    if done.returncode != 0:
        why = " ".join(redact(done.stderr).split())[:300]
        return Check(
            "remote",
            False,
            f"{redact(url)} cannot be reached: {why}",
            "check the URL and its credentials (a token scoped to the repository, or a "
            "credential helper)",
        )
    return Check("remote", True, f"{redact(url)} answers")


def _store(settings: Settings) -> Check:
    if settings.database is not None:
        return _postgres(settings.database)
    data = settings.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "job store",
            False,
            f"DATA_DIR {data} is not writable: {exc.strerror or exc}",
            "give the service's user write access to DATA_DIR, or choose another",
        )
    return Check("job store", True, f"DATA_DIR {data} is writable (SQLite)")


def _postgres(url: str) -> Check:
    import psycopg

    async def ping() -> None:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=10)
        async with conn:
            await conn.execute("SELECT 1")

    try:
        asyncio.run(asyncio.wait_for(ping(), 15))
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return Check(
            "job store",
            False,
            f"the database (DATABASE_URL) cannot be reached: {redact(' '.join(str(exc).split()))}",
            "check DATABASE_URL, the server and its credentials",
        )
    return Check("job store", True, "the database (DATABASE_URL) answers")


def _token_set(settings: Settings) -> Check:
    """A token to serve with (its length is `doctor`'s concern, not readiness's)."""
    try:
        tokens = tokens_of(settings)
    except TokensFileError as exc:
        return Check("token", False, str(exc), "fix API_BEARER_TOKENS_FILE")
    if not tokens:
        return Check("token", False, "no token is set", "set API_BEARER_TOKEN")
    return Check("token", True, f"{len(tokens.entries)} token(s)")


def _token(settings: Settings) -> Check:
    try:
        tokens = tokens_of(settings)
    except TokensFileError as exc:
        return Check("token", False, str(exc), "fix API_BEARER_TOKENS_FILE")
    if not tokens:
        return Check(
            "token",
            False,
            "API_BEARER_TOKEN is not set (nor API_BEARER_TOKENS_FILE)",
            "set API_BEARER_TOKEN to a long random string (openssl rand -hex 32)",
        )
    short = [name for name, token in tokens.entries if len(token) < MIN_TOKEN_CHARS]
    if short:
        return Check(
            "token",
            False,
            f"token {', '.join(short)} is shorter than {MIN_TOKEN_CHARS} characters",
            "use long random tokens (openssl rand -hex 32)",
        )
    return Check("token", True, f"{len(tokens.entries)} token(s), each of 16 characters or more")
