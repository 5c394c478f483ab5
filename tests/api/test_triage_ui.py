"""Triage in headless Chromium (Debian's `chromium`, driven by Playwright): bulk approve from the
list, keyboard shortcuts (j/k select, a approves the selected proposal, Enter opens, e edits),
claims, /docs rendered with no request leaving localhost, and a 390 px phone viewport without
horizontal overflow. Plain HTTP: the pages work without the script, and bulk refusals per id.

UPDATE_SCREENSHOTS=1 also writes docs/img/review-triage.png (the list after a bulk approval).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from refinery.store.models import ProposalRow
from tests.api.browser import login, screenshot
from tests.api.helpers import insert_proposal

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _statuses(sessions, ids) -> list[str]:
    with sessions() as s:
        return [s.get(ProposalRow, pid).status for pid in ids]


def _queue(sessions, n: int) -> list[str]:
    """n pending proposals, newest first (the queue's default order)."""
    ids = [
        insert_proposal(
            sessions,
            "rag_source",
            query=f"How long is the warranty on refurbished model {i}?",
            created_at=T0 + timedelta(minutes=i),
        )
        for i in range(n)
    ]
    return ids[::-1]


def test_bulk_approve_and_keyboard_triage(api_env, live_server, browser, tmp_path):
    ids = _queue(api_env.sessions, 5)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())  # the script confirms a single-key decision
    login(page, live_server, api_env.tokens["reviewer"])
    assert page.is_visible("#key-help")  # the script ran and offers its keys

    # Bulk: tick two, one comment, approve.
    page.check(f"input[name=pick][value='{ids[0]}:1']")
    page.check(f"input[name=pick][value='{ids[2]}:1']")
    page.fill("#bulk-comment", "Both topics are covered by the new FAQ")
    page.click("#bulk-approve")
    page.wait_for_selector("#bulk-report")
    assert "Approved 2 of 2." in page.inner_text("#bulk-report")
    assert _statuses(api_env.sessions, ids) == [
        "approved",
        "pending",
        "approved",
        "pending",
        "pending",
    ]
    with api_env.sessions() as s:
        assert (
            s.get(ProposalRow, ids[0]).decision_comment == "Both topics are covered by the new FAQ"
        )
    screenshot(page, tmp_path, "review-triage.png")

    # Keyboard on the pending queue: j j k j selects the second row; a approves it alone.
    page.goto(f"{live_server.url}/ui/?status=pending")
    rows = page.locator("table.queue tbody tr")
    assert rows.count() == 3  # ids[1], ids[3], ids[4]
    for key in "jjkj":
        page.keyboard.press(key)
    assert rows.nth(1).get_attribute("aria-selected") == "true"
    assert rows.nth(0).get_attribute("aria-selected") is None
    page.keyboard.press("x")  # ticks the selected row
    assert page.is_checked(f"input[name=pick][value='{ids[3]}:1']")
    page.keyboard.press("a")
    page.wait_for_selector("#bulk-report")
    assert "Approved 1 of 1." in page.inner_text("#bulk-report")
    assert _statuses(api_env.sessions, [ids[1], ids[3], ids[4]]) == [
        "pending",
        "approved",
        "pending",
    ]

    # Enter opens the selected proposal; e opens its editor; u goes back.
    page.goto(f"{live_server.url}/ui/?status=pending")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/ui/proposals/{ids[1]}")
    assert not page.locator("#edit").evaluate("e => e.open")
    page.keyboard.press("e")
    assert page.locator("#edit").evaluate("e => e.open")
    assert page.evaluate("document.activeElement.id") == "topic"
    page.keyboard.press("u")  # typed into the focused field, not a shortcut
    assert page.url.endswith(f"/ui/proposals/{ids[1]}")
    assert errors == []


def test_claim_in_the_browser_and_the_mine_filter(api_env, live_server, browser):
    ids = _queue(api_env.sessions, 2)
    page = browser.new_page()
    login(page, live_server, api_env.tokens["reviewer"])
    page.goto(f"{live_server.url}/ui/proposals/{ids[1]}")
    assert "Nobody has claimed it." in page.inner_text("#claim")
    page.click("#claim-it")
    page.wait_for_url(re.compile(r".*done=claimed"))
    assert page.inner_text("#claimed-by") == "reviewer-user"
    assert page.inner_text("#version") == "1"
    page.click("nav >> text=Mine")
    page.wait_for_url(re.compile(r".*claim=mine.*"))
    rows = page.locator("table.queue tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == ids[1]
    assert page.inner_text("td.claimed") == "reviewer-user"
    page.click("nav >> text=Unclaimed")
    page.wait_for_url(re.compile(r".*claim=unclaimed.*"))
    assert [r.get_attribute("data-id") for r in rows.all()] == [ids[0]]
    # Another reviewer sees the claim and may take it over.
    other = browser.new_page()
    login(other, live_server, api_env.tokens["admin"])
    other.goto(f"{live_server.url}/ui/proposals/{ids[1]}")
    assert other.inner_text("#claim-it") == "Take over"
    other.click("#claim-it")
    other.wait_for_url(re.compile(r".*done=claimed"))
    assert other.inner_text("#claimed-by") == "admin-user"


def test_docs_render_offline(api_env, live_server, browser):
    page = browser.new_page()
    outside: list[str] = []

    def route(r) -> None:
        if urlsplit(r.request.url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{live_server.url}/docs")
    page.wait_for_selector("#swagger-ui .opblock-summary-path")
    assert page.locator("#swagger-ui .information-container").count() == 1
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/proposals/bulk" in p for p in paths)
    page.goto(f"{live_server.url}/redoc")
    page.wait_for_selector(".redoc-wrap")
    page.locator("h2", has_text="Bulk Decide").first.wait_for()  # rendered from /openapi.json
    assert outside == []


def test_phone_viewport_has_no_horizontal_overflow(api_env, live_server, browser):
    ids = _queue(api_env.sessions, 3)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    login(page, live_server, api_env.tokens["reviewer"])
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    for pid in (ids[0], insert_proposal(api_env.sessions, "fine_tune_dataset")):
        page.goto(f"{live_server.url}/ui/proposals/{pid}")
        assert page.evaluate(overflow) <= 0, pid
    page.goto(f"{live_server.url}/ui/proposals/{insert_proposal(api_env.sessions)}")
    assert page.is_visible("#approve")
    assert page.evaluate(overflow) <= 0


def test_bulk_form_works_without_the_script(api_env, client):
    ids = _queue(api_env.sessions, 2)
    client.post("/ui/login", data={"token": api_env.tokens["reviewer"]})
    page = client.get("/ui/?status=pending")
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
    back = re.search(r'name="back" value="([^"]*)"', page.text).group(1)
    client.post(
        f"/v1/proposals/{ids[1]}/reject",
        json={"expected_version": 1},
        headers=api_env.auth("admin"),
    )
    r = client.post(
        "/ui/bulk",
        data={
            "csrf": csrf,
            "back": back.replace("&amp;", "&"),
            "action": "approve",
            "pick": [f"{ids[0]}:1", f"{ids[1]}:1"],
        },
    )
    assert r.status_code == 200
    assert "Approved 1 of 2. 1 refused:" in r.text and "rejected by admin-user" in r.text
    assert _statuses(api_env.sessions, ids) == ["approved", "rejected"]
    bad = client.post("/ui/bulk", data={"csrf": csrf, "action": "approve", "pick": "nope"})
    assert bad.status_code == 422 and "not a proposal and version" in bad.text
    none = client.post("/ui/bulk", data={"csrf": csrf, "action": "approve"})
    assert none.status_code == 422 and "Select at least one" in none.text
    forged = client.post("/ui/bulk", data={"csrf": "0" * 64, "action": "approve", "pick": ids[0]})
    assert forged.status_code == 403
