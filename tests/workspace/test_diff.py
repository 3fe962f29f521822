"""A job's diff: `GET /jobs/{job_id}/diff`, and the git behind it.

Real git and local bare remotes: through a real server (GIT_PUSH=true), and
`read_diff` called directly on a slot the agent has made hostile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.workspace.diff import CACHE_NAME, DiffUnavailable, read_diff
from tests.conftest import FAKE_CLAUDE, TOKEN, Server, git, make_remote, start_server
from tests.jobs.helpers import submit, wait_for


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    """A server that commits and pushes every run: the server, its remote, a gate directory."""
    root = tmp_path_factory.mktemp("diff")
    remote = make_remote(root)
    gate = root / "gate"
    gate.mkdir()
    env = {
        "API_BEARER_TOKEN": TOKEN,
        "WORKSPACE_DIR": str(root / "ws"),
        "DATA_DIR": str(root / "data"),
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "GIT_REPO_URL": str(remote),
        "GIT_PUSH": "true",
        "SHUTDOWN_GRACE_SECONDS": "1",
    }
    server = start_server(env, root / "server.log")
    yield server, remote, gate
    (gate / "open").touch()
    server.stop()


@pytest.fixture
def client(pushed: tuple[Server, Path, Path]) -> Iterator[httpx.Client]:
    with pushed[0].client() as c:
        yield c


def test_a_jobs_commits_come_back_as_a_patch_that_applies(
    client: httpx.Client, pushed: tuple[Server, Path, Path], tmp_path: Path
) -> None:
    _, remote, _ = pushed
    # the agent writes the service's token into a file: it is masked in the diff too
    job_id = submit(
        client, "Add the notes\n@fake:write=notes/a.txt @fake:shell=echo_test-token_>_leak.txt"
    )
    job = wait_for(client, job_id)
    [commit] = job["git"]["commits"]
    response = client.get(f"/jobs/{job_id}/diff")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/x-diff; charset=utf-8"
    assert "x-diff-truncated" not in response.headers
    patch = response.text
    assert patch.startswith(f"From {commit} Mon Sep 17 00:00:00 2001\n")
    assert f"Subject: [PATCH] agent: Add the notes (job\n {job_id})" in patch  # folded
    assert "+++ b/notes/a.txt\n@@ -0,0 +1 @@\n+written by fake claude\n" in patch
    assert "+***\n" in patch and TOKEN not in patch
    # `git am` on the commit before gives the same change (the leak file differs: masked)
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(remote), str(clone), cwd=tmp_path)
    git("checkout", "--quiet", job["git"]["head_before"], cwd=clone)
    (tmp_path / "job.patch").write_text(patch)
    git(
        "-c",
        "user.name=r",
        "-c",
        "user.email=r@r",
        "am",
        "--quiet",
        str(tmp_path / "job.patch"),
        cwd=clone,
    )
    assert (clone / "notes" / "a.txt").read_text() == "written by fake claude\n"
    assert git("log", "-1", "--format=%s", cwd=clone) == f"agent: Add the notes (job {job_id})"


def test_a_job_without_commits_and_an_unknown_job_are_404s(
    client: httpx.Client, pushed: tuple[Server, Path, Path]
) -> None:
    job_id = submit(client, "just answer @fake:say=hi")
    wait_for(client, job_id)
    response = client.get(f"/jobs/{job_id}/diff")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "no changes"
    assert body["message"] == body["detail"] == f"job {job_id} made no changes"
    response = client.get("/jobs/no-such-job/diff")
    assert response.status_code == 404
    assert response.json() == {
        "error": "not found",
        "detail": "no job 'no-such-job'",
        "message": "no job 'no-such-job'",
    }
    assert httpx.get(f"{pushed[0].base_url}/jobs/{job_id}/diff").status_code == 401


def test_a_running_job_has_no_diff_yet(
    client: httpx.Client, pushed: tuple[Server, Path, Path]
) -> None:
    gate = pushed[2]
    job_id = submit(client, f"held @fake:write=held.txt @fake:wait_for={gate}/held")
    wait_for(client, job_id, {"running"})
    response = client.get(f"/jobs/{job_id}/diff")
    assert response.status_code == 404
    assert response.json()["error"] == "no changes"
    assert "recorded when it ends" in response.json()["detail"]
    (gate / "held").touch()
    wait_for(client, job_id)
    assert client.get(f"/jobs/{job_id}/diff").status_code == 200


def test_the_diff_route_is_documented(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/diff"]["get"]
    assert set(operation["responses"]) == {"200", "401", "404", "422", "503"}
    assert list(operation["responses"]["200"]["content"]) == ["text/x-diff"]
    for status in ("401", "404", "422", "503"):
        assert list(operation["responses"][status]["content"]) == ["application/json"]
    assert operation["security"] == [{"bearer": []}]


# -- read_diff on its own -------------------------------------------------------


def commit_in(path: Path, name: str, text: str, message: str) -> str:
    (path / name).write_text(text)
    git("add", name, cwd=path)
    git("-c", "user.name=a", "-c", "user.email=a@a", "commit", "--quiet", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


@pytest.fixture
def slot(tmp_path: Path) -> Path:
    """A slot cloned from a bare remote, with two commits pushed to main."""
    remote = make_remote(tmp_path)
    path = tmp_path / "slot"
    git("clone", "--quiet", str(remote), str(path), cwd=tmp_path)
    commit_in(path, "a.txt", "first\n", "first change")
    commit_in(path, "b.txt", "second\n", "second change")
    git("push", "--quiet", "origin", "HEAD:main", cwd=path)
    return path


def shas(slot: Path) -> list[str]:
    return git("rev-list", "--reverse", "HEAD~2..HEAD", cwd=slot).split()


async def test_commits_are_read_from_the_slot_or_else_fetched_from_the_remote(
    slot: Path, tmp_path: Path
) -> None:
    wanted = shas(slot)
    found = await read_diff(
        wanted,
        repo=slot,
        remote=None,
        branch=None,
        data_dir=tmp_path / "data",
        timeout_s=30,
        max_bytes=2**20,
    )
    assert [c.sha for c in found.commits] == wanted
    assert [c.subject for c in found.commits] == ["first change", "second change"]
    assert found.commits[0].author == "a <a@a>"
    assert "+first\n" in found.commits[0].text and "+second\n" in found.commits[1].text
    assert not found.truncated
    # the slot lost them (re-cloned, .git removed): the remote has them
    fresh = tmp_path / "data-2"
    found = await read_diff(
        wanted,
        repo=tmp_path / "gone",
        remote=str(tmp_path / "remote.git"),
        branch="main",
        data_dir=fresh,
        timeout_s=30,
        max_bytes=2**20,
    )
    assert found.series().count(b"\nFrom: a <a@a>\n") == 2
    assert (fresh / CACHE_NAME / "refs" / "fetched" / "main").exists()


async def test_commits_found_nowhere_say_why(slot: Path, tmp_path: Path) -> None:
    wanted = shas(slot)
    with pytest.raises(DiffUnavailable, match="there is no remote"):
        await read_diff(
            wanted,
            repo=None,
            remote=None,
            branch="main",
            data_dir=tmp_path / "data",
            timeout_s=30,
            max_bytes=2**20,
        )
    with pytest.raises(DiffUnavailable, match="fetching gone from the remote failed"):
        await read_diff(
            wanted,
            repo=None,
            remote=str(tmp_path / "remote.git"),
            branch="gone",
            data_dir=tmp_path / "data",
            timeout_s=30,
            max_bytes=2**20,
        )


async def test_a_diff_over_the_budget_is_cut_at_a_line(slot: Path, tmp_path: Path) -> None:
    found = await read_diff(
        shas(slot),
        repo=slot,
        remote=None,
        branch=None,
        data_dir=tmp_path / "data",
        timeout_s=30,
        max_bytes=300,
    )
    assert found.truncated
    first, second = found.commits
    assert first.truncated and 0 < len(first.patch) <= 300 and first.patch.endswith(b"\n")
    assert second.truncated and second.patch == b""


async def test_programs_the_agent_configured_in_its_slot_never_run(
    slot: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    (slot / ".gitattributes").write_text("* diff=evil\n")
    commit_in(slot, "c.txt", "third\n", "third change")
    git("add", ".gitattributes", cwd=slot)
    git("-c", "user.name=a", "-c", "user.email=a@a", "commit", "--quiet", "-m", "attrs", cwd=slot)
    run = f"sh -c 'echo ran >> {marker}; cat'"
    with (slot / ".git" / "config").open("a") as config:
        config.write(
            f'[diff "evil"]\n\ttextconv = {run}\n\tcommand = {run}\n'
            f"[diff]\n\texternal = {run}\n"
            f"[core]\n\tpager = {run}\n\tfsmonitor = {run}\n"
            f"[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {run}\n"
        )
    wanted = git("rev-list", "--reverse", "HEAD~4..HEAD", cwd=slot).split()
    found = await read_diff(
        wanted,
        repo=slot,
        remote=None,
        branch=None,
        data_dir=tmp_path / "data",
        timeout_s=30,
        max_bytes=2**20,
    )
    assert len(found.commits) == 4
    assert "+third\n" in found.commits[2].text
    assert not marker.exists()
    # and nothing was written in the slot
    assert not list((slot / ".git").glob("*.tmp"))
    assert git("-c", "core.fsmonitor=false", "status", "--porcelain", cwd=slot) == ""
    assert not marker.exists()


async def test_names_that_are_not_commits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DiffUnavailable, match="names no commit"):
        await read_diff(
            ["--output=/tmp/x", "HEAD", "abc"],
            repo=None,
            remote=None,
            branch=None,
            data_dir=tmp_path,
            timeout_s=30,
            max_bytes=100,
        )
