"""Credentials out of every text that leaves the service: URL passwords, and
the service's own secrets (the bearer token), wherever the agent prints them.

An agent can read the service's environment (`/proc/<pid>/environ`, as root
always) and print what it finds; whatever it prints is stored in events and
results that every API client may read, so each such text passes here.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from pydantic import ValidationError

from app.auth import registry
from app.settings import Settings, get_settings

# userinfo right after a scheme's "://" (RFC 3986 characters, plus a raw "@"
# some passwords hold) up to the last "@" before the host; never across a
# quote, so JSON lines stay JSON. Linear time: it is tried only where "://"
# precedes, and a match stops at the next "/" (a pattern that matched the
# scheme itself rescanned every run of letters from each of its positions).
_CREDENTIALS = re.compile(r"(?<=[A-Za-z0-9+.-]://)[A-Za-z0-9._~%!$&'()*+,;=:@-]+@")
# A secret shorter than this is not searched for: it would match ordinary text.
MIN_SECRET_CHARS = 6
MASK = "***"

# the secrets, for the settings and the tokens in force (a SIGHUP replaces the tokens)
_cache: tuple[object, object, tuple[str, ...]] = (None, None, ())


def redact(text: str) -> str:
    """Hide `user:password@` in any URL, and every secret of the service, in `text`."""
    if "://" in text:
        text = _CREDENTIALS.sub(MASK + "@", text)
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def service_secrets(settings: Settings) -> tuple[str, ...]:
    """The service's own secrets, as they may appear in text and in JSON strings."""
    found: list[str | None] = [settings.bearer_token, *registry.current(settings).secrets]
    if settings.database is not None:
        found.append(urlsplit(settings.database).password)
    if settings.webhook_secret is not None:
        found.append(settings.webhook_secret.get_secret_value())
    forms = []
    for secret in found:
        if secret is None or len(secret) < MIN_SECRET_CHARS:
            continue
        forms.append(secret)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            forms.append(escaped)
    # longest first: a secret that holds another is masked whole
    return tuple(sorted(set(forms), key=len, reverse=True))


def _secrets() -> tuple[str, ...]:
    global _cache
    try:
        settings = get_settings()
    except ValidationError:
        return ()
    tokens = registry.current(settings)
    if _cache[0] is not settings or _cache[1] is not tokens:
        _cache = (settings, tokens, service_secrets(settings))
    return _cache[2]
