"""Service configuration: read from the environment (and `.env`) once, validated."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; names match the environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    api_bearer_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    workspace_dir: Path = Path("./workspace")
    data_dir: Path = Path("./data")

    claude_bin: str = "claude"
    claude_permission_mode: str = "acceptEdits"
    default_model: str = "sonnet"
    supported_models: Annotated[tuple[str, ...], NoDecode] = ("haiku", "sonnet", "opus")

    chat_agent: str | None = None
    chat_max_budget_usd: float = Field(default=2.0, gt=0)
    chat_timeout_seconds: float = Field(default=900, gt=0)

    git_repo_url: str | None = None
    git_branch: str | None = None
    git_sync: bool = True
    git_sync_timeout_seconds: float = Field(default=60, gt=0)
    git_sync_min_interval_seconds: float = Field(default=0, ge=0)
    git_sync_required: bool = False
    git_push: bool = False
    git_author_name: str = "Claude Agent Service"
    git_author_email: str = "agent-service@localhost"

    max_request_bytes: int = Field(default=10 * 2**20, gt=0)

    job_max_budget_usd: float = Field(default=5.0, gt=0)
    job_timeout_seconds: float = Field(default=2700, ge=1)
    max_queue_depth: int = Field(default=100, ge=1)
    job_max_event_bytes: int = Field(default=64 * 2**20, ge=4096)
    shutdown_grace_seconds: float = Field(default=30, ge=0)
    job_retention_days: float = Field(default=30, gt=0)

    @field_validator("supported_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("chat_agent", "git_repo_url", "git_branch", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("default_model")
    @classmethod
    def _default_model_nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("DEFAULT_MODEL must not be empty")
        return value

    @property
    def bearer_token(self) -> str | None:
        """The token, or None when it is unset or blank (then every request is refused)."""
        if self.api_bearer_token is None:
            return None
        token = self.api_bearer_token.get_secret_value().strip()
        return token or None

    @property
    def models(self) -> tuple[str, ...]:
        """The accepted model aliases; the default is always among them."""
        if self.default_model in self.supported_models:
            return self.supported_models
        return (*self.supported_models, self.default_model)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use and kept."""
    return Settings()
