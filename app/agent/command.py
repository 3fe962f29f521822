"""The Claude Code command line for one run (pure: no I/O)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.proc import child_environment
from app.settings import agent_dotenv

# The kernel refuses one argument over 128 KiB (E2BIG); past this size the
# prompt goes to the CLI's stdin instead, which it reads when no prompt is given.
MAX_ARGV_PROMPT_BYTES = 100 * 1024


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """What to exec: the argv, and the bytes for stdin (None: stdin is /dev/null)."""

    argv: tuple[str, ...]
    stdin: bytes | None


def build_command(
    *,
    claude_bin: str,
    prompt: str,
    model: str,
    permission_mode: str,
    max_budget_usd: float,
    agent: str | None = None,
    resume_session_id: str | None = None,
    json_schema: str | None = None,
    allowed_tools: Sequence[str] = (),
    disallowed_tools: Sequence[str] = (),
    append_system_prompt: str | None = None,
    content: Sequence[Mapping[str, Any]] | None = None,
) -> AgentCommand:
    """Build the argv of `claude -p` in stream-json mode for one prompt.

    The options end with `--` so that a variadic option (`--allowedTools`)
    cannot swallow the prompt and a prompt starting with `-` is still a
    prompt. With `content` (a user message's blocks: text and images) the
    prompt goes on stdin as one stream-json message instead.
    """
    argv = [
        claude_bin,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        model,
        "--permission-mode",
        permission_mode,
        "--max-budget-usd",
        _format_usd(max_budget_usd),
    ]
    if agent:
        argv += ["--agent", agent]
    if resume_session_id:
        argv += ["--resume", resume_session_id]
    if json_schema is not None:
        argv += ["--json-schema", json_schema]
    if append_system_prompt:
        argv += ["--append-system-prompt", append_system_prompt]
    if allowed_tools:
        # --allowedTools only approves calls; --tools takes the other tools away
        argv += ["--tools", *dict.fromkeys(_tool_name(t) for t in allowed_tools)]
        argv += ["--allowedTools", *allowed_tools]
    if disallowed_tools:
        argv += ["--disallowedTools", *disallowed_tools]
    if content is not None:
        argv += ["--input-format", "stream-json"]
        message = {"type": "user", "message": {"role": "user", "content": list(content)}}
        return AgentCommand(tuple(argv), json.dumps(message).encode() + b"\n")
    argv.append("--")
    encoded = prompt.encode()
    if len(encoded) > MAX_ARGV_PROMPT_BYTES:
        return AgentCommand(tuple(argv), encoded)
    argv.append(prompt)
    return AgentCommand(tuple(argv), None)


def current_child_environment() -> dict[str, str]:
    return child_environment(os.environ, agent_dotenv())


def _tool_name(entry: str) -> str:
    """The tool a permission entry names: `Bash(git:*)` -> `Bash`."""
    return entry.split("(", 1)[0]


def _format_usd(amount: float) -> str:
    # repr-free decimal: 2.0 -> "2", 0.25 -> "0.25", never "1e-05".
    text = f"{amount:.6f}".rstrip("0").rstrip(".")
    return text or "0"
