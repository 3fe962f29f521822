"""Claude Code sessions across workspaces: a session resumes in any slot.

The CLI keeps a session's transcript in
`$HOME/.claude/projects/<its working directory, encoded>/<session id>.jsonl`
and `--resume` looks only under the current directory's folder. A job that
resumes a session in another slot than the one that made it would find
nothing, so the transcript is copied there first.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

# How the CLI names a directory's folder: every character but letters and
# digits becomes "-" (/srv/ws.a_b -> -srv-ws-a-b), as seen with the pinned CLI.
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def project_dir(home: Path, cwd: Path) -> Path:
    """Where the CLI keeps the sessions of runs in `cwd`."""
    return home / ".claude" / "projects" / _NOT_ALNUM.sub("-", str(cwd.resolve()))


def find(session_id: str, *, home: Path) -> Path | None:
    """The newest transcript of `session_id` under `home`, or None."""
    try:
        found = list((home / ".claude" / "projects").glob(f"*/{session_id}.jsonl"))
    except OSError:
        return None
    files = [p for p in found if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


def make_resumable(session_id: str, *, cwd: Path, home: Path) -> bool:
    """Make `session_id`'s transcript visible to a CLI started in `cwd`.

    Copies the newest transcript of that session from another directory's
    folder when this one has none (or an older one). Returns whether a
    transcript is there now; a session the CLI never saw is left for the CLI
    to refuse (`No conversation found`).
    """
    target = project_dir(home, cwd) / f"{session_id}.jsonl"
    newest = find(session_id, home=home)
    if newest is None:
        return False
    if newest == target:
        return True
    if target.exists() and target.stat().st_mtime_ns >= newest.stat().st_mtime_ns:
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".jsonl.partial")
    shutil.copyfile(newest, partial)
    partial.replace(target)  # a CLI never reads half a copy
    logger.info("session %s: transcript copied from %s", session_id, newest.parent.name)
    return True
