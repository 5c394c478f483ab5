"""An app's failure picture: the JSON (`/v1/apps/{app_id}/impact`) and the page
(`/ui/apps/{app_id}`) in headless Chromium, after an impact pass over synthetic traffic."""

from __future__ import annotations

from datetime import timedelta

import pytest

from refinery.impact.service import refresh_impacts
from refinery.store.models import utcnow
from tests.api.browser import login
from tests.impact.helpers import APP, TopicEmbedder, add_cluster, add_traffic, approved_proposal


def _seed(env) -> dict[str, str]:  # type: ignore[no-untyped-def]
    sessions = env.sessions
    now = utcnow()
    edit = approved_proposal(sessions, "system_prompt_edit", add_cluster(sessions, "refund"))
    dataset = approved_proposal(sessions, "fine_tune_dataset", add_cluster(sessions, "warranty"))
    add_traffic(sessions, topic_word="refund", total=60, failing=45, start=now - timedelta(days=2))
    add_traffic(sessions, topic_word="shipping", total=40, failing=1, start=now - timedelta(days=1))
    add_traffic(
        sessions, topic_word="refund", total=60, failing=5, start=now - timedelta(hours=2),
        prompt_version="v2",
    )  # fmt: skip
    refresh_impacts(sessions, env.settings, TopicEmbedder())
    return {"edit": edit, "dataset": dataset}


def test_impact_json(api_env, client) -> None:
    ids = _seed(api_env)
    assert client.get(f"/v1/apps/{APP}/impact").status_code == 401
    response = client.get(f"/v1/apps/{APP}/impact", headers=api_env.auth("viewer"))
    assert response.status_code == 200
    body = response.json()
    assert sum(d["total"] for d in body["per_day"]) == 160
    assert sum(d["failing"] for d in body["per_day"]) == 51
    assert {
        (v["prompt_version"], v["failing"], v["total"]) for v in body["per_prompt_version"]
    } == {
        ("v1", 46, 100),
        ("v2", 5, 60),
    }
    by_id = {r["proposal_id"]: r for r in body["refinements"]}
    edit = by_id[ids["edit"]]
    assert (edit["verdict"], edit["applied_how"], edit["applied_version"]) == (
        "improved", "inferred", "v2",
    )  # fmt: skip
    assert edit["before"] == {"failing": 45, "total": 60}
    assert edit["after"] == {"failing": 5, "total": 60}
    assert edit["diff_interval"][1] < 0
    assert by_id[ids["dataset"]]["verdict"] == "not_applied"
    assert by_id[ids["dataset"]]["applied_at"] is None
    # Another app has no figures, and a malformed id is refused.
    other = client.get("/v1/apps/other-app/impact", headers=api_env.auth("viewer")).json()
    assert other["per_day"] == [] and other["refinements"] == []
    assert client.get("/v1/apps/Bad App/impact", headers=api_env.auth("viewer")).status_code == 422


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_app_page_shows_the_chart_and_verdicts(api_env, live_server, browser) -> None:  # noqa: F811
    _seed(api_env)
    page = browser.new_page()
    login(page, live_server, api_env.tokens["viewer"])
    page.goto(f"{live_server.url}/ui/apps/{APP}")
    chart = page.locator("svg.impact-chart")
    assert chart.count() == 1
    assert page.locator("svg.impact-chart circle.day").count() >= 2
    assert page.locator("svg.impact-chart g.verdict-improved").count() == 1
    verdicts = page.locator("table.refinements .verdict").all_inner_texts()
    assert sorted(verdicts) == ["improved", "not applied"]
    assert "v2" in page.locator("table.versions").inner_text()
