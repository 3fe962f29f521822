"""Who may see and change what through the dashboard: a real server, plain HTTP.

Without a session every page is the sign-in and shows no job; a state
change needs this host's Origin (or Referer) and the session's CSRF token;
the cookie opens /ui/ only; every answer carries the security headers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TOKEN, wait_until
from tests.jobs.helpers import submit, wait_for
from tests.ui.conftest import Dashboard, csrf_of, signed_in

SECRET_PROMPT = "the quarterly numbers 7f3a9c"


@pytest.fixture(scope="module")
def held(dashboard: Dashboard) -> Iterator[str]:
    """A job that runs until the module ends, with a prompt no stranger may see."""
    with dashboard.server.client() as api:
        job_id = submit(api, f"{SECRET_PROMPT} @fake:wait_for={dashboard.gate}/held-access")
        wait_for(api, job_id, {"running"})
    yield job_id
    dashboard.open("held-access")


def assert_secured(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_without_a_session_every_page_is_the_sign_in_and_shows_no_job(
    dashboard: Dashboard, held: str
) -> None:
    pages = ["/ui", "/ui/", f"/ui/jobs/{held}", "/ui/new", "/ui/?status=running", "/ui/nope"]
    with httpx.Client(base_url=dashboard.url, follow_redirects=True) as stranger:
        for page in pages:
            response = stranger.get(page)
            assert response.status_code == 200, page
            assert response.url.path == "/ui/sign-in", page
            assert 'type="password"' in response.text
            assert SECRET_PROMPT not in response.text
            # the only trace of the job is the address the stranger asked for
            assert held not in response.text.replace(f'value="/ui/jobs/{held}"', "")
            assert_secured(response)
        for part in ("/ui/fragments/runs", "/ui/fragments/stats", f"/ui/jobs/{held}/live",
                     f"/ui/jobs/{held}/diff"):  # fmt: skip
            response = stranger.get(part)
            assert response.status_code == 401, part
            assert held not in response.text and SECRET_PROMPT not in response.text
        stranger.cookies.set("cas_session", "v1:ZGVmYXVsdA:9999999999:abc:def")  # forged
        response = stranger.get("/ui/")
        assert response.url.path == "/ui/sign-in"


def test_a_wrong_token_is_refused_and_a_right_one_signs_in(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.url, headers={"Origin": dashboard.url}) as client:
        response = client.post("/ui/sign-in", data={"token": "wrong-token"})
        assert response.status_code == 401
        assert "That token is not valid." in response.text and "wrong-token" not in response.text
        assert "set-cookie" not in response.headers
        response = client.post("/ui/sign-in", data={"token": f" {TOKEN} ", "next": "/ui/new"})
        assert response.status_code == 303 and response.headers["location"] == "/ui/new"
        cookie = response.headers["set-cookie"]
        for attribute in ("HttpOnly", "Max-Age=43200", "Path=/ui", "SameSite=strict"):
            assert attribute in cookie
        assert TOKEN not in cookie
        page = client.get("/ui/new")
        assert page.status_code == 200 and "New run" in page.text
        assert TOKEN not in page.text and TOKEN not in str(page.url)
        assert page.headers["cache-control"] == "no-store"
        # a sign-in may only send the browser to a page of the dashboard
        for target in ("https://evil.example/", "//evil.example/ui/", "/jobs"):
            response = client.post("/ui/sign-in", data={"token": TOKEN, "next": target})
            assert response.headers["location"] == "/ui/"


def test_a_cancel_from_another_origin_or_without_the_token_is_refused(
    dashboard: Dashboard,
) -> None:
    with dashboard.server.client() as api:
        job_id = submit(api, f"to cancel @fake:wait_for={dashboard.gate}/never")
        wait_for(api, job_id, {"running"})
        with signed_in(dashboard.url) as browser:
            csrf = csrf_of(browser.get(f"/ui/jobs/{job_id}").text)
            cancel = f"/ui/jobs/{job_id}/cancel"
            refused = [
                ({"Origin": "http://evil.example"}, {"csrf": csrf}),
                ({"Origin": "null"}, {"csrf": csrf}),
                ({"Origin": "", "Referer": "http://evil.example/page"}, {"csrf": csrf}),
                ({"Origin": dashboard.url}, {}),
                ({"Origin": dashboard.url}, {"csrf": csrf[:-1] + "x"}),
            ]
            for headers, form in refused:
                response = browser.post(cancel, data=form, headers=headers)
                assert response.status_code == 403, (headers, form)
                assert_secured(response)
            # neither Origin nor Referer: refused too
            bare = httpx.Client(base_url=dashboard.url, cookies=browser.cookies)
            with bare:
                assert bare.post(cancel, data={"csrf": csrf}).status_code == 403
            assert api.get(f"/jobs/{job_id}").json()["status"] == "running"
            response = browser.post(cancel, data={"csrf": csrf})
            assert response.status_code == 303
            assert response.headers["location"] == f"/ui/jobs/{job_id}?notice=cancelled"
        assert api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_the_cookie_opens_only_the_dashboard(dashboard: Dashboard, held: str) -> None:
    with signed_in(dashboard.url) as browser:
        assert browser.get(f"/ui/jobs/{held}").status_code == 200
        for path in ("/jobs", f"/jobs/{held}", "/openapi.json"):
            response = browser.get(path)
            assert response.status_code == 401, path
            assert "cas_session" not in response.headers.get("set-cookie", "")


def test_every_dashboard_answer_carries_the_security_headers(
    dashboard: Dashboard, held: str
) -> None:
    with signed_in(dashboard.url) as browser:
        answers = [
            browser.get("/ui/"),
            browser.get(f"/ui/jobs/{held}"),
            browser.get("/ui/fragments/runs"),
            browser.get("/ui/static/app.js"),
            browser.get("/ui/static/nope.js"),
            browser.get("/ui/jobs/no-such-job"),
            browser.get("/ui/nowhere"),
            browser.put("/ui/", data={"csrf": "x"}),
            httpx.get(f"{dashboard.url}/ui/sign-in"),
        ]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 404, 404, 404, 403, 200]
    for response in answers:
        assert_secured(response)
    assert answers[3].headers["content-type"] == "text/javascript; charset=utf-8"


def test_a_session_ends_when_its_token_is_removed_or_it_signs_out(
    dashboard: Dashboard,
) -> None:
    with signed_in(dashboard.url, "alice-token-0123") as alice:
        copy = httpx.Client(base_url=dashboard.url, cookies=alice.cookies)
        page = alice.get("/ui/")
        assert page.status_code == 200 and "alice" in page.text
        alice.post("/ui/sign-out", data={"csrf": csrf_of(page.text)})
        with copy:
            assert copy.get("/ui/").status_code == 303  # the cookie is no good any more
    with signed_in(dashboard.url, "carol-token-89ab") as carol:
        assert carol.get("/ui/").status_code == 200
        dashboard.tokens_file.write_text(
            dashboard.tokens_file.read_text().replace("carol:carol-token-89ab\n", "")
        )
        dashboard.server.proc.send_signal(signal.SIGHUP)

        def carol_refused() -> bool:
            api = httpx.get(
                f"{dashboard.url}/jobs", headers={"Authorization": "Bearer carol-token-89ab"}
            )
            return api.status_code == 401

        wait_until(carol_refused, "the tokens were re-read without carol")
        response = carol.get("/ui/")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/sign-in")
    with signed_in(dashboard.url, "bob-token-4567") as bob:
        assert bob.get("/ui/").status_code == 200


def test_the_form_submits_a_job_as_the_signed_in_name(dashboard: Dashboard) -> None:
    with signed_in(dashboard.url, "bob-token-4567") as bob:
        form = bob.get("/ui/new").text
        fields = {
            "csrf": csrf_of(form),
            "form_id": "ui-test-form-1",
            "prompt": "from the form\r\n@fake:say=done",
            "model": "haiku",
            "budget": "0.5",
            "timeout": "30",
        }
        response = bob.post("/ui/jobs", data=fields)
        assert response.status_code == 303
        job_id = response.headers["location"].rsplit("/", 1)[1]
        again = bob.post("/ui/jobs", data=fields)  # a double click: the same job
        assert again.headers["location"] == response.headers["location"]
        bad = bob.post("/ui/jobs", data={**fields, "form_id": "ui-2", "budget": "1000"})
        assert bad.status_code == 400
        assert "max_budget_usd must be at most" in bad.text
        assert "from the form" in bad.text  # what was typed is kept
    with dashboard.server.client() as api:
        job = wait_for(api, job_id)
    assert job["prompt"] == "from the form\n@fake:say=done"
    assert job["submitted_by"] == "bob" and job["model"] == "haiku"
    assert job["max_budget_usd"] == 0.5 and job["timeout_seconds"] == 30


def test_the_token_appears_in_no_log(dashboard: Dashboard) -> None:
    with signed_in(dashboard.url):
        pass
    wait_until(lambda: "default signed in" in dashboard.server.log(), "the sign-in was logged")
    log = dashboard.server.log()
    for token in (TOKEN, "alice-token-0123", "bob-token-4567"):
        assert token not in log


def test_continue_starts_a_job_in_the_same_session(dashboard: Dashboard) -> None:
    with dashboard.server.client() as api:
        first = wait_for(api, submit(api, "first @fake:say=one"))
        with signed_in(dashboard.url) as browser:
            page = browser.get(f"/ui/jobs/{first['job_id']}").text
            assert 'id="continue-prompt"' in page
            assert f'name="session_id" value="{first["session_id"]}"' in page
            response = browser.post(
                "/ui/jobs",
                data={
                    "csrf": csrf_of(page),
                    "form_id": "ui-continue-1",
                    "session_id": first["session_id"],
                    "model": first["model"],
                    "prompt": "and then @fake:say=two",
                },
            )
        assert response.status_code == 303
        second = wait_for(api, response.headers["location"].rsplit("/", 1)[1])
    assert second["status"] == "completed" and second["result"] == "two"
    assert second["session_id"] == first["session_id"]  # the fake resumes the one it is given


def test_the_runs_list_filters_by_status_and_pages(dashboard: Dashboard, held: str) -> None:
    with signed_in(dashboard.url) as browser:
        running = browser.get("/ui/?status=running").text
        assert f'data-job="{held}"' in running and SECRET_PROMPT in running
        assert f'data-job="{held}"' not in browser.get("/ui/?status=completed").text
        fragment = browser.get("/ui/fragments/runs?status=running")
        assert fragment.status_code == 200 and f'data-job="{held}"' in fragment.text
        assert "<html" not in fragment.text
        assert 'data-job="' not in browser.get("/ui/fragments/runs?before=1").text
        assert browser.get("/ui/?status=bogus").status_code == 400
        assert browser.get("/ui/?before=-1").status_code == 400
