"""Making a session's transcript visible to a CLI started in another directory."""

from __future__ import annotations

import os
from pathlib import Path

from app.agent.sessions import make_resumable, project_dir

SESSION = "0b0a6f2e-1111-4222-8333-444455556666"


def transcript(home: Path, cwd: Path, text: str, mtime_ns: int) -> Path:
    path = project_dir(home, cwd) / f"{SESSION}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_the_folder_is_named_as_the_cli_names_it(tmp_path: Path) -> None:
    # seen with the pinned CLI: /tmp/sess/ws.a_b-c -> -tmp-sess-ws-a-b-c
    cwd = tmp_path / "ws.a_b-c"
    cwd.mkdir()
    expected = str(cwd).replace("/", "-").replace(".", "-").replace("_", "-")
    assert project_dir(tmp_path, cwd) == tmp_path / ".claude" / "projects" / expected


def test_the_newest_transcript_is_copied_into_the_slots_folder(tmp_path: Path) -> None:
    home, slot0, slot1, slot2 = (tmp_path / n for n in ("home", "s0", "s1", "s2"))
    transcript(home, slot0, "turns of slot 0\n", 1_000)
    transcript(home, slot1, "turns of slot 0 and 1\n", 2_000)  # resumed there later
    assert make_resumable(SESSION, cwd=slot2, home=home)
    copied = project_dir(home, slot2) / f"{SESSION}.jsonl"
    assert copied.read_text() == "turns of slot 0 and 1\n"
    assert make_resumable(SESSION, cwd=slot1, home=home)  # the newest is there already
    assert not list(project_dir(home, slot2).glob("*.partial"))


def test_an_older_copy_in_the_slot_is_replaced_and_a_newer_one_kept(tmp_path: Path) -> None:
    home, slot0, slot1 = tmp_path / "home", tmp_path / "s0", tmp_path / "s1"
    old = transcript(home, slot0, "old\n", 1_000)
    transcript(home, slot1, "new\n", 2_000)
    assert make_resumable(SESSION, cwd=slot0, home=home)
    assert old.read_text() == "new\n"


def test_an_unknown_session_is_left_for_the_cli_to_refuse(tmp_path: Path) -> None:
    assert not make_resumable(SESSION, cwd=tmp_path / "s0", home=tmp_path / "home")
    assert not (tmp_path / "home" / ".claude").exists()
