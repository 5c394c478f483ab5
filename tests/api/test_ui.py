"""The web UI: in headless Chromium (Debian's `chromium`, driven by Playwright) a reviewer logs in
with a token, filters the queue, opens a proposal, edits and approves it, and sees its state
change; stored XSS in evidence and comments renders as inert text. Over plain HTTP: cookie flags,
CSRF, roles, and the log-in redirect.

UPDATE_SCREENSHOTS=1 also writes docs/img/review-list.png and docs/img/review-detail.png.
"""

from __future__ import annotations

import re

from refinery.store.models import ProposalRow
from tests.api.browser import login, screenshot
from tests.api.helpers import audit_trail, insert_proposal

XSS_QUERY = (
    'How do I pair <script>window.__xss=1</script> my <img src=x onerror="window.__xss=2"> earbuds?'
)


def test_reviewer_logs_in_edits_and_approves(api_env, live_server, browser, tmp_path):
    prompt_id = insert_proposal(api_env.sessions, "system_prompt_edit")
    insert_proposal(
        api_env.sessions, "rag_source", query="How long is the warranty for refurbished phones?"
    )
    insert_proposal(
        api_env.sessions, "fine_tune_dataset", query="What is the restocking fee after 60 days?"
    )
    insert_proposal(
        api_env.sessions,
        "rag_source",
        app_id="acme-bank",
        status="rejected",
        query="Can I open a joint account online?",
    )
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    login(page, live_server, api_env.tokens["reviewer"])

    assert page.locator("table.queue tbody tr").count() == 4
    assert page.inner_text(".whoami").startswith("reviewer-user")
    screenshot(page, tmp_path, "review-list.png")
    page.select_option("select[name=status]", "pending")
    page.fill("input[name=app]", "nimbus-support")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*status=pending.*"))
    assert page.locator("table.queue tbody tr").count() == 3

    page.click(f"a[href='/ui/proposals/{prompt_id}']")
    page.wait_for_url(f"{live_server.url}/ui/proposals/{prompt_id}")
    assert page.inner_text("#status") == "pending"
    assert page.locator("#diff .op-add").count() == 2  # the blank line and the instruction
    assert (
        page.locator("#diff .op-add").nth(1).evaluate("e => getComputedStyle(e).backgroundColor")
        != "rgba(0, 0, 0, 0)"
    )
    assert "This answer is too long and rambles." in page.inner_text("ol.examples")
    screenshot(page, tmp_path, "review-detail.png")

    # Edit before approving: the diff is recomputed and the version goes up.
    page.click("details.edit summary")
    text = page.input_value("#proposed_text")
    page.fill("#proposed_text", text + "Never promise refunds.\n")
    page.fill("#edit-comment", "no refund promises")
    page.click("#save-edit")
    page.wait_for_url(re.compile(r".*done=edited"))
    assert page.inner_text("#version") == "2"
    assert "+Never promise refunds." in page.inner_text("#diff")

    page.fill("#approve-comment", "Looks right")
    page.click("#approve")
    page.wait_for_url(re.compile(r".*done=approved"))
    assert page.inner_text("#status") == "approved"
    assert page.inner_text(".flash.ok").startswith("Approved.")
    assert page.locator("#approve").count() == 0 and page.locator("#applied").count() == 1
    with api_env.sessions() as s:
        row = s.get(ProposalRow, prompt_id)
        assert (row.status, row.version, row.decided_by) == ("approved", 3, "reviewer-user")
        assert row.payload["artifact"]["proposed_text"].endswith("Never promise refunds.\n")

    page.click("#applied")
    page.wait_for_url(re.compile(r".*done=applied"))
    assert page.inner_text("#status") == "applied"


def test_stored_xss_stays_inert(api_env, live_server, browser):
    payload_comment = '<img src=x onerror="window.__xss=3">'
    pid = insert_proposal(
        api_env.sessions,
        "rag_source",
        query=XSS_QUERY,
        response="<script>window.__xss=4</script>",
        feedback_text=payload_comment,
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live_server, api_env.tokens["reviewer"])
    page.goto(f"{live_server.url}/ui/proposals/{pid}")
    # A reviewer's comment is user text too.
    page.fill("#reject-comment", "<script>window.__xss=5</script>")
    page.click("#reject")
    page.wait_for_url(re.compile(r".*done=rejected"))

    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    examples = page.inner_text("ol.examples")
    assert (
        XSS_QUERY in examples
        and "<script>window.__xss=4</script>" in examples
        and payload_comment in examples
    )
    assert page.get_by_text("<script>window.__xss=5</script>").first.is_visible()
    assert "<script>window.__xss=1</script>" in page.inner_text(
        "dd ul"
    )  # the manifest repeats the query
    assert errors == []
    response = page.goto(f"{live_server.url}/ui/proposals/{pid}")
    csp = response.headers["content-security-policy"]
    # One script file of our own (keyboard shortcuts); no inline script, nothing from elsewhere.
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', html).group(1)


def test_ui_session_csrf_and_roles(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/login"
    forged_login = client.post(
        "/ui/login",
        data={"token": api_env.tokens["viewer"]},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert forged_login.status_code == 403 and "set-cookie" not in forged_login.headers
    bad = client.post("/ui/login", data={"token": "rfy_wrong"})
    assert bad.status_code == 401 and "Unknown or revoked token." in bad.text

    r = client.post("/ui/login", data={"token": api_env.tokens["viewer"]}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    page = client.get(f"/ui/proposals/{pid}")
    assert "Read-only" in page.text and 'action="/ui/proposals/' not in page.text
    denied = client.post(
        f"/ui/proposals/{pid}/approve", data={"csrf": _csrf(page.text), "version": "1"}
    )
    assert denied.status_code == 403

    client.post("/ui/login", data={"token": api_env.tokens["reviewer"]})
    page = client.get(f"/ui/proposals/{pid}")
    forged = client.post(f"/ui/proposals/{pid}/approve", data={"csrf": "0" * 64, "version": "1"})
    assert forged.status_code == 403
    stale = client.post(
        f"/ui/proposals/{pid}/reject", data={"csrf": _csrf(page.text), "version": "7"}
    )
    assert stale.status_code == 409 and "reload it" in stale.text
    bad_edit = client.post(
        f"/ui/proposals/{pid}/edit",
        data={
            "csrf": _csrf(page.text),
            "version": "1",
            "topic": "",
            "must_cover": "",
            "representative_queries": "",
        },
    )
    assert bad_edit.status_code == 422
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).status == "pending"
    assert audit_trail(api_env.sessions, pid) == [
        ("system:proposer", "create", "ok"),
        ("viewer-user", "approve", "refused"),
        ("reviewer-user", "reject", "refused"),
    ]

    assert client.get("/ui/proposals/p_nope").status_code == 404
    assert client.get("/ui/?kind=bogus&offset=-3").status_code == 422
    out = client.post("/ui/logout", data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and 'refinery_token=""' in out.headers["set-cookie"]


def test_a_reviewer_assigns_a_proposal_to_another_reviewer(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    client.post("/ui/login", data={"token": api_env.tokens["reviewer"]})
    page = client.get(f"/ui/proposals/{pid}")
    assert 'id="assign-form"' in page.text
    csrf = _csrf(page.text)

    unknown = client.post(f"/ui/proposals/{pid}/claim", data={"csrf": csrf, "assignee": "nobody"})
    assert unknown.status_code == 422 and "no active reviewer or admin token" in unknown.text
    malformed = client.post(f"/ui/proposals/{pid}/claim", data={"csrf": csrf, "assignee": "<b>"})
    assert malformed.status_code == 422
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).claimed_by is None  # neither changed anything

    done = client.post(f"/ui/proposals/{pid}/claim", data={"csrf": csrf, "assignee": "admin-user"})
    assert done.status_code == 200 and "Assigned" in done.text
    assert '<strong id="claimed-by">admin-user</strong>' in done.text
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).claimed_by == "admin-user"
    assert audit_trail(api_env.sessions, pid)[-1] == ("reviewer-user", "claim", "ok")

    # Over someone's claim the form takes it over (force), as the button does.
    page = client.get(f"/ui/proposals/{pid}")
    assert 'name="force" value="1"' in page.text
    back = client.post(
        f"/ui/proposals/{pid}/claim",
        data={"csrf": _csrf(page.text), "assignee": "reviewer-user", "force": "1"},
    )
    assert back.status_code == 200
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).claimed_by == "reviewer-user"
