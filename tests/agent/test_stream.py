"""Parsing, against the real CLI's recorded output (tests/fixtures)."""

import json

import pytest

from app.agent.stream import (
    LineFramer,
    StreamCollector,
    hopeless_retry,
    is_failure,
    one_line,
    parse_line,
)
from tests.conftest import FIXTURES


def collect(lines: list[bytes]) -> StreamCollector:
    collector = StreamCollector()
    for line in lines:
        collector.feed(line)
        if collector.done:
            break
    return collector


def fixture_lines(name: str) -> list[bytes]:
    return [line + b"\n" for line in (FIXTURES / name).read_bytes().splitlines()]


def test_recorded_success_gives_the_answer_and_the_accounting() -> None:
    result = collect(fixture_lines("stream-json-success.jsonl")).finish(exit_code=0, stderr=b"")
    assert result.ok
    assert result.text == "Hello from the fake server!"
    assert result.session_id == "788edfab-4804-490f-9027-2d620c6e9186"
    assert result.total_cost_usd == pytest.approx(0.0013197)
    assert result.num_turns == 1
    assert result.duration_ms == 111
    assert result.usage is not None and result.usage["input_tokens"] == 13127
    assert result.permission_denials == []


def test_recorded_tool_run_counts_every_event_and_ends_at_the_result() -> None:
    collector = collect(fixture_lines("tool-run.jsonl"))
    assert collector.events == 6
    assert collector.result is not None and collector.result["num_turns"] == 2


def test_recorded_permission_denials_are_kept() -> None:
    result = collect(fixture_lines("tool-run-default-permissions.jsonl")).finish(
        exit_code=0, stderr=b""
    )
    assert result.ok
    assert result.permission_denials and result.permission_denials[0]["tool_name"] == "Write"


def test_recorded_api_error_fails_even_with_subtype_success() -> None:
    result = collect(fixture_lines("api-error-401.jsonl")).finish(exit_code=1, stderr=b"")
    assert not result.ok
    assert result.text == "Invalid API key · Fix external API key"
    assert result.exit_code == 1


def test_limit_results_fail_with_their_errors() -> None:
    event = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "errors": ["Reached maximum number of turns (1)"],
    }
    result = collect([json.dumps(event).encode()]).finish(exit_code=1, stderr=b"")
    assert not result.ok
    assert result.text == "Reached maximum number of turns (1)"
    assert is_failure({"subtype": "error_max_budget_usd"})


def test_reading_stops_at_the_first_result() -> None:
    first = {"type": "result", "result": "first", "is_error": False}
    second = {"type": "result", "result": "second", "is_error": False}
    collector = StreamCollector()
    collector.feed(json.dumps(first).encode())
    assert collector.done
    collector.feed(json.dumps(second).encode())
    assert collector.finish(exit_code=0, stderr=b"").text == "first"


def test_non_json_and_broken_lines_are_not_events() -> None:
    for line in [
        b"plain text\n",
        b"{broken\n",
        b"[1, 2]\n",
        b"\n",
        b'{"no": "type"}\n',
        b'{"type": 3}\n',
    ]:
        assert parse_line(line) is None
    assert parse_line(b'  {"type": "user"}  \r\n') == {"type": "user"}


def test_a_lone_surrogate_the_cli_printed_becomes_a_replacement_character() -> None:
    # JSON.stringify writes half an emoji as "\ud83d"; a whole pair stays whole
    line = rb'{"type": "result", "result": "cut \ud83d, whole \ud83d\ude00", "k\uDC00": ["\udfff"]}'
    event = parse_line(line + b"\n")
    assert event == {
        "type": "result",
        "result": "cut \ufffd, whole \U0001f600",
        "k\ufffd": ["\ufffd"],
    }
    pretty = collect([b'{\n  "type": "result",\n  "result": "half \\ud83d"\n}\n'])
    assert pretty.finish(exit_code=0, stderr=b"").text == "half \ufffd"


def test_without_a_result_a_nonzero_exit_fails_with_the_stderr_tail() -> None:
    collector = collect([b"partial\n"])
    result = collector.finish(exit_code=3, stderr=b"noise\nboom: it broke\n")
    assert not result.ok
    assert result.text == "noise\nboom: it broke"
    assert collect([]).finish(exit_code=42, stderr=b"").text == "exit 42"


def test_without_a_result_exit_zero_reads_one_pretty_json_document() -> None:
    doc = json.dumps({"type": "result", "result": "pretty answer", "is_error": False}, indent=2)
    lines = [line.encode() + b"\n" for line in doc.splitlines()]
    result = collect(lines).finish(exit_code=0, stderr=b"")
    assert result.ok
    assert result.text == "pretty answer"


def test_recorded_json_mode_failure_is_a_result_too() -> None:
    result = collect(fixture_lines("api-error-529.json")).finish(exit_code=1, stderr=b"")
    assert not result.ok
    assert result.text.startswith("API Error: 529")


def test_without_a_result_exit_zero_falls_back_to_the_raw_text() -> None:
    result = collect([b"plain non-json output\n", b"second line\n"]).finish(exit_code=0, stderr=b"")
    assert result.ok
    assert result.text == "plain non-json output\nsecond line"
    assert result.result is None


def test_a_timeout_is_reported_as_such() -> None:
    result = collect([]).finish(exit_code=None, stderr=b"", timed_out=True)
    assert not result.ok and result.timed_out


def test_stderr_keeps_only_its_tail() -> None:
    result = collect([]).finish(exit_code=1, stderr=b"a" * 100_000 + b"END")
    assert result.stderr_tail.endswith("END")
    assert len(result.stderr_tail) <= 8 * 1024


def test_one_line_flattens_and_cuts() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    cut = one_line("x" * 600)
    assert len(cut) == 500 and cut.endswith("…")


def test_the_framer_splits_lines_across_chunks() -> None:
    framer = LineFramer(max_line_bytes=100)
    assert framer.feed(b'{"a": 1}\n{"b"') == [b'{"a": 1}\n']
    assert framer.feed(b": 2}\n\n") == [b'{"b": 2}\n', b"\n"]
    assert framer.feed(b"tail without newline") == []
    assert framer.close() == b"tail without newline"
    assert framer.close() is None


def test_the_framer_drops_a_line_over_its_cap_and_goes_on() -> None:
    framer = LineFramer(max_line_bytes=10)
    assert framer.feed(b"short\n" + b"x" * 8) == [b"short\n"]
    assert framer.feed(b"x" * 8) == []  # over the cap: dropped, not kept
    assert framer.feed(b"xxx\nnext\n") == [b"next\n"]
    assert framer.oversized == 1
    assert framer.feed(b"y" * 50) == [] and framer.close() is None


def test_a_retried_401_ends_the_run_with_the_status_and_the_clis_error() -> None:
    collector = collect(fixture_lines("api-retry-401.jsonl"))
    assert collector.done and collector.lines == 1  # no more is read
    result = collector.finish(exit_code=None, stderr=b"")
    assert not result.ok and result.result is None
    assert result.text == (
        "the Anthropic API refused the credential (401 authentication_failed); not retrying"
    )


def test_retries_that_may_heal_are_left_to_the_cli() -> None:
    collector = collect(fixture_lines("api-retry-500.jsonl"))
    assert not collector.done and collector.fatal is None
    for status in (429, 500, 529, None):
        retry = {"type": "system", "subtype": "api_retry", "error_status": status}
        assert hopeless_retry(retry) is None
    assert hopeless_retry({"type": "system", "subtype": "api_retry", "error_status": 403})
