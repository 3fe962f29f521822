"""Bearer-token authentication, checked before anything reads the request.

The tokens are `API_BEARER_TOKEN` (named `default`) and the `name:token`
lines of `API_BEARER_TOKENS_FILE`; either is enough. A request's token name
is kept in the ASGI scope's state as `token_name` (logged, and stored on the
jobs it submits as `submitted_by`).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized
from app.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_NAME = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class TokensFileError(Exception):
    """API_BEARER_TOKENS_FILE cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens that may call the API, by name."""

    entries: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]]) -> Tokens:
        return cls(tuple((name, token.encode()) for name, token in pairs))

    def identify(self, given: str) -> str | None:
        """The name of `given`, or None. Every token is compared, in constant
        time each, so the time taken says nothing about which one matched."""
        candidate = given.encode()
        found = None
        for name, token in self.entries:
            if secrets.compare_digest(candidate, token) and found is None:
                found = name
        return found

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(token.decode() for _, token in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


def read_tokens_file(path: Path) -> list[tuple[str, str]]:
    """`name:token` lines (blank lines and `#` comments skipped). Raises TokensFileError."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TokensFileError(
            f"API_BEARER_TOKENS_FILE {path} cannot be read: {exc.strerror or exc}"
        ) from None
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        where = f"API_BEARER_TOKENS_FILE {path} line {number}"
        if not sep or not token:
            raise TokensFileError(f"{where}: expected name:token")
        if not _NAME.match(name):
            raise TokensFileError(f"{where}: a name is letters, digits and _.@- (1 to 64)")
        if any(name == seen for seen, _ in pairs):
            raise TokensFileError(f"{where}: the name {name!r} is used twice")
        pairs.append((name, token))
    return pairs


def tokens_of(settings: Settings) -> Tokens:
    """The tokens the settings name (reads API_BEARER_TOKENS_FILE). Raises TokensFileError."""
    pairs: list[tuple[str, str]] = []
    if settings.bearer_token is not None:
        pairs.append((DEFAULT_NAME, settings.bearer_token))
    if settings.api_bearer_tokens_file is not None:
        pairs += read_tokens_file(settings.api_bearer_tokens_file)
    return Tokens.of(pairs)


class TokenRegistry:
    """The tokens in force: read once from the settings, re-read on `reload` (SIGHUP)."""

    def __init__(self) -> None:
        self._for: Settings | None = None
        self._tokens = Tokens()

    def current(self, settings: Settings) -> Tokens:
        if self._for is not settings:
            try:
                self._tokens = tokens_of(settings)
            except TokensFileError as exc:  # refused at start-up; here, fail closed
                logger.error("%s; refusing every token", exc)
                self._tokens = Tokens()
            self._for = settings
        return self._tokens

    def reload(self, settings: Settings) -> bool:
        """Read the tokens again; on an error keep those in force. True if reloaded."""
        try:
            tokens = tokens_of(settings)
        except TokensFileError as exc:
            logger.error("tokens not reloaded, the old ones stay in force: %s", exc)
            return False
        self._tokens, self._for = tokens, settings
        logger.info("tokens reloaded: %s", ", ".join(name for name, _ in tokens.entries))
        return True


registry = TokenRegistry()


def check_token(authorization: str | None, tokens: Tokens) -> str:
    """Accept only `Bearer <a known token>`; return its name.

    Fails closed: with no token configured, every request is refused.
    """
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("missing bearer token")
    name = tokens.identify(given.strip())
    if name is None:
        raise Unauthorized("invalid bearer token")
    return name


class BearerAuth:
    """ASGI middleware: 401 for every HTTP request without a known token, except
    `open_paths` and paths under `open_prefixes` (which authenticate their own
    way). It runs before the body is read, so an unauthenticated request learns
    nothing from validation errors."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Callable[[], Tokens],
        open_paths: Callable[[], frozenset[str]],
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._open(scope["path"]):
            header = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
            )
            try:
                name = check_token(header, self.tokens())
            except Unauthorized as exc:
                await exc.to_response()(scope, receive, send)
                return
            scope.setdefault("state", {})["token_name"] = name
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.open_paths() or path.startswith(self.open_prefixes)
