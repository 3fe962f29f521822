"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The fake `claude` holds each run at gates the test opens (`@fake:hold`,
`@fake:hold_after`, `@fake:wait_for`), so what the page shows while a run is
under way is seen, not timed. One browser and one server for the module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN
from tests.jobs.helpers import submit, wait_for
from tests.ui.conftest import Dashboard

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


def fits(page: Any, width: int) -> bool:
    """Whether the page needs no sideways scrolling at `width` px."""
    return bool(page.evaluate(f"document.scrollingElement.scrollWidth <= {width}"))


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
    expect(page.locator("#summary")).to_contain_text("16.2k in · 14 out")
    expect(page.locator("#summary")).to_contain_text("$0.0013")
    commit = page.locator("#git details.commit")
    expect(commit).to_have_count(1)
    expect(commit.locator(".subject")).to_have_text(
        f"agent: Write the release notes (job {job_id})"
    )
    expect(commit.locator(".d-add", has_text="+written by fake claude")).to_have_count(1)
    expect(commit.locator(".d-meta").first).to_have_text("diff --git a/NOTES.md b/NOTES.md")
    expect(page.locator("#git")).to_contain_text("Branch")
    expect(page.locator("#cancel")).to_have_count(0)
    expect(runs.locator(f'tr[data-job="{job_id}"] .badge')).to_have_text("completed")

    page.bring_to_front()  # a tab in the background draws no frames: slow to shoot or click
    page.evaluate("window.scrollTo(0, 0)")
    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
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


def test_a_running_job_is_cancelled_and_signing_out_locks_the_pages(
    context: Any, dashboard: Dashboard
) -> None:
    page = context.new_page()
    sign_in(page, dashboard.url)
    page.goto(f"{dashboard.url}/ui/new")
    page.fill("#prompt", f"Wait for ever @fake:wait_for={dashboard.hold('never')}")
    page.click("#new-run button[type=submit]")
    expect(page.locator("#run-status")).to_have_text("running")
    job_id = page.url.rsplit("/", 1)[1]
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
        assert_inert(page)
    finally:
        bare.close()
        strict.close()


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
