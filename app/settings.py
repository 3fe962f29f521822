"""Service configuration: read from the environment (and `.env`) once, validated.

Every setting has a one-line description: `claude-agent-service --help` and
the README's table show them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_FILE = ".env"
PermissionMode = Literal["acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan"]
# A tool name or one of the CLI's patterns: Bash, mcp__server__tool, Bash(git:*),
# Read(./src/**); never an option (it would reach the CLI's argv).
TOOL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}(\([^()\x00-\x1f]{1,256}\))?$")


def webhook_problem(url: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why `url` may not be called back, or None: http(s), a host in the list."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL"
    if host not in allowed_hosts:
        return f"names host {host!r}, which is not in WEBHOOK_ALLOWED_HOSTS"
    return None


# How a user gets the pinned CLI (the Makefile's `claude-cli` target).
CLI_INSTALL_HINT = (
    "install it with `make claude-cli` (the pinned release, into .cache/claude-cli) or "
    "`npm install -g @anthropic-ai/claude-code`, or set CLAUDE_BIN to its path"
)


class Settings(BaseSettings):
    """Every knob of the service; names match the environment variables."""

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", frozen=True)

    api_bearer_token: SecretStr | None = Field(
        default=None,
        description="the token every request but GET /health must carry (or a tokens file)",
    )
    api_bearer_tokens_file: Path | None = Field(
        default=None,
        description="a file of name:token lines, each a token that may call the API",
    )
    host: str = Field(default="127.0.0.1", description="the address `serve` listens on")
    port: int = Field(default=8000, ge=0, le=65535, description="the port `serve` listens on")

    database_url: SecretStr | None = Field(
        default=None,
        description="a postgresql:// URL: one job store for several instances (none: SQLite)",
    )
    instance_id: str | None = Field(
        default=None,
        description="this instance's name in a shared store (none: host name and a random suffix)",
    )
    job_lease_seconds: float = Field(
        default=30, ge=3, description="a running job is its instance's while it renews this lease"
    )

    workspace_dir: Path = Field(
        default=Path("./workspace"), description="the agent's working directory (a git work tree)"
    )
    data_dir: Path = Field(
        default=Path("./data"), description="the service's own state: the job database"
    )

    claude_bin: str = Field(
        default="claude", description="the Claude Code CLI to run (a path, or a name on PATH)"
    )
    claude_permission_mode: PermissionMode = Field(
        default="acceptEdits", description="passed to the CLI as --permission-mode"
    )
    default_model: str = Field(default="sonnet", description="the model when a request names none")
    supported_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("haiku", "sonnet", "opus"),
        description="the model aliases requests may name (comma-separated)",
    )

    chat_agent: str | None = Field(
        default=None, description="passed as --agent for chat completions"
    )
    chat_max_budget_usd: float = Field(
        default=2.0, gt=0, description="passed as --max-budget-usd for chat completions"
    )
    chat_timeout_seconds: float = Field(
        default=900, gt=0, description="wall-clock limit of one chat run"
    )

    git_repo_url: str | None = Field(
        default=None, description="the repository to clone into a missing or empty workspace"
    )
    git_branch: str | None = Field(
        default=None, description="the branch to sync with and push to (none: the remote's)"
    )
    git_sync: bool = Field(default=True, description="fetch and rebase before every run")
    git_sync_timeout_seconds: float = Field(
        default=60, gt=0, description="bound on each git command of the sync and of the push"
    )
    git_sync_min_interval_seconds: float = Field(
        default=0, ge=0, description="runs closer together than this share one fetch"
    )
    git_sync_required: bool = Field(default=False, description="a failed sync fails the run")
    git_push: bool = Field(
        default=False, description="after every run, commit what the agent left and push it"
    )
    git_author_name: str = Field(
        default="Claude Agent Service", description="author of the service's commits"
    )
    git_author_email: str = Field(
        default="agent-service@localhost", description="author e-mail of the service's commits"
    )

    max_concurrent_runs: int = Field(
        default=1, ge=1, le=64, description="agent runs at once, each in a workspace of its own"
    )

    max_request_bytes: int = Field(
        default=10 * 2**20, gt=0, description="larger request bodies get 413"
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="a larger request head gets 431"
    )
    max_headers: int = Field(
        default=100, ge=8, description="a request with more header fields gets 431"
    )
    header_timeout_seconds: float = Field(
        default=10, gt=0, description="a request head not complete this long after it began: 408"
    )
    body_timeout_seconds: float = Field(
        default=60, gt=0, description="a request body not complete this long after its head: closed"
    )
    max_connections: int = Field(
        default=1000, ge=2, description="open connections at most; past it requests get 503"
    )

    job_max_budget_usd: float = Field(
        default=5.0, gt=0, description="the default and the cap of a job's max_budget_usd"
    )
    job_timeout_seconds: float = Field(
        default=2700, ge=1, description="the default and the cap of a job's timeout_seconds"
    )
    max_queue_depth: int = Field(
        default=100, ge=1, description="queued jobs at most; past it POST /execute gets 429"
    )
    job_max_event_bytes: int = Field(
        default=64 * 2**20, ge=4096, description="stored events per job at most"
    )
    shutdown_grace_seconds: float = Field(
        default=30, ge=0, description="on SIGTERM, how long running work may go on"
    )
    job_retention_days: float = Field(
        default=30, gt=0, description="finished jobs older than this are deleted"
    )

    allowed_tools: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="the only tools agents may use (comma-separated; none: the CLI's own set)",
    )
    disallowed_tools: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="tools agents may never use (comma-separated)"
    )
    append_system_prompt: str | None = Field(
        default=None, description="text added to every run's system prompt"
    )
    job_max_turns: int = Field(
        default=100, ge=1, le=10_000, description="model turns of one run at most (the default too)"
    )

    webhook_url: str | None = Field(
        default=None, description="called (POST) when any job ends; a job may name its own"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="the HMAC-SHA256 key of X-Webhook-Signature"
    )
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="the only hosts webhooks may call (comma-separated)"
    )
    webhook_retry_seconds: float = Field(
        default=3600, gt=0, description="how long a delivery is retried"
    )

    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="json lines, or text; auto: text on a terminal, else json"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the least severe level logged"
    )
    log_prompts: bool = Field(
        default=False, description="log each run's prompt (its first 2000 characters)"
    )
    metrics_require_auth: bool = Field(
        default=False, description="GET /metrics needs a bearer token too"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "supported_models",
        "allowed_tools",
        "disallowed_tools",
        "webhook_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _tool_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not TOOL_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a tool name or pattern, like Bash(git:*)")
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in value)

    @field_validator(
        "chat_agent",
        "git_repo_url",
        "git_branch",
        "api_bearer_tokens_file",
        "database_url",
        "instance_id",
        "append_system_prompt",
        "webhook_url",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("default_model")
    @classmethod
    def _default_model_nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("supported_models")
    @classmethod
    def _some_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one model")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL (or unset, for SQLite in DATA_DIR)")
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,64}", value):
            raise ValueError("must be 1 to 64 letters, digits and _.:@-")
        return value

    @model_validator(mode="after")
    def _webhooks_can_work(self) -> Settings:
        if self.webhook_url is not None:
            problem = webhook_problem(self.webhook_url, self.webhook_allowed_hosts)
            if problem:
                raise ValueError(f"WEBHOOK_URL {problem}")
            if self.webhook_secret is None:
                raise ValueError("WEBHOOK_URL needs WEBHOOK_SECRET, the key of its signatures")
        return self

    @model_validator(mode="after")
    def _default_is_supported(self) -> Settings:
        if self.default_model not in self.supported_models:
            raise ValueError(
                f"DEFAULT_MODEL {self.default_model!r} is not among SUPPORTED_MODELS "
                f"({', '.join(self.supported_models)}): add it there, or choose one of them"
            )
        return self

    @property
    def bearer_token(self) -> str | None:
        """The token, or None when it is unset or blank (then every request is refused)."""
        if self.api_bearer_token is None:
            return None
        token = self.api_bearer_token.get_secret_value().strip()
        return token or None

    @property
    def database(self) -> str | None:
        """The PostgreSQL URL, or None for SQLite in DATA_DIR."""
        return None if self.database_url is None else self.database_url.get_secret_value()

    @property
    def models(self) -> tuple[str, ...]:
        """The accepted model aliases."""
        return self.supported_models


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use and kept."""
    return Settings()


def describe_problems(exc: ValidationError) -> list[str]:
    """One readable line per invalid setting: `NAME: what is wrong (got 'value')`."""
    lines = []
    for error in exc.errors(include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        if name and isinstance(given, str | int | float) and "SECRET" not in name:
            shown = "***" if name == "API_BEARER_TOKEN" else given
            lines.append(f"{name}: {message} (got {shown!r})")
        elif name:
            lines.append(f"{name}: {message}")
        else:
            lines.append(message)
    return lines


def find_cli(claude_bin: str) -> str | None:
    """The CLI's path if `claude_bin` names an executable (a path, or a name on PATH)."""
    return shutil.which(claude_bin)


def setting_rows() -> list[tuple[str, str, str]]:
    """(NAME, default, description) of every setting, for help texts."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None:
            shown = "none"
        elif isinstance(default, tuple):
            shown = ",".join(default)
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, Path) and not default.is_absolute():
            shown = f"./{default}"
        else:
            shown = str(default)
        rows.append((name.upper(), shown, field.description or ""))
    return rows


# The CLI's own variables that `.env` may hold for the agent: its credential,
# its endpoint and options, a cloud provider's credentials, a proxy.
_AGENT_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_", "AWS_", "GOOGLE_", "CLOUD_ML_", "VERTEX_")
_AGENT_NAMES = frozenset(
    {
        "IS_SANDBOX",
        "API_TIMEOUT_MS",
        "MAX_THINKING_TOKENS",
        "BASH_DEFAULT_TIMEOUT_MS",
        "BASH_MAX_TIMEOUT_MS",
        "MCP_TIMEOUT",
        "DISABLE_TELEMETRY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_ERROR_REPORTING",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)


def is_agent_variable(name: str) -> bool:
    """Whether a `.env` variable is for the agent (the CLI), not for the service."""
    return name in _AGENT_NAMES or name.startswith(_AGENT_PREFIXES)


@lru_cache(maxsize=1)
def agent_dotenv() -> Mapping[str, str]:
    """The agent's variables written in `.env` (read once, like the settings)."""
    values: dict[str, Any] = dotenv_values(ENV_FILE) if os.path.isfile(ENV_FILE) else {}
    return {k: v for k, v in values.items() if isinstance(v, str) and is_agent_variable(k)}
