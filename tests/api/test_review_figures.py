"""Issue 11: what a reviewer reads agrees with itself. Every proposal kind, single and merged,
rendered by the web UI (TestClient), the JSON API and the CLI shows the trend, growth, size and
region rate the cluster stage stored, each once; edits and approvals keep the artifact valid;
conflicts say who decided; list filters, sorts, search and offsets behave."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from refinery.review.figures import evidence_figures
from refinery.review.render import proposal_text
from refinery.review.transitions import record_audit
from refinery.store.models import AuditEntry, OutboxRow, ProposalRow
from schemas.artifacts import prompt_diff
from schemas.proposals import Evidence, EvidencePart, TrendBucket
from tests.api.helpers import BASE_PROMPT, insert_proposal

DAY = 86400.0
LONG_RESPONSE = "Great question! " + "Let me walk you through every single step. " * 60


def _buckets(counts: list[int]) -> list[dict]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=len(counts) - 1)
    return [
        {"start": (start + timedelta(days=i)).isoformat(), "count": c} for i, c in enumerate(counts)
    ]


COUNTS_A = [0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 6, 8, 9, 0]  # all failures before today: growth -100%
COUNTS_B = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 4, 6]


def _with_figures(sessions, proposal_id: str, *, merged: bool) -> None:
    """Give a proposal the evidence the cluster stage stores: trend, growth, emerging, region
    rate; duplicated feedback and a long response on its first example."""
    with sessions.begin() as s:
        row = s.get(ProposalRow, proposal_id)
        payload = json.loads(json.dumps(row.payload))
        ev = payload["evidence"]
        ev["examples"][0]["response"] = LONG_RESPONSE
        ev["examples"][0]["feedback"] = [
            {"kind": "thumbs_down", "value": None, "text": None},
            {"kind": "thumbs_down", "value": None, "text": None},
            {"kind": "comment", "value": None, "text": "Too long."},
        ]
        ev.update(
            trend=_buckets(COUNTS_A),
            trend_bucket_s=DAY,
            trend_baseline_buckets=7,
            growth_rate=-1.0,
            emerging=True,
            emerging_reason="rising",
            region_failure_rate=0.42,
            size=30,
        )
        if merged:
            parts = [
                EvidencePart(
                    cluster_id=row.cluster_id,
                    label="pair / phone / earbuds",
                    size=30,
                    trend=[TrendBucket.model_validate(b) for b in _buckets(COUNTS_A)],
                    growth_rate=-1.0,
                    emerging=True,
                    emerging_reason="rising",
                    region_failure_rate=0.42,
                ),
                EvidencePart(
                    cluster_id="c_other0000000001",
                    label="speaker / pair / bluetooth",
                    size=16,
                    trend=[TrendBucket.model_validate(b) for b in _buckets(COUNTS_B)],
                    growth_rate=4.0,
                    emerging=False,
                    region_failure_rate=0.2,
                ),
            ]
            ev["parts"] = [p.model_dump(mode="json") for p in parts]
            ev["related_cluster_ids"] = ["c_other0000000001"]
            ev["size"] = 46
            ev["region_failure_rate"] = None
        row.payload = payload


def _login(client, api_env, role: str = "reviewer") -> None:
    """Log in as a person does: the server sets a session cookie (never the token itself)."""
    r = client.post("/ui/login", data={"token": api_env.tokens[role]}, follow_redirects=False)
    assert r.status_code == 303, r.text


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("kind", ["system_prompt_edit", "rag_source", "fine_tune_dataset"])
def test_figures_agree_in_ui_api_and_cli(api_env, client, kind, merged):
    pid = insert_proposal(api_env.sessions, kind)
    _with_figures(api_env.sessions, pid, merged=merged)
    d = client.get(f"/v1/proposals/{pid}", headers=api_env.auth("viewer")).json()
    fig, trend = d["figures"], d["trend"]

    # API: one trend, the stored one, agreeing with its own buckets.
    assert trend == fig["trend"]
    counts = [a + b for a, b in zip(COUNTS_A, COUNTS_B, strict=True)] if merged else COUNTS_A
    assert trend["counts"] == counts and trend["total"] == sum(counts)
    assert trend["current"] == counts[-1] and trend["bucket"] == "day"
    assert trend["baseline_mean"] == pytest.approx(sum(counts[-8:-1]) / 7, abs=0.01)
    expected_growth = (counts[-1] - sum(counts[-8:-1]) / 7) / max(sum(counts[-8:-1]) / 7, 1)
    assert trend["growth_rate"] == pytest.approx(expected_growth, abs=0.01)
    direction = (
        "flat" if abs(expected_growth) <= 0.2 else "rising" if expected_growth > 0 else "falling"
    )
    assert trend["direction"] == direction and trend["emerging"] is True
    if not merged:
        assert trend["growth_rate"] == d["evidence"]["growth_rate"] == -1.0
    # Size: the parts' sum; trend of the whole: the parts' sums bucket by bucket.
    if merged:
        parts = fig["parts"]
        assert [p["size"] for p in parts] == [30, 16] and fig["size"] == 46 == d["size"]
        assert [sum(p["trend"]["counts"][i] for p in parts) for i in range(14)] == counts
        assert fig["region_failure_rate"] is None and parts[0]["region_failure_rate"] == 0.42
    else:
        assert fig["size"] == d["size"] == 30 and fig["region_failure_rate"] == 0.42
    # Feedback chips once per kind, with a count.
    chips = fig["examples"][0]["feedback"]
    assert {(c["kind"], c["count"]) for c in chips} == {("thumbs_down", 2), ("comment", 1)}
    assert fig["examples"][0]["reasons"] == []  # "thumbs_down" is already a chip

    # UI: the same sentence, the same numbers, nothing contradicting them.
    _login(client, api_env)
    page = client.get(f"/ui/proposals/{pid}")
    assert page.status_code == 200
    text = _text(page.text)
    assert trend["summary"] in text
    assert not re.search(r"\d+ in the last 7 days|\d+ in the 7 before", text)  # no second trend
    assert f"{fig['size']} failing interactions when drafted" in text
    assert "cluster now" not in text
    size_dd = re.search(r'<dd id="size">(.*?)</dd>', page.text, re.S)
    assert size_dd and f"<strong>{fig['size']}</strong>" in size_dd.group(1)
    if merged:
        table = re.search(r'<table class="parts" id="parts">(.*?)</table>', page.text, re.S)
        assert table
        cells = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', table.group(1))]
        assert cells == [30, 16, 46]  # each part, then the total: it is their sum
        assert "speaker / pair / bluetooth" in table.group(1)
    else:
        assert "42% of sampled interactions" in text
    # The trend chart: one bar per bucket, server-rendered, no script.
    svg = re.search(r'<svg class="trend-chart".*?</svg>', page.text, re.S)
    assert svg and svg.group(0).count("<rect") == 14 and "<script" not in svg.group(0)
    # The one script is the keyboard-shortcut file, an enhancement: nothing inline.
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/static/review.js" defer>']
    # Each example: thumbs_down once (x2), the long response folded behind <details>.
    example = re.search(r'<li class="example">(.*?)</li>\s*\n', page.text, re.S)
    assert example
    assert example.group(1).count(">thumbs_down") == 1 and "×2" in example.group(1)
    assert "show more" in page.text
    before_details = page.text.split('<details class="more">')[0]
    assert html.escape(LONG_RESPONSE.strip()) not in before_details  # only the preview is open

    # CLI: the same sentence.
    with api_env.sessions() as s:
        row = s.get(ProposalRow, pid)
        cli_text = proposal_text(row, [], api_env.settings)
    assert trend["summary"] in cli_text
    assert cli_text.count("thumbs_down x2") == 1
    assert LONG_RESPONSE not in cli_text


def test_an_old_proposal_takes_the_configured_baseline_in_every_view(api_env):
    """Evidence drafted before it recorded its own trend_baseline_buckets is read with
    TREND_BASELINE_BUCKETS, not the setting's default: GET, the approve response, the web UI and
    the CLI show the same baseline."""
    from fastapi.testclient import TestClient

    from refinery.api.app import create_app

    settings = api_env.settings.model_copy(update={"trend_baseline_buckets": 3})
    pid = insert_proposal(api_env.sessions, "rag_source")
    with api_env.sessions.begin() as s:
        row = s.get(ProposalRow, pid)
        payload = json.loads(json.dumps(row.payload))
        payload["evidence"].pop("trend_baseline_buckets", None)  # stored before it was kept
        payload["evidence"].update(trend=_buckets(COUNTS_B), trend_bucket_s=DAY, growth_rate=None)
        row.payload = payload
    baseline = COUNTS_B[-4:-1]  # the 3 buckets before the newest, not the default 7
    mean = sum(baseline) / 3
    with TestClient(create_app(settings, sessions=api_env.sessions)) as client:
        got = client.get(f"/v1/proposals/{pid}", headers=api_env.auth("viewer")).json()
        trend = got["trend"]
        assert trend["baseline_buckets"] == 3
        assert trend["baseline_mean"] == pytest.approx(mean, abs=0.01)
        assert trend["growth_rate"] == pytest.approx((COUNTS_B[-1] - mean) / mean, abs=0.01)

        approved = client.post(
            f"/v1/proposals/{pid}/approve",
            headers=api_env.auth("reviewer"),
            json={"expected_version": 1},
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        assert approved.json()["trend"] == trend and approved.json()["figures"] == got["figures"]

        _login(client, api_env)
        page = client.get(f"/ui/proposals/{pid}")
        assert page.status_code == 200 and trend["summary"] in _text(page.text)
    with api_env.sessions() as s:
        cli_text = proposal_text(s.get(ProposalRow, pid), [], settings)
    assert trend["summary"] in cli_text and "over the 3 before" in cli_text


def test_merged_growth_is_of_the_whole_not_of_the_anchor():
    ev = Evidence(
        cluster_id="c1",
        label="a / b",
        keywords=["a"],
        size=3,
        examples=[],
        trend_bucket_s=DAY,
        trend_baseline_buckets=2,
        growth_rate=-1.0,  # the anchor's, stored before parts kept their own
        parts=[
            EvidencePart(
                cluster_id="c1",
                label="a",
                size=1,
                trend=[TrendBucket.model_validate(b) for b in _buckets([1, 0, 0])],
            ),
            EvidencePart(
                cluster_id="c2",
                label="b",
                size=2,
                trend=[TrendBucket.model_validate(b) for b in _buckets([0, 0, 2])],
            ),
        ],
    )
    fig = evidence_figures(ev, default_baseline_buckets=7)
    assert fig.trend is not None and fig.trend.counts == [1, 0, 2]
    assert fig.trend.growth_rate == pytest.approx((2 - 0.5) / 1)  # of [1, 0] -> 2
    assert fig.size == 3


# --- edits that stay valid -------------------------------------------------------------------


def _row(messages):
    return {"messages": messages}


def test_dataset_edit_is_checked_as_openai_rows_and_recounts_the_title(api_env, client):
    pid = insert_proposal(api_env.sessions, "fine_tune_dataset")
    h = api_env.auth("reviewer")
    good = _row([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}])
    no_answer = _row([{"role": "system", "content": "s"}, {"role": "user", "content": "q2"}])
    r = client.patch(
        f"/v1/proposals/{pid}", json={"expected_version": 1, "rows": [good, no_answer]}, headers=h
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "rows", 1, "messages"] and "assistant" in err["msg"]
    empty = _row([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}])
    r = client.patch(
        f"/v1/proposals/{pid}", json={"expected_version": 1, "rows": [good, empty]}, headers=h
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "rows", 1, "messages", 1, "content"]
    # Nothing was stored by a refused edit.
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).version == 1

    r = client.patch(
        f"/v1/proposals/{pid}",
        json={"expected_version": 1, "rows": [good, good, good]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["artifact"]["rows"] == 3 and body["title"].startswith("Fine-tune on 3 ")
    with api_env.sessions() as s:
        row = s.get(ProposalRow, pid)
        assert row.title == row.payload["title"] == body["title"]


def test_prompt_edit_recomputes_instruction_diff_and_title(api_env, client):
    pid = insert_proposal(api_env.sessions, "system_prompt_edit")
    new_text = BASE_PROMPT + "\nAnswer in at most three sentences.\n"
    r = client.patch(
        f"/v1/proposals/{pid}",
        json={"expected_version": 1, "proposed_text": new_text},
        headers=api_env.auth("reviewer"),
    )
    assert r.status_code == 200, r.text
    art = r.json()["artifact"]
    assert art["instruction"] == "Answer in at most three sentences."
    assert art["diff"] == prompt_diff("support", "v1", BASE_PROMPT, new_text)
    assert "Answer in at most three sentences." in r.json()["title"]


def test_a_stored_invalid_artifact_cannot_be_approved(api_env, client):
    pid = insert_proposal(api_env.sessions, "fine_tune_dataset")
    bad = json.dumps(_row([{"role": "user", "content": "q"}])) + "\n"
    with api_env.sessions.begin() as s:
        row = s.get(ProposalRow, pid)
        row.payload = {**row.payload, "artifact": {**row.payload["artifact"], "jsonl": bad}}
    r = client.post(
        f"/v1/proposals/{pid}/approve",
        json={"expected_version": 1},
        headers=api_env.auth("reviewer"),
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:3] == ["body", "rows", 0]
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).status == "pending"
        assert s.scalars(select(OutboxRow)).all() == []
        last = s.scalars(
            select(AuditEntry).where(AuditEntry.proposal_id == pid).order_by(AuditEntry.id.desc())
        ).first()
        assert last is not None and (last.action, last.outcome) == ("approve", "refused")


def test_ui_edit_of_a_dataset_names_the_row(api_env, client):
    pid = insert_proposal(api_env.sessions, "fine_tune_dataset")
    _login(client, api_env)
    page = client.get(f"/ui/proposals/{pid}").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    rows = json.dumps(_row([{"role": "user", "content": "only a question"}]))
    r = client.post(
        f"/ui/proposals/{pid}/edit",
        data={"csrf": csrf, "version": "1", "rows": rows},
        follow_redirects=False,
    )
    assert r.status_code == 422 and "row 1 has no assistant message" in _text(r.text)


# --- conflicts and lists -----------------------------------------------------------------------


def test_conflict_says_who_decided_when_and_what(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    h = api_env.auth("reviewer")
    ok = client.post(
        f"/v1/proposals/{pid}/reject",
        json={"expected_version": 1, "comment": "covered by the FAQ"},
        headers=h,
    )
    assert ok.status_code == 200
    r = client.post(f"/v1/proposals/{pid}/approve", json={"expected_version": 1}, headers=h)
    assert r.status_code == 409
    body = r.json()
    assert body["status"] == "rejected" and body["version"] == 2
    assert body["decided_by"] == "reviewer-user" and body["decided_at"]
    assert body["decision_comment"] == "covered by the FAQ"
    assert (
        "rejected by reviewer-user at" in body["detail"] and "covered by the FAQ" in body["detail"]
    )


def _insert_at(api_env, at: datetime, **kw) -> str:
    return insert_proposal(api_env.sessions, kw.pop("kind", "rag_source"), created_at=at, **kw)


def test_list_dates_offsets_sort_and_search(api_env, client):
    h = api_env.auth("viewer")
    late = _insert_at(api_env, datetime(2026, 2, 1, 23, 30, tzinfo=UTC))
    early = _insert_at(
        api_env,
        datetime(2026, 1, 15, tzinfo=UTC),
        kind="system_prompt_edit",
        query="Where is my parcel from Zürich?",
    )
    big = _insert_at(api_env, datetime(2026, 1, 20, tzinfo=UTC), kind="fine_tune_dataset")
    with api_env.sessions.begin() as s:
        row = s.get(ProposalRow, big)
        row.payload = {**row.payload, "evidence": {**row.payload["evidence"], "size": 99}}
        record_audit(s, big, "t", "note", None, None, "ok", None)

    def ids(**params):
        r = client.get("/v1/proposals", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]], r.json()

    # A date alone includes its whole day, at either end.
    assert ids(created_before="2026-02-01")[0] == [late, big, early]
    assert ids(created_after="2026-02-01")[0] == [late]
    assert ids(created_before="2026-01-31")[0] == [big, early]
    # Past the end: the last page, with the offset used.
    got, body = ids(limit=2, offset=50)
    assert got == [early] and body["offset"] == 2 and body["total"] == 3
    # Sorts and search.
    assert ids(sort="size")[0][0] == big
    assert ids(sort="oldest")[0] == [early, big, late]
    assert ids(search="zürich")[0] == [early]  # an example query, non-ASCII
    assert ids(search="PHONE / EARBUDS")[0] == [late, big, early]  # the cluster label
    assert ids(search="Fine-tune")[0] == [big]  # the title
    assert ids(search="100%_")[0] == []
    assert client.get("/v1/proposals?sort=bogus", headers=h).status_code == 422

    _login(client, api_env, "viewer")
    page = client.get("/ui/", params={"created_before": "2026-02-01", "offset": "999"})
    assert page.status_code == 200
    assert all(p in page.text for p in (late, big, early))
    page = client.get("/ui/", params={"search": "zürich", "sort": "size"})
    assert early in page.text and late not in page.text


def test_cli_list_offset_sort_search_and_choices(api_env, monkeypatch, capsys):
    from refinery.cli import main
    from refinery.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", api_env.settings.database_url)
    get_settings.cache_clear()
    try:
        a = insert_proposal(api_env.sessions, "rag_source", query="Warranty on a refurbished?")
        b = insert_proposal(api_env.sessions, "fine_tune_dataset")
        assert main(["review", "list", "--json", "--offset", "40", "--limit", "1"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["offset"] == 1 and len(out["items"]) == 1
        assert main(["review", "list", "--json", "--search", "REFURBISHED"]) == 0
        assert [i["id"] for i in json.loads(capsys.readouterr().out)["items"]] == [a]
        assert main(["review", "list", "--json", "--sort", "oldest"]) == 0
        assert [i["id"] for i in json.loads(capsys.readouterr().out)["items"]] == [a, b]
        with pytest.raises(SystemExit):
            main(["review", "list", "--kind", "nonsense"])
        assert "invalid choice" in capsys.readouterr().err
        # A refused decision says who decided.
        assert main(["review", "reject", b, "--actor", "alice", "--comment", "dup"]) == 0
        capsys.readouterr()
        assert main(["review", "approve", b, "--actor", "bob"]) == 3
        err = capsys.readouterr().err
        assert "rejected by alice at" in err and "dup" in err
    finally:
        get_settings.cache_clear()


def test_ui_approve_and_next_goes_to_the_next_pending(api_env, client):
    older = _insert_at(api_env, datetime(2026, 1, 1, tzinfo=UTC))
    newer = _insert_at(api_env, datetime(2026, 1, 2, tzinfo=UTC))
    _login(client, api_env)
    page = client.get(f"/ui/proposals/{newer}").text
    assert 'id="approve-next"' in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    r = client.post(
        f"/ui/proposals/{newer}/approve",
        data={"csrf": csrf, "version": "1", "next": "1"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/ui/proposals/{older}?done=approved"
    with api_env.sessions() as s:
        assert s.get(ProposalRow, newer).status == "approved"
