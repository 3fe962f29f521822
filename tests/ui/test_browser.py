"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The fake `claude` holds each run at gates the test opens (`@fake:hold`,
`@fake:hold_after`, `@fake:wait_for`), so what the page shows while a run is
under way is seen, not timed. One browser and one server for the module.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.ui.session import COOKIE
from tests.conftest import TOKEN
from tests.jobs.helpers import submit, wait_for
from tests.ui.conftest import Dashboard, signed_in

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture says why, and skips (or fails in CI)
    expect = None

pytestmark = pytest.mark.slow
if expect is not None:
    expect.set_options(timeout=10_000)  # a loaded CI machine: every wait still has its bound

DOCS = Path(__file__).resolve().parents[2] / "docs"
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# What would show that agent output ran as script in the page.
PWNED = "window.__pwned"


@pytest.fixture(autouse=True)
def release_gates(dashboard: Dashboard) -> Iterator[None]:
    yield
    dashboard.release_all()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) at 1280 px."""
    ctx = browser.new_context(viewport=WIDE)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def sign_in(page: Any, url: str, token: str = TOKEN) -> None:
    page.goto(f"{url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/sign-in\?next="))
    page.fill("#token", token)
    page.click(".signin button[type=submit]")
    expect(page.locator("main h1")).to_have_text("Runs")


def sign_in_directly(context: Any, url: str) -> None:
    """Give `context` a session without the sign-in page (the other tests go through it)."""
    with signed_in(url) as client:
        cookie = client.cookies[COOKIE]
    context.add_cookies(
        [
            {
                "name": COOKIE,
                "value": cookie,
                "domain": "127.0.0.1",
                "path": "/ui",
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )


def fits(page: Any, width: int) -> bool:
    """Whether the page needs no sideways scrolling at `width` px."""
    return bool(page.evaluate(f"document.scrollingElement.scrollWidth <= {width}"))


def fact(scope: Any, name: str) -> Any:
    """The value (`dd`) shown for `name` (its `dt`) in a list of facts under `scope`."""
    return scope.locator(f"dl.facts > div:has(> dt:text-is('{name}')) > dd")


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header chunk (IHDR, always the first)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def cost_today(api: httpx.Client) -> str:
    """What the header should show: the cost of the jobs that finished today (UTC)."""
    today = datetime.now(UTC).date().isoformat()
    jobs = api.get("/jobs", params={"limit": 200}).json()["jobs"]
    spent = sum(j["total_cost_usd"] or 0 for j in jobs if (j["finished_at"] or "") >= today)
    assert spent > 0, "no job finished today: the header's cost would say nothing"
    return f"${spent:.4f}"


@pytest.mark.timeout(90)  # whichever test runs first on a worker also starts the server
def test_a_run_from_the_form_is_watched_live_to_its_commit(
    context: Any, dashboard: Dashboard
) -> None:
    page = context.new_page()
    sign_in(page, dashboard.url)
    expect(page.locator("#stats")).to_contain_text("/2 slots in use")
    page.click("text=New run")
    page.fill(
        "#prompt",
        "Write the release notes\nThen list what changed. "
        f"@fake:hold={dashboard.hold('start-1')} @fake:tools=3 @fake:write=NOTES.md "
        f"@fake:hold_after={dashboard.hold('end-1')}",
    )
    page.select_option("#model", "haiku")
    page.fill("#budget", "1.5")
    page.fill("#timeout", "60")
    page.click("#new-run button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/jobs/[0-9a-f-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#run-status")).to_have_text("running")
    timeline = page.locator("#timeline")
    expect(timeline.locator(".item.tool")).to_have_count(0)

    # the list, in another tab, shows it running
    runs = context.new_page()
    runs.goto(f"{dashboard.url}/ui/")
    row = runs.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator(".badge")).to_have_text("running")
    expect(row).to_contain_text("Write the release notes")

    # the agent works: its text, tool calls and results appear as it prints them
    dashboard.open("start-1")
    expect(timeline.locator(".item.text")).to_have_count(3)
    expect(timeline.locator(".item.text").last).to_have_text("Step 3: checking the workspace.")
    expect(timeline.locator(".item.text strong").first).to_have_text("checking")  # Markdown
    expect(timeline.locator(".item.tool")).to_have_count(3)
    expect(timeline.locator(".item.tool_result")).to_have_count(3)
    expect(page.locator("#run-status")).to_have_text("running")
    write = timeline.locator("details.tool", has_text="Write")
    expect(write).not_to_have_attribute("open", "")  # 30 lines of input: folded
    expect(write.locator("summary")).to_contain_text("notes.md")
    expect(timeline.locator("details.tool", has_text="ls -la step1")).to_have_attribute("open", "")
    first_result = timeline.locator(".item.tool_result").first
    expect(first_result.locator("pre.out").first).to_have_text(
        "\n".join(f"output line {n} of step 1" for n in range(1, 6))
    )
    expect(first_result.locator("details.more summary")).to_have_text("3 more lines")

    # it ends: the result, the accounting, the commit and its diff, without a reload
    dashboard.open("end-1")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(timeline.locator(".item.result")).to_contain_text("Hello from the fake claude!")
    summary = page.locator("#summary")
    expect(fact(summary, "Tokens")).to_have_text("16.2k in · 14 out")
    expect(fact(summary, "Cost")).to_have_text("$0.0013 of $1.50")
    expect(fact(summary, "Turns")).to_have_text("1")
    expect(fact(summary, "Duration")).to_have_text(re.compile(r"^[0-9]+\.[0-9] s$"))
    result = timeline.locator(".item.result")
    expect(fact(result, "cost")).to_have_text("$0.0013")
    expect(fact(result, "tokens")).to_have_text("16.2k in · 14 out")
    expect(fact(result, "turns")).to_have_text("1")
    expect(fact(result, "duration")).to_have_text("0.1 s")  # the CLI's duration_ms: 111
    commit = page.locator("#git details.commit")
    expect(commit).to_have_count(1)
    expect(commit.locator(".subject")).to_have_text(
        f"agent: Write the release notes (job {job_id})"
    )
    expect(commit.locator(".d-add", has_text="+written by fake claude")).to_have_count(1)
    expect(commit.locator(".d-meta").first).to_have_text("diff --git a/NOTES.md b/NOTES.md")
    git = page.locator("#git")
    expect(fact(git, "Branch")).to_have_text("main")
    expect(fact(git, "Pushed")).to_have_text("yes")
    expect(git.locator(".error-box")).to_have_count(0)
    expect(git.locator("a[download]")).to_have_attribute("href", f"/ui/jobs/{job_id}/diff")
    expect(page.locator("#cancel")).to_have_count(0)
    expect(row.locator(".badge")).to_have_text("completed")
    for label, value in (("Model", "haiku"), ("Cost", "$0.0013"), ("Tokens", "16.2k in · 14 out")):
        expect(row.locator(f'td[data-label="{label}"]')).to_have_text(value)
    expect(row.locator('td[data-label="Duration"]')).to_have_text(re.compile(r"^[0-9.]+ s$"))
    with dashboard.server.client() as api:
        spent = cost_today(api)
    runs.reload()
    expect(runs.locator("#stats .stat").nth(2)).to_have_text(f"{spent} today")

    page.bring_to_front()  # a tab in the background draws no frames: slow to shoot or click
    page.evaluate("window.scrollTo(0, 0)")
    shot = page.screenshot(full_page=True)
    # the whole page, 1280 px wide: nothing spills sideways, nothing is cut
    full_height = page.evaluate("document.scrollingElement.scrollHeight")
    assert png_size(shot) == (WIDE["width"], max(full_height, WIDE["height"]))
    if os.environ.get("UPDATE_DOCS") == "1":  # `make screenshot`: the README's picture
        DOCS.mkdir(exist_ok=True)
        (DOCS / "run-page.png").write_bytes(shot)
    assert page.evaluate(f"typeof {PWNED}") == "undefined"

    # a phone-sized window: nothing wider than the screen
    for each in (page, runs):
        each.set_viewport_size(PHONE)
        assert fits(each, PHONE["width"]), each.url
    runs.goto(f"{dashboard.url}/ui/new")
    assert fits(runs, PHONE["width"])
    page.set_viewport_size(WIDE)
    page.bring_to_front()


@pytest.mark.timeout(90)
def test_a_running_job_is_cancelled_and_signing_out_locks_the_pages(
    context: Any, dashboard: Dashboard
) -> None:
    context.clock.install()  # the header's 5 s refresh, brought forward (no waiting)
    page = context.new_page()
    sign_in(page, dashboard.url)
    page.goto(f"{dashboard.url}/ui/new")
    page.fill("#prompt", f"Wait for ever @fake:wait_for={dashboard.hold('never')}")
    page.click("#new-run button[type=submit]")
    expect(page.locator("#run-status")).to_have_text("running")
    job_id = page.url.rsplit("/", 1)[1]

    # the other slot taken, one job waiting for it: the header says so by itself
    with dashboard.server.client() as api:
        busy = [submit(api, f"Busy @fake:wait_for={dashboard.hold(f'busy-{n}')}") for n in (1, 2)]
        wait_for(api, busy[0], {"running"})
        assert api.get(f"/jobs/{busy[1]}").json()["status"] == "queued"
        stats = page.locator("#stats .stat")  # rendered before these two were submitted
        page.clock.fast_forward(5_000)
        expect(stats.nth(0)).to_have_text("2/2 slots in use")
        expect(stats.nth(1)).to_have_text("1 queued")

        for each in reversed(busy):  # the queued one first, so that it never starts
            cancelled = api.post(f"/jobs/{each}/cancel")
            assert cancelled.status_code == 200, cancelled.text

    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator(".flash")).to_have_text("The run was cancelled.")
    expect(page.locator("#summary .error-box")).to_contain_text("cancel")
    page.goto(f"{dashboard.url}/ui/?status=cancelled")
    expect(page.locator(f'tr[data-job="{job_id}"] .badge')).to_have_text("cancelled")

    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/ui/sign-in$"))
    assert context.cookies() == []
    page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
    expect(page).to_have_url(re.compile(r"/ui/sign-in\?next="))
    assert job_id not in page.locator("main").inner_text()


@pytest.mark.timeout(90)
def test_git_errors_and_the_branch_the_work_went_to_are_shown(
    context: Any, dashboard: Dashboard
) -> None:
    """A run that could not sync (the remote is gone) and whose agent left the
    workspace on a branch of its own: the work is saved as `agent-service/<id>`,
    kept locally when that push fails too, and the page says all of it."""
    away = dashboard.remote.with_name("remote-away.git")
    with dashboard.server.client() as api:
        dashboard.remote.rename(away)  # nothing at the remote's path: fetch and push fail
        try:
            prompt = "Elsewhere @fake:branch=side @fake:write=aside.txt @fake:turns=2"
            job = wait_for(api, submit(api, prompt))
        finally:
            away.rename(dashboard.remote)
    job_id = job["job_id"]
    assert job["status"] == "completed", job  # GIT_SYNC_REQUIRED is off: the run went on

    sign_in_directly(context, dashboard.url)
    page = context.new_page()
    page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
    git = page.locator("#git")
    expect(fact(git, "Branch")).to_have_text(f"agent-service/{job_id}")
    expect(fact(git, "Pushed")).to_have_text("no")
    sync_error = git.locator(".error-box", has=page.locator("b", has_text="Sync error"))
    expect(sync_error.locator("pre")).to_have_text(re.compile(r"^git fetch failed: .*remote\.git"))
    push_error = git.locator(".error-box", has=page.locator("b", has_text="Push error"))
    expect(push_error.locator("pre")).to_have_text(
        re.compile(
            "^the agent left the workspace on branch side; its work tree is on "
            f"agent-service/{job_id} \\(local ref only, the push failed: .*remote\\.git"
        )
    )
    expect(git.locator(".error-box")).to_have_count(2)
    expect(git.locator("details.commit .d-meta").first).to_have_text(
        "diff --git a/aside.txt b/aside.txt"
    )
    # the turns the CLI counted (two, and the answer's), not a constant
    expect(fact(page.locator("#summary"), "Turns")).to_have_text("3")
    expect(fact(page.locator("#timeline .item.result"), "turns")).to_have_text("3")


@pytest.mark.timeout(90)
def test_hostile_output_runs_no_script(browser: Any, dashboard: Dashboard) -> None:
    """Followed live with the Content-Security-Policy switched off (escaping alone
    must hold), then shown again with it, as the server renders it at once."""
    bare = browser.new_context(viewport=WIDE, bypass_csp=True)
    strict = browser.new_context(viewport=WIDE)
    try:
        page = bare.new_page()
        sign_in(page, dashboard.url)
        with httpx.Client(
            base_url=dashboard.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as api:
            job_id = submit(
                api,
                "<img src=x onerror=\"window.__pwned='prompt'\"> hostile "
                f"@fake:hold={dashboard.hold('hostile-1')} @fake:hostile "
                f"@fake:hold_after={dashboard.hold('hostile-2')}",
            )
            wait_for(api, job_id, {"running"})
            page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
            expect(page.locator("#run-status")).to_have_text("running")
            dashboard.open("hostile-1")  # the hostile events arrive live
            expect(page.locator("#timeline .item.tool_result")).to_have_count(1)
            expect(page.locator("#timeline .item.text").first).to_contain_text("<script>")
            dashboard.open("hostile-2")
            expect(page.locator("#run-status")).to_have_text("completed")
            expect(page.locator("#git .d-meta").first).to_contain_text("<img src=x onerror=")
            assert_denial_shown(page)
            wait_for(api, job_id)
        assert_inert(page)
        page.goto(f"{dashboard.url}/ui/")
        expect(page.locator(f'tr[data-job="{job_id}"]')).to_contain_text("<img src=x")
        assert_inert(page)

        page = strict.new_page()
        sign_in(page, dashboard.url)
        page.goto(f"{dashboard.url}/ui/jobs/{job_id}")
        expect(page.locator("#timeline .item.result")).to_contain_text("raw link")
        expect(page.locator("#git .d-add").first).to_contain_text("<script>")
        assert_denial_shown(page)
        assert_inert(page)
    finally:
        bare.close()
        strict.close()


def assert_denial_shown(page: Any) -> None:
    """The hostile run's permission denial (its tool name and input are the payload),
    in the summary and on the result, as text."""
    script = "<script>window.__pwned='script'</script>"
    denials = page.locator("#summary .denials")
    expect(denials.locator("b")).to_have_text("Permission denials")
    expect(denials.locator("details")).to_have_count(1)
    expect(denials.locator("summary")).to_contain_text(script)
    expect(denials.locator("pre")).to_contain_text(f'"x": "{script}')
    denial = page.locator("#timeline .item.result details.denial")
    expect(denial.locator("summary")).to_contain_text(f"denied: {script}")
    expect(denial.locator("pre")).to_contain_text(f'"x": "{script}')


def assert_inert(page: Any) -> None:
    """No payload ran, and none is in the page as an element that could."""
    assert page.evaluate(f"typeof {PWNED}") == "undefined"
    found = page.evaluate(
        """() => ({
            scripts: Array.from(document.scripts).map(s => s.getAttribute("src")),
            imgs: document.querySelectorAll("img").length,
            svgs: document.querySelectorAll("svg").length,
            handlers: Array.from(document.querySelectorAll("*")).filter(
                e => Array.from(e.attributes).some(a => a.name.startsWith("on"))).length,
            js_links: Array.from(document.querySelectorAll("[href], [src]")).filter(
                e => /^\\s*javascript:/i.test(e.getAttribute("href") || e.getAttribute("src"))
            ).length,
        })"""
    )
    assert found == {
        "scripts": ["/ui/static/app.js"],
        "imgs": 0,
        "svgs": 0,
        "handlers": 0,
        "js_links": 0,
    }
