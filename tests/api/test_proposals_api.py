"""The review API end to end through HTTP, on SQLite and PostgreSQL: list, detail, edit, approve,
reject, applied, downloads, prompts, tokens, health, and the error contract
(401/403/404/409/413/422)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from refinery.store.models import AuditEntry, Interaction, OutboxRow, Prompt, ProposalRow
from tests.api.helpers import BASE_PROMPT, INSTRUCTION, insert_proposal


def _history(api_env, proposal_id):
    with api_env.sessions() as s:
        return list(
            s.scalars(
                select(AuditEntry)
                .where(AuditEntry.proposal_id == proposal_id)
                .order_by(AuditEntry.id)
            )
        )


def test_list_filters_and_pagination(api_env, client):
    old = datetime(2026, 1, 1, tzinfo=UTC)
    a = insert_proposal(api_env.sessions, "system_prompt_edit", created_at=old)
    b = insert_proposal(api_env.sessions, "rag_source", app_id="other-app")
    c = insert_proposal(api_env.sessions, "fine_tune_dataset", status="rejected")
    h = api_env.auth("viewer")

    body = client.get("/v1/proposals", headers=h).json()
    assert body["total"] == 3 and [i["id"] for i in body["items"]][-1] == a  # newest first
    assert {
        i["id"] for i in client.get("/v1/proposals?app=other-app", headers=h).json()["items"]
    } == {b}
    assert [
        i["id"]
        for i in client.get("/v1/proposals?kind=fine_tune_dataset", headers=h).json()["items"]
    ] == [c]
    assert {
        i["id"] for i in client.get("/v1/proposals?status=pending", headers=h).json()["items"]
    } == {a, b}
    cluster = client.get(f"/v1/proposals/{b}", headers=h).json()["cluster_id"]
    assert [
        i["id"] for i in client.get(f"/v1/proposals?cluster={cluster}", headers=h).json()["items"]
    ] == [b]
    assert [
        i["id"]
        for i in client.get("/v1/proposals?created_before=2026-02-01", headers=h).json()["items"]
    ] == [a]
    after = client.get(
        "/v1/proposals", params={"created_after": "2026-02-01T00:00:00+01:00"}, headers=h
    ).json()
    assert {i["id"] for i in after["items"]} == {b, c}

    page1 = client.get("/v1/proposals?limit=2&offset=0", headers=h).json()
    page2 = client.get("/v1/proposals?limit=2&offset=2", headers=h).json()
    assert page1["total"] == page2["total"] == 3
    assert len(page1["items"]) == 2 and len(page2["items"]) == 1
    assert {i["id"] for i in page1["items"] + page2["items"]} == {a, b, c}

    bad = client.get("/v1/proposals?kind=nonsense&limit=0", headers=h)
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {
        ("query", "kind"),
        ("query", "limit"),
    }


def test_detail_renders_each_kind_with_evidence_and_history(api_env, client):
    h = api_env.auth("viewer")
    prompt_id = insert_proposal(api_env.sessions, "system_prompt_edit")
    rag_id = insert_proposal(api_env.sessions, "rag_source")
    data_id = insert_proposal(api_env.sessions, "fine_tune_dataset")

    d = client.get(f"/v1/proposals/{prompt_id}", headers=h).json()
    assert d["evidence"]["label"] == "pair / phone / earbuds" and d["evidence"]["size"] == 12
    ex = d["evidence"]["examples"][0]
    assert ex["query"].startswith("How do I pair") and {f["kind"] for f in ex["feedback"]} >= {
        "thumbs_down",
        "comment",
    }
    art = d["artifact"]
    assert art["kind"] == "system_prompt_edit" and art["added"] == 2 and art["removed"] == 0
    assert {"op": "+", "text": "+" + INSTRUCTION} in art["diff_lines"]
    assert [h_["action"] for h_ in d["history"]] == ["create"]
    assert d["trend"] is None  # no dated failures for this cluster

    r = client.get(f"/v1/proposals/{rag_id}", headers=h).json()["artifact"]
    assert (
        r["kind"] == "rag_source"
        and r["topic"] == "refurbished warranty cover"
        and r["gap_signals"]["no_sources"] == 12
    )

    ds = client.get(f"/v1/proposals/{data_id}?max_rows=1", headers=h).json()["artifact"]
    assert ds["rows"] == 2 and ds["role_counts"] == {"assistant": 2, "system": 2, "user": 2}
    assert len(ds["items"]) == 1 and ds["items_truncated"] is True


def test_trend_is_the_stored_one_never_recounted(api_env, client):
    """The trend shown is what the cluster stage stored with the evidence; failures in the
    interactions table are not counted again under another window (issue 11)."""
    pid = insert_proposal(api_env.sessions, "rag_source", cluster_id="c_trend0000000001")
    now = datetime.now(UTC)
    with api_env.sessions.begin() as s:
        for n, days_ago in enumerate([1, 2, 3, 9]):
            s.add(
                Interaction(
                    event_id=f"e{n}",
                    app_id="nimbus-support",
                    interaction_id=f"i{n}",
                    session_id="s",
                    occurred_at=now - timedelta(days=days_ago),
                    query="q",
                    response="r",
                    query_hash="h",
                    failing=True,
                    cluster_id="c_trend0000000001",
                )
            )
    d = client.get(f"/v1/proposals/{pid}", headers=api_env.auth("viewer")).json()
    assert d["trend"] is None and d["figures"]["trend"] is None  # none stored with it


def test_edit_then_approve_a_prompt_edit(api_env, client):
    pid = insert_proposal(api_env.sessions, "system_prompt_edit")
    h = api_env.auth("reviewer")
    new_text = BASE_PROMPT + "\nAnswer in at most three sentences.\n"

    r = client.patch(
        f"/v1/proposals/{pid}",
        headers=h,
        json={"expected_version": 1, "proposed_text": new_text, "comment": "tighter wording"},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["version"] == 2 and d["artifact"]["proposed_text"] == new_text
    assert "+Answer in at most three sentences." in d["artifact"]["diff"]
    edit = _history(api_env, pid)[-1]
    assert (edit.action, edit.outcome, edit.actor, edit.from_status, edit.to_status) == (
        "edit",
        "ok",
        "reviewer-user",
        "pending",
        "pending",
    )
    assert (
        edit.detail.startswith("tighter wording\n")
        and "Answer in at most three sentences." in edit.detail
    )

    stale = client.patch(
        f"/v1/proposals/{pid}", headers=h, json={"expected_version": 1, "proposed_text": "x"}
    )
    assert stale.status_code == 409 and stale.json()["version"] == 2
    assert _history(api_env, pid)[-1].outcome == "refused"

    wrong_field = client.patch(
        f"/v1/proposals/{pid}", headers=h, json={"expected_version": 2, "topic": "x"}
    )
    assert wrong_field.status_code == 422 and wrong_field.json()["detail"][0]["loc"] == [
        "body",
        "topic",
    ]

    # Approving the old version is refused; approving what you read wins, once.
    assert (
        client.post(
            f"/v1/proposals/{pid}/approve", headers=h, json={"expected_version": 1}
        ).status_code
        == 409
    )
    ok = client.post(
        f"/v1/proposals/{pid}/approve",
        headers=h,
        json={"expected_version": 2, "comment": "ship it"},
    )
    assert ok.status_code == 200 and ok.json()["status"] == "approved" and ok.json()["version"] == 3
    again = client.post(f"/v1/proposals/{pid}/approve", headers=h, json={"expected_version": 3})
    assert again.status_code == 409 and "from approved to approved" in again.json()["detail"]

    with api_env.sessions() as s:
        outbox = s.scalars(select(OutboxRow).where(OutboxRow.proposal_id == pid)).all()
        assert (
            len(outbox) == 1
            and outbox[0].payload["proposal"]["artifact"]["proposed_text"] == new_text
        )
    # The approved edit is the prompt's current version; v1 stays readable.
    cur = client.get("/v1/prompts/nimbus-support/support", headers=api_env.auth("viewer")).json()
    assert cur["version"] == "v2" and cur["text"] == new_text and cur["current"] is True
    old = client.get(
        "/v1/prompts/nimbus-support/support?version=v1", headers=api_env.auth("viewer")
    ).json()
    assert old["text"] == BASE_PROMPT and old["current"] is False and old["current_version"] == "v2"

    # approved -> applied once; pending -> applied is refused.
    applied = client.post(f"/v1/proposals/{pid}/applied", headers=h, json={"comment": "deploy 42"})
    assert applied.status_code == 200 and applied.json()["status"] == "applied"
    actions = [(e.action, e.outcome) for e in _history(api_env, pid)]
    assert actions == [
        ("create", "ok"),
        ("edit", "ok"),
        ("edit", "refused"),
        ("approve", "refused"),
        ("approve", "ok"),
        ("approve", "refused"),
        ("applied", "ok"),
    ]
    other = insert_proposal(api_env.sessions, "rag_source")
    refused = client.post(f"/v1/proposals/{other}/applied", headers=h)
    assert refused.status_code == 409 and "from pending to applied" in refused.json()["detail"]
    assert _history(api_env, other)[-1].outcome == "refused"


def test_edit_rag_and_dataset_then_reject(api_env, client):
    h = api_env.auth("reviewer")
    rag = insert_proposal(api_env.sessions, "rag_source")
    r = client.patch(
        f"/v1/proposals/{rag}",
        headers=h,
        json={"expected_version": 1, "topic": "warranty", "must_cover": ["Warranty length"]},
    )
    assert r.status_code == 200 and r.json()["artifact"]["topic"] == "warranty"
    assert r.json()["artifact"]["must_cover"] == ["Warranty length"]

    ds = insert_proposal(api_env.sessions, "fine_tune_dataset")
    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}
    ]
    r = client.patch(f"/v1/proposals/{ds}", headers=h, json={"expected_version": 1, "rows": rows})
    assert r.status_code == 200 and r.json()["artifact"]["rows"] == 1
    bad = client.patch(
        f"/v1/proposals/{ds}",
        headers=h,
        json={"expected_version": 2, "rows": [{"messages": [{"role": "hacker", "content": "x"}]}]},
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "rows"]

    rej = client.post(
        f"/v1/proposals/{ds}/reject", headers=h, json={"expected_version": 2, "comment": "too few"}
    )
    assert (
        rej.status_code == 200
        and rej.json()["status"] == "rejected"
        and rej.json()["decision_comment"] == "too few"
    )
    assert (
        client.patch(
            f"/v1/proposals/{ds}", headers=h, json={"expected_version": 3, "rows": rows}
        ).status_code
        == 409
    )


def test_downloads(api_env, client):
    h = api_env.auth("viewer")
    p = insert_proposal(api_env.sessions, "system_prompt_edit")
    r = insert_proposal(api_env.sessions, "rag_source")
    d = insert_proposal(api_env.sessions, "fine_tune_dataset")
    diff = client.get(f"/v1/proposals/{p}/artifact", headers=h)
    assert diff.headers["content-type"].startswith("text/x-diff")
    assert (
        f'filename="{p}.diff"' in diff.headers["content-disposition"]
        and "+" + INSTRUCTION in diff.text
    )
    manifest = client.get(f"/v1/proposals/{r}/artifact", headers=h)
    assert (
        manifest.json()["topic"] == "refurbished warranty cover"
        and manifest.json()["proposal_id"] == r
    )
    jsonl = client.get(f"/v1/proposals/{d}/artifact", headers=h)
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line)["messages"][1]["role"] for line in jsonl.text.splitlines()] == [
        "user",
        "user",
    ]


def test_error_contract(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    h = api_env.auth("reviewer")
    assert client.get("/v1/proposals").status_code == 401
    assert (
        client.get("/v1/proposals", headers={"Authorization": "Bearer rfy_nope"}).status_code == 401
    )
    assert client.get("/v1/proposals/p_doesnotexist", headers=h).status_code == 404
    assert (
        client.post(
            "/v1/proposals/p_doesnotexist/approve", headers=h, json={"expected_version": 1}
        ).status_code
        == 404
    )
    assert client.get("/v1/proposals/bad%20id!", headers=h).status_code == 422
    missing = client.post(f"/v1/proposals/{pid}/approve", headers=h, json={})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == [
        "body",
        "expected_version",
    ]
    nul = client.post(
        f"/v1/proposals/{pid}/reject",
        headers=h,
        json={"expected_version": 1, "comment": "a\u0000b"},
    )
    assert nul.status_code == 422 and nul.json()["detail"][0]["loc"] == ["body", "comment"]
    huge = client.post(
        f"/v1/proposals/{pid}/reject",
        headers=h,
        content=b'{"expected_version": 1, "comment": "' + b"x" * 70_000 + b'"}',
    )
    assert huge.status_code == 413
    assert client.get("/v1/proposals?offset=99999999999999999999", headers=h).status_code == 422
    assert client.get("/v1/proposals?app=%00", headers=h).status_code == 422
    bad_json = client.post(
        f"/v1/proposals/{pid}/reject",
        headers={**h, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert bad_json.status_code == 422
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).status == "pending"


def test_prompts_registry(api_env, client):
    insert_proposal(api_env.sessions, "system_prompt_edit")  # registers nimbus-support/support v1
    url = "/v1/prompts/nimbus-support/support"
    assert (
        client.put(url, headers=api_env.auth("reviewer"), json={"text": "new"}).status_code == 403
    )
    put = client.put(
        url, headers=api_env.auth("admin"), json={"text": "new\n", "base_version": "v1"}
    )
    assert put.status_code == 200 and put.json()["version"] == "v2"
    stale = client.put(
        url, headers=api_env.auth("admin"), json={"text": "newer\n", "base_version": "v1"}
    )
    assert stale.status_code == 409
    assert client.get(url, headers=api_env.auth("viewer")).json()["text"] == "new\n"
    assert client.get(url + "?version=v9", headers=api_env.auth("viewer")).status_code == 404
    assert (
        client.get("/v1/prompts/nimbus-support/nope", headers=api_env.auth("viewer")).status_code
        == 404
    )
    with api_env.sessions() as s:
        assert [p.source for p in s.scalars(select(Prompt).order_by(Prompt.seq))] == ["cli", "api"]


def test_tokens_lifecycle(api_env, client):
    admin = api_env.auth("admin")
    created = client.post("/v1/tokens", headers=admin, json={"name": "carol", "role": "reviewer"})
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"}).json()
    assert me == {"token_id": token_id, "name": "carol", "role": "reviewer"}
    listed = client.get("/v1/tokens", headers=admin).json()
    assert "token" not in listed[0] and "carol" in {t["name"] for t in listed}
    assert (
        client.post(
            "/v1/tokens", headers=admin, json={"name": "<script>", "role": "admin"}
        ).status_code
        == 422
    )
    assert client.delete(f"/v1/tokens/{token_id}", headers=admin).status_code == 204
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert client.delete("/v1/tokens/t_nope", headers=admin).status_code == 404


def test_health_and_headers(api_env, client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "refinery_review_decisions" in metrics.text
    r = client.get("/v1/proposals", headers=api_env.auth("viewer"))
    assert "script-src" not in r.headers["content-security-policy"]
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert (
        r.headers["x-content-type-options"] == "nosniff"
        and r.headers["cache-control"] == "no-store"
    )
    assert client.get("/openapi.json").json()["info"]["title"] == "llm-refinery review API"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "'sha256-" in docs.headers["content-security-policy"]


def test_token_revoked_elsewhere_stops_within_the_cache_ttl(api_env, make_settings):
    from fastapi.testclient import TestClient

    from refinery.api.app import create_app
    from refinery.api.tokens import Role, create_token, revoke_token

    with api_env.sessions.begin() as s:
        row, secret = create_token(s, name="frank", role=Role.VIEWER)
    headers = {"Authorization": f"Bearer {secret}"}
    for ttl, after_revoke in ((60.0, 200), (0.0, 401)):
        settings = api_env.settings.model_copy(update={"api_token_cache_s": ttl})
        with TestClient(create_app(settings, sessions=api_env.sessions)) as c:
            with api_env.sessions.begin() as s:
                row.revoked_at = None
                s.merge(row)
            assert c.get("/v1/me", headers=headers).status_code == 200
            with api_env.sessions.begin() as s:  # as `refinery tokens revoke` would
                revoke_token(s, row.id)
            assert c.get("/v1/me", headers=headers).status_code == after_revoke
