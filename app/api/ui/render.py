"""What the dashboard shows, as HTML: templates, Markdown, and a job's events as items.

Everything the agent printed is untrusted. Templates escape every value
(Jinja2 autoescape); the one place HTML is made from agent text is
Markdown, rendered here with raw HTML off, links only to http(s) and
mailto, and images shown as links (no request leaves the page by itself).
The same functions render the page and the live fragments, so a job looks
the same however it reached the browser.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

from app.jobs.models import Job, JobEvent

# Tool results and texts show this many characters at most; the API has the rest.
MAX_BLOCK_CHARS = 100_000
# A tool result shows this many lines; the rest is folded.
RESULT_LINES = 5
# A tool input longer than this is folded.
INPUT_FOLD_LINES = 12
INPUT_FOLD_CHARS = 1_500
DIFF_LINES = 4_000
_SAFE_SCHEMES = ("http://", "https://", "mailto:")

templates = Environment(
    loader=PackageLoader("app.api.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(name: str, **context: Any) -> str:
    return templates.get_template(name).render(**context)


# -- Markdown -----------------------------------------------------------------


def _safe_link(url: str) -> bool:
    return url.strip().lower().startswith(_SAFE_SCHEMES)


def _link_open(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    tokens[idx].attrSet("target", "_blank")
    return renderer.renderToken(tokens, idx, options, env)


def _image(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # an image would be a request the page makes by itself: show a link instead
    token = tokens[idx]
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    src = str(token.attrGet("src") or "")
    label = f"image: {alt}" if alt else "image"
    return (
        f'<a href="{escape(src)}" rel="noopener noreferrer nofollow" target="_blank">'
        f"{escape(label)}</a>"
    )


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.validateLink = _safe_link  # type: ignore[method-assign]
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("image", _image)
    return md


_md = _markdown()


def markdown(text: str) -> Markup:
    """Agent text as HTML: Markdown with raw HTML escaped and only safe links."""
    return Markup(_md.render(_cap(text)))  # made by the renderer above: HTML off


# -- small views --------------------------------------------------------------


def first_line(text: str, limit: int = 120) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def when(stamp: str | None) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC)."""
    moment = _parse(stamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def duration(job: Job, now: datetime | None = None) -> str:
    """Wall time from start to end (or to now, while it runs)."""
    start = _parse(job.started_at)
    if start is None:
        return "—"
    end = _parse(job.finished_at) or (now or datetime.now(UTC))
    return seconds((end - start).total_seconds())


def seconds(total: float) -> str:
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def cost(usd: float | None) -> str:
    if usd is None:
        return "—"
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


def tokens(usage: dict[str, Any] | None) -> str:
    """`<in> in · <out> out`, the input counting cache writes and reads."""
    if not usage:
        return "—"
    read = sum(
        _int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return f"{_count(read)} in · {_count(_int(usage.get('output_tokens')))} out"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.1f}k"
    return str(n)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _cap(text: str) -> str:
    if len(text) <= MAX_BLOCK_CHARS:
        return text
    cut = len(text) - MAX_BLOCK_CHARS
    return f"{text[:MAX_BLOCK_CHARS]}\n… ({cut} more characters: see the job's events in the API)"


@dataclass(frozen=True, slots=True)
class RunRow:
    """One job in the runs list."""

    id: str
    status: str
    prompt: str
    model: str
    slot: str
    created: str
    duration: str
    cost: str
    tokens: str

    @classmethod
    def of(cls, job: Job, now: datetime) -> RunRow:
        slot = "—" if job.slot is None else str(job.slot)
        instance = getattr(job, "instance", None)  # stores shared by several instances name it
        if instance:
            slot = f"{slot} @ {instance}"
        return cls(
            id=job.id,
            status=job.status.value,
            prompt=first_line(job.prompt),
            model=job.model,
            slot=slot,
            created=when(job.created_at),
            duration=duration(job, now),
            cost=cost(job.total_cost_usd),
            tokens=tokens(job.usage),
        )


# -- events as items ----------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One thing on a run's timeline, ready for `_items.html`."""

    kind: str
    """text, thinking, tool, result_of_tool, result, status, system, raw, note, other."""
    seq: int
    title: str = ""
    detail: str = ""
    html: Markup | None = None
    pre: str | None = None
    more: str | None = None
    more_label: str = ""
    fields: list[tuple[str, str, bool]] = field(default_factory=list)
    """A tool's input: name, value as text, whether it is a block."""
    folded: bool = False
    error: bool = False
    facts: list[tuple[str, str]] = field(default_factory=list)


def items_of(event: JobEvent, tools: dict[str, str]) -> list[Item]:
    """What one stored event shows; `tools` maps tool_use ids to names, across events."""
    try:
        data = json.loads(event.data)
    except ValueError:
        return [Item("raw", event.seq, title="output", pre=_cap(event.data))]
    if not isinstance(data, dict):
        return [Item("raw", event.seq, title="output", pre=_cap(event.data))]
    kind = event.kind
    if kind == "assistant":
        return list(_assistant(event.seq, data, tools))
    if kind == "user":
        return list(_user(event.seq, data, tools))
    if kind == "result":
        return [_result(event.seq, data)]
    if kind == "status":
        return [_status(event.seq, data)]
    if kind == "system":
        return [_system(event.seq, data)]
    if kind == "raw":
        return [Item("raw", event.seq, title="output", pre=_cap(str(data.get("line", ""))))]
    if kind == "truncated":
        return [Item("note", event.seq, title="events cut", detail=str(data.get("detail", "")))]
    if kind == "stream_event":
        return []  # partial messages: the whole message follows as its own event
    return [Item("other", event.seq, title=kind, pre=_cap(_pretty(data)), folded=True)]


def _content(data: dict[str, Any]) -> list[Any]:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _assistant(seq: int, data: dict[str, Any], tools: dict[str, str]) -> Iterable[Item]:
    for block in _content(data):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            yield Item("text", seq, html=markdown(str(block.get("text", ""))))
        elif kind == "thinking":
            yield Item("thinking", seq, title="thinking", pre=_cap(str(block.get("thinking", ""))))
        elif kind in ("tool_use", "server_tool_use"):
            name = str(block.get("name", "tool"))
            tools[str(block.get("id", ""))] = name
            yield _tool_use(seq, name, block.get("input"))


def _tool_use(seq: int, name: str, given: Any) -> Item:
    inputs = given if isinstance(given, dict) else {"input": given}
    fields = []
    for key, value in inputs.items():
        text = value if isinstance(value, str) else _pretty(value)
        fields.append((str(key), _cap(text), "\n" in text or len(text) > 120))
    lines = sum(text.count("\n") + 1 for _, text, _ in fields)
    chars = sum(len(text) for _, text, _ in fields)
    return Item(
        "tool",
        seq,
        title=name,
        detail=_tool_summary(inputs),
        fields=fields,
        folded=lines > INPUT_FOLD_LINES or chars > INPUT_FOLD_CHARS,
        facts=[("lines", str(lines))],
    )


def _tool_summary(inputs: dict[str, Any]) -> str:
    """The input that says most about a tool call, on one line."""
    for key in ("command", "file_path", "path", "pattern", "url", "query", "description"):
        value = inputs.get(key)
        if isinstance(value, str) and value.strip():
            return first_line(value, 160)
    for value in inputs.values():
        if isinstance(value, str) and value.strip():
            return first_line(value, 160)
    return ""


def _user(seq: int, data: dict[str, Any], tools: dict[str, str]) -> Iterable[Item]:
    for block in _content(data):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "tool_result":
            name = tools.get(str(block.get("tool_use_id", "")), "tool")
            text = _cap(_result_text(block.get("content")))
            lines = text.split("\n")
            head, rest = lines[:RESULT_LINES], lines[RESULT_LINES:]
            yield Item(
                "tool_result",
                seq,
                title=f"{name} result",
                pre="\n".join(head),
                more="\n".join(rest) if rest else None,
                more_label=f"{len(rest)} more line{'s' if len(rest) != 1 else ''}",
                error=block.get("is_error") is True,
            )
        elif block.get("type") == "text":
            yield Item("prompt", seq, title="user", pre=_cap(str(block.get("text", ""))))


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'content')}]")
        return "\n".join(parts)
    return "" if content is None else _pretty(content)


def _result(seq: int, data: dict[str, Any]) -> Item:
    failed = data.get("is_error") is True or str(data.get("subtype", "")).startswith("error")
    text = data.get("result")
    errors = data.get("errors")
    if not isinstance(text, str) and isinstance(errors, list):
        text = "\n".join(f"- {error}" for error in errors)
    spent, took, usage = data.get("total_cost_usd"), data.get("duration_ms"), data.get("usage")
    facts = [
        ("cost", cost(spent if _is_number(spent) else None)),
        ("turns", str(data.get("num_turns", "—"))),
        ("duration", seconds(took / 1000) if isinstance(took, int | float) else "—"),
        ("tokens", tokens(usage if isinstance(usage, dict) else None)),
    ]
    denials = data.get("permission_denials")
    fields = []
    if isinstance(denials, list):
        for denial in denials:
            if isinstance(denial, dict):
                what = _pretty(denial.get("tool_input"))
                fields.append((f"denied: {denial.get('tool_name', 'tool')}", _cap(what), True))
    return Item(
        "result",
        seq,
        title="failed" if failed else "result",
        html=markdown(text) if isinstance(text, str) else None,
        error=failed,
        facts=facts,
        fields=fields,
    )


def _status(seq: int, data: dict[str, Any]) -> Item:
    status = str(data.get("status", ""))
    error = data.get("error")
    return Item(
        "status",
        seq,
        title=status,
        detail=when(str(data.get("at", ""))),
        pre=str(error) if error else None,
        error=status in ("failed", "timeout", "interrupted"),
    )


def _system(seq: int, data: dict[str, Any]) -> Item:
    subtype = str(data.get("subtype", ""))
    if subtype == "init":
        detail = ", ".join(
            f"{label} {data[key]}"
            for key, label in (("model", "model"), ("permissionMode", "mode"), ("cwd", "in"))
            if isinstance(data.get(key), str)
        )
        return Item("system", seq, title="session started", detail=detail)
    if subtype == "api_retry":
        detail = (
            f"attempt {data.get('attempt', '?')} of {data.get('max_retries', '?')}: "
            f"{data.get('error_status', '')} {data.get('error', '')}"
        )
        return Item("system", seq, title="API retry", detail=detail, error=True)
    title = f"system {subtype}".strip()
    return Item("other", seq, title=title, pre=_cap(_pretty(data)), folded=True)


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_items(items: Sequence[Item]) -> str:
    return render("_items.html", items=items) if items else ""


# -- the summary and the diff -------------------------------------------------


def denials_of(job: Job) -> list[tuple[str, str]]:
    """A job's permission denials: the tool, and its input as text."""
    found = []
    for denial in job.permission_denials or []:
        if isinstance(denial, dict):
            given = _cap(_pretty(denial.get("tool_input")))
            found.append((str(denial.get("tool_name", "tool")), given))
    return found


def diff_lines(text: str) -> tuple[list[tuple[str, str]], int]:
    """A patch's lines with a class each (add, del, hunk, meta, head), at most
    DIFF_LINES of them; and how many were left out."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    shown = []
    in_diff = False
    for line in lines[:DIFF_LINES]:
        if line.startswith("diff --git "):
            in_diff = True
            shown.append(("meta", line))
        elif not in_diff:
            shown.append(("head", line))
        elif line.startswith(("+++ ", "--- ")):
            shown.append(("meta", line))
        elif line.startswith("+"):
            shown.append(("add", line))
        elif line.startswith("-"):
            shown.append(("del", line))
        elif line.startswith("@@"):
            shown.append(("hunk", line))
        elif line.startswith(" ") or not line:
            shown.append(("ctx", line))
        else:
            shown.append(("meta", line))
    return shown, max(0, len(lines) - DIFF_LINES)
