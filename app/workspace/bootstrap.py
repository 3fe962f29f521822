"""The workspace at start-up: made a git work tree, its branch and config noted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from app.redact import redact
from app.workspace.git import DEFAULT_AUTHOR, WorkspaceError, identity, run_sync

logger = logging.getLogger(__name__)


def ensure_workspace(
    path: Path,
    *,
    repo_url: str | None = None,
    branch: str | None = None,
    timeout_s: float = 300,
) -> None:
    """Make `path` a usable git work tree.

    Missing or empty: cloned from `repo_url` when set, else `git init` with an
    empty initial commit. A non-empty directory that is not a git work tree is
    refused rather than turned into one: it is somebody's data.
    """
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"the workspace {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not (path / ".git").exists():
            raise WorkspaceError(
                f"the workspace {path} is not empty and is not a git repository; "
                "point WORKSPACE_DIR at a git work tree or an empty directory"
            )
        return
    path.mkdir(parents=True, exist_ok=True)
    if repo_url:
        clone = ["clone", "--quiet"]
        if branch:
            clone += ["--branch", branch]
        run_sync(path.parent, *clone, "--", repo_url, str(path), timeout_s=timeout_s)
        logger.info("cloned %s into %s", redact(repo_url), path)
        return
    run_sync(path, "init", "--quiet", timeout_s=timeout_s)
    if branch:
        run_sync(path, "checkout", "--quiet", "-b", branch, timeout_s=timeout_s)
    run_sync(
        path,
        *identity(DEFAULT_AUTHOR),
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "Initial commit",
        timeout_s=timeout_s,
    )
    logger.info("initialised an empty git workspace in %s", path)


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """The workspace repository's `config` as the service found it at start-up."""

    path: Path
    content: bytes


def snapshot_config(path: Path) -> ConfigSnapshot | None:
    """Read the work tree's repository config (None if there is none to read)."""
    config = path / ".git" / "config"
    try:
        return ConfigSnapshot(config, config.read_bytes())
    except OSError:
        return None


def restore_config(snapshot: ConfigSnapshot | None) -> None:
    """Put back the config the service started with, before its own git runs.

    `.git/config` is inside the agent's reach: a filter or merge driver, a
    signing program, a credential helper, another remote URL or work tree
    written there would otherwise run or act in the service's git.
    """
    if snapshot is None:
        return
    try:
        if snapshot.path.read_bytes() == snapshot.content:
            return
        snapshot.path.write_bytes(snapshot.content)
    except OSError as exc:  # .git removed or replaced: the git commands will say so
        logger.warning("could not restore %s: %s", snapshot.path, exc)
        return
    logger.warning("the workspace's git config was changed during the run; restored it")


def checked_out_branch(path: Path, timeout_s: float = 30) -> str | None:
    """The branch the work tree has checked out (None when detached): at
    start-up, the branch the service keeps the workspace on when GIT_BRANCH
    is not set, whatever branch an agent switches to later."""
    try:
        ref = run_sync(path, "symbolic-ref", "--quiet", "HEAD", timeout_s=timeout_s)
    except WorkspaceError:
        return None  # detached
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


def has_commits(path: Path, timeout_s: float = 30) -> bool:
    """Whether HEAD names a commit (not so in a clone of an empty repository)."""
    try:
        run_sync(path, "rev-parse", "--quiet", "--verify", "HEAD^{commit}", timeout_s=timeout_s)
    except WorkspaceError:
        return False
    return True


def origin_url(path: Path, timeout_s: float = 30) -> str | None:
    """The work tree's `origin` URL, or None when it has none."""
    try:
        return run_sync(path, "remote", "get-url", "origin", timeout_s=timeout_s) or None
    except WorkspaceError:
        return None
