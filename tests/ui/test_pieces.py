"""The dashboard's pure parts: signed sessions, the origin check, safe Markdown, event items."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from app.api.ui import render, session
from app.auth import Tokens
from app.jobs.models import JobEvent

KEY = b"k" * 32
TOKENS = Tokens.of([("alice", "alice-token"), ("bob", "bob-token")])


def test_a_session_names_its_token_and_holds_nothing_of_it() -> None:
    cookie, made = session.issue(KEY, "alice", b"alice-token", now=1000)
    assert "alice-token" not in cookie and made.name == "alice"
    found = session.verify(KEY, cookie, TOKENS, now=1001)
    assert found == made
    assert found is not None and found.csrf and found.csrf != found.nonce


def test_a_session_ends_with_its_time_its_token_or_its_sign_out() -> None:
    cookie, _ = session.issue(KEY, "alice", b"alice-token", now=1000)
    assert session.verify(KEY, cookie, TOKENS, now=1000 + session.SESSION_TTL_S) is None
    assert session.verify(KEY, cookie, Tokens.of([("bob", "bob-token")]), now=1001) is None
    rotated = Tokens.of([("alice", "a-new-token"), ("bob", "bob-token")])
    assert session.verify(KEY, cookie, rotated, now=1001) is None
    other, live = session.issue(KEY, "alice", b"alice-token")
    assert session.verify(KEY, other, TOKENS) == live
    session.revoke(live)  # signed out: a copy of the cookie is no good either
    assert session.verify(KEY, other, TOKENS) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c.replace("v1:", "v2:", 1),
        lambda c: ":".join([*c.split(":")[:2], "9999999999", *c.split(":")[3:]]),  # longer life
        lambda c: ":".join(["v1", "Ym9i", *c.split(":")[2:]]),  # another name (bob)
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),
        lambda c: c + ":x",
        lambda c: "",
        lambda c: "v1:%%%:1:2:3",
    ],
)
def test_a_forged_or_damaged_cookie_is_no_session(forge: object) -> None:
    cookie, _ = session.issue(KEY, "alice", b"alice-token", now=1000)
    assert callable(forge)
    assert session.verify(KEY, forge(cookie), TOKENS, now=1001) is None
    assert session.verify(b"x" * 32, cookie, TOKENS, now=1001) is None


def test_the_signing_key_is_made_once_and_private(tmp_path: Path) -> None:
    key = session.signing_key(tmp_path / "data")
    path = tmp_path / "data" / session.KEY_NAME
    assert len(key) == session.KEY_BYTES and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    session._keys.clear()
    assert session.signing_key(tmp_path / "data") == key  # read back, not remade


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"host": "h:1", "origin": "http://h:1"}, True),
        ({"host": "h:1", "origin": "https://h:1"}, True),  # TLS ended by a proxy
        ({"host": "h:1", "referer": "http://h:1/ui/jobs/x"}, True),
        ({"host": "h:1", "origin": "http://evil.example", "referer": "http://h:1/ui/"}, False),
        ({"host": "h:1", "origin": "http://h:2"}, False),
        ({"host": "h:1", "origin": "null"}, False),
        ({"host": "h:1"}, False),
        ({"host": "h:1", "referer": "javascript:alert(1)"}, False),
    ],
)
def test_only_requests_from_this_host_change_anything(
    headers: dict[str, str], allowed: bool
) -> None:
    assert session.same_origin(Headers(headers)) is allowed


def test_markdown_escapes_html_and_keeps_only_safe_links() -> None:
    html = str(
        render.markdown(
            "**bold** <script>alert(1)</script> <img src=x onerror=alert(2)>\n\n"
            "[ok](https://example.com/a) [bad](javascript:alert(3)) [data](data:text/html,x) "
            "![pic](https://example.com/p.png) <https://example.com/auto>"
        )
    )
    assert "<strong>bold</strong>" in html
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'href="https://example.com/a" rel="noopener noreferrer nofollow"' in html
    assert 'href="javascript:' not in html and 'href="data:' not in html
    assert ">image: pic</a>" in html


def event(seq: int, kind: str, data: dict) -> JobEvent:
    return JobEvent(seq, kind, json.dumps(data))


def test_tool_calls_are_named_and_long_inputs_and_results_folded() -> None:
    tools: dict[str, str] = {}
    use = event(
        3,
        "assistant",
        {
            "type": "assistant",
            "message": {
                "content": [
                    {"type": "text", "text": "Writing *it*"},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "Write",
                        "input": {"file_path": "/w/a.txt", "content": "x\n" * 40},
                    },
                ]
            },
        },
    )
    text, call = render.items_of(use, tools)
    assert text.kind == "text" and str(text.html) == "<p>Writing <em>it</em></p>\n"
    assert call.kind == "tool" and call.title == "Write" and call.detail == "/w/a.txt"
    assert call.folded
    result = event(
        4,
        "user",
        {
            "type": "user",
            "message": {
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "1\n2\n3\n4\n5\n6\n7"}
                ]
            },
        },
    )
    [shown] = render.items_of(result, tools)
    assert shown.title == "Write result" and shown.pre == "1\n2\n3\n4\n5"
    assert shown.more == "6\n7" and shown.more_label == "2 more lines"
    short = event(
        5,
        "assistant",
        {
            "message": {
                "content": [{"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}]
            }
        },
    )
    [call] = render.items_of(short, tools)
    assert not call.folded and call.detail == "ls"


def test_every_kind_of_event_renders_escaped() -> None:
    hostile = "<script>x</script>"
    events = [
        event(1, "status", {"type": "status", "status": "failed", "error": hostile, "at": "x"}),
        event(2, "system", {"type": "system", "subtype": "init", "model": hostile}),
        event(3, "system", {"type": "system", "subtype": hostile}),
        event(4, "raw", {"type": "raw", "line": hostile}),
        event(
            5,
            "result",
            {
                "type": "result",
                "is_error": True,
                "result": hostile,
                "permission_denials": [{"tool_name": hostile, "tool_input": hostile}],
            },
        ),
        event(6, "truncated", {"type": "truncated", "detail": hostile}),
        event(7, hostile, {"type": hostile}),
        JobEvent(8, "raw", hostile),
    ]
    tools: dict[str, str] = {}
    html = render.render_items([item for e in events for item in render.items_of(e, tools)])
    assert "<script" not in html and html.count("&lt;script&gt;") >= 8
