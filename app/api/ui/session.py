"""Dashboard sessions: a signed, expiring cookie that names a token and never holds one.

The cookie is `v1:<name>:<expires>:<nonce>:<mac>`, where `mac` is
HMAC-SHA256, under a key of the service's own, over the other fields and
the named token's current value. So a session ends when its time is up,
when its token is removed from the tokens in force (or given another value)
and the service re-reads them (SIGHUP), and when it signs out; and nothing
in the cookie says anything about the token. The per-session CSRF token is
derived from the nonce under the same key, so the service stores nothing
per session but the nonces of sessions that signed out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from app.auth import Tokens

logger = logging.getLogger(__name__)

COOKIE = "cas_session"
SESSION_TTL_S = 12 * 3600
KEY_NAME = "ui-session.key"
KEY_BYTES = 32
_VERSION = "v1"
# Signed-out sessions remembered (until they expire) at most; past it the
# oldest are forgotten first: they expire first anyway.
MAX_REVOKED = 10_000

_keys: dict[Path, bytes] = {}
_revoked: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the token's name, when it ends, its CSRF token."""

    name: str
    nonce: str
    expires: int
    csrf: str


def signing_key(data_dir: Path) -> bytes:
    """The key sessions are signed with: DATA_DIR/ui-session.key, made (0600) on first use.

    A file rather than a key derived from the tokens: sessions then survive
    a restart, a token holder cannot compute it, and deleting the file (and
    restarting) ends every session at once.
    """
    cached = _keys.get(data_dir)
    if cached is not None:
        return cached
    path = data_dir / KEY_NAME
    key = _read_key(path)
    if key is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_bytes(KEY_BYTES)
        temp = path.with_name(f".{KEY_NAME}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(fresh)
        try:
            os.link(temp, path)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        key = _read_key(path)
        if key is None:
            raise OSError(f"could not make the dashboard's session key {path}")
        logger.info("made the dashboard's session key %s", path)
    _keys[data_dir] = key
    return key


def _read_key(path: Path) -> bytes | None:
    try:
        info = path.stat()
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(0o600)
        logger.warning("%s was readable by others; made it 0600", path)
    if len(key) < KEY_BYTES:
        raise OSError(f"the dashboard's session key {path} is shorter than {KEY_BYTES} bytes")
    return key


def issue(key: bytes, name: str, token: bytes, now: float | None = None) -> tuple[str, Session]:
    """A new session for the token `token` named `name`: the cookie value and the session."""
    expires = int(now if now is not None else time.time()) + SESSION_TTL_S
    nonce = _b64(secrets.token_bytes(18))
    fields = (_VERSION, _b64(name.encode()), str(expires), nonce)
    cookie = ":".join((*fields, _mac(key, fields, token)))
    return cookie, Session(name, nonce, expires, _csrf(key, nonce))


def verify(
    key: bytes, cookie: str | None, tokens: Tokens, now: float | None = None
) -> Session | None:
    """The session `cookie` stands for, or None: malformed, forged, expired,
    signed out, or its token no longer in force."""
    if not cookie or len(cookie) > 512:
        return None
    parts = cookie.split(":")
    if len(parts) != 5 or parts[0] != _VERSION:
        return None
    version, encoded_name, expires_text, nonce, mac = parts
    try:
        name = base64.urlsafe_b64decode(encoded_name + "=" * (-len(encoded_name) % 4)).decode()
        expires = int(expires_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if expires <= (now if now is not None else time.time()) or nonce in _revoked:
        return None
    token = next((value for named, value in tokens.entries if named == name), None)
    if token is None:
        return None
    expected = _mac(key, (version, encoded_name, expires_text, nonce), token)
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return None
    return Session(name, nonce, expires, _csrf(key, nonce))


def revoke(session: Session) -> None:
    """Sign a session out: its cookie stops working here even if a copy is kept.

    Remembered in memory until it expires; a restart forgets it (the
    expiry still bounds it).
    """
    now = int(time.time())
    for nonce in [n for n, expires in _revoked.items() if expires <= now]:
        del _revoked[nonce]
    while len(_revoked) >= MAX_REVOKED:
        del _revoked[next(iter(_revoked))]
    _revoked[session.nonce] = session.expires


def csrf_matches(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


def same_origin(headers: Headers) -> bool:
    """Whether a state-changing request comes from a page of this service.

    Browsers send Origin on every POST; Referer is the fallback (the pages
    send it to their own origin: Referrer-Policy same-origin). Neither, or
    another host: refused. Hosts are compared, not schemes, as a proxy that
    ends TLS leaves the service seeing http.
    """
    host = headers.get("host")
    source = headers.get("origin")
    if source is None:
        source = headers.get("referer")
    if not host or not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _mac(key: bytes, fields: tuple[str, ...], token: bytes) -> str:
    message = "|".join(fields).encode() + b"|" + token
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _csrf(key: bytes, nonce: str) -> str:
    return _b64(hmac.new(key, b"csrf|" + nonce.encode(), hashlib.sha256).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
