"""Triage through the API and the CLI, on SQLite and PostgreSQL: a bulk decision is one audited,
versioned decision per proposal (partial failures reported per id: 404, 409 with who decided,
422 naming the field), and claims (claim, assign, take over, release; "mine" / "unclaimed")."""

from __future__ import annotations

import json

from sqlalchemy import select

from refinery.store.models import OutboxRow, ProposalRow
from tests.api.helpers import audit_trail, insert_proposal
from tests.api.test_cli import cli  # noqa: F401  (fixture)


def test_bulk_decides_each_and_reports_partial_failures(api_env, client):
    h = api_env.auth("reviewer")
    ok_a = insert_proposal(api_env.sessions, "rag_source")
    ok_b = insert_proposal(api_env.sessions, "system_prompt_edit")
    decided = insert_proposal(api_env.sessions, "rag_source")
    stale = insert_proposal(api_env.sessions, "rag_source")
    broken = insert_proposal(api_env.sessions, "fine_tune_dataset")
    bad_row = {"messages": [{"role": "user", "content": "only a question"}]}
    with api_env.sessions.begin() as s:
        row = s.get(ProposalRow, broken)
        artifact = {**row.payload["artifact"], "jsonl": json.dumps(bad_row) + "\n"}
        row.payload = {**row.payload, "artifact": artifact}
    first = client.post(
        f"/v1/proposals/{decided}/reject",
        json={"expected_version": 1, "comment": "duplicate of another source"},
        headers=api_env.auth("admin"),
    )
    assert first.status_code == 200

    items = [
        {"id": ok_a, "expected_version": 1},
        {"id": decided, "expected_version": 1},
        {"id": "p_missing", "expected_version": 1},
        {"id": stale, "expected_version": 4},
        {"id": broken, "expected_version": 1},
        {"id": ok_b, "expected_version": 1},
    ]
    r = client.post(
        "/v1/proposals/bulk",
        json={"action": "approve", "comment": "triaged", "proposals": items},
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["action"], body["succeeded"], body["failed"]) == ("approve", 2, 4)
    by_id = {res["id"]: res for res in body["results"]}
    assert [res["id"] for res in body["results"]] == [i["id"] for i in items]
    assert by_id[ok_a]["ok"] and by_id[ok_a]["status_code"] == 200
    assert (by_id[ok_a]["status"], by_id[ok_a]["version"]) == ("approved", 2)
    assert by_id[decided]["status_code"] == 409 and by_id[decided]["status"] == "rejected"
    assert "rejected by admin-user" in by_id[decided]["detail"]
    assert "duplicate of another source" in by_id[decided]["detail"]
    assert by_id["p_missing"]["status_code"] == 404
    assert by_id[stale]["status_code"] == 409 and "not 4" in by_id[stale]["detail"]
    assert by_id[broken]["status_code"] == 422 and by_id[broken]["loc"][:2] == ["rows", 0]

    with api_env.sessions() as s:
        status = {pid: s.get(ProposalRow, pid).status for pid in (ok_a, ok_b, stale, broken)}
        assert status == {ok_a: "approved", ok_b: "approved", stale: "pending", broken: "pending"}
        assert s.get(ProposalRow, ok_a).decision_comment == "triaged"
        outbox = {o.proposal_id for o in s.scalars(select(OutboxRow))}
        assert outbox == {ok_a, ok_b}
    # One audited attempt per proposal, as the single endpoint records it.
    assert audit_trail(api_env.sessions, ok_a)[-1] == ("reviewer-user", "approve", "ok")
    assert audit_trail(api_env.sessions, stale)[-1] == ("reviewer-user", "approve", "refused")
    assert audit_trail(api_env.sessions, broken)[-1] == ("reviewer-user", "approve", "refused")
    assert audit_trail(api_env.sessions, decided)[-1] == ("reviewer-user", "approve", "refused")


def test_bulk_input_and_roles(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    one = [{"id": pid, "expected_version": 1}]
    twice = client.post(
        "/v1/proposals/bulk",
        json={"action": "reject", "proposals": one + one},
        headers=api_env.auth("reviewer"),
    )
    assert twice.status_code == 422
    assert twice.json()["detail"][0]["loc"] == ["body", "proposals", 1, "id"]
    bad_action = client.post(
        "/v1/proposals/bulk",
        json={"action": "merge", "proposals": one},
        headers=api_env.auth("reviewer"),
    )
    assert bad_action.status_code == 422
    assert bad_action.json()["detail"][0]["loc"] == ["body", "action"]
    empty = client.post(
        "/v1/proposals/bulk",
        json={"action": "reject", "proposals": []},
        headers=api_env.auth("reviewer"),
    )
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "proposals"]
    viewer = client.post(
        "/v1/proposals/bulk",
        json={"action": "reject", "proposals": one},
        headers=api_env.auth("viewer"),
    )
    assert viewer.status_code == 403
    assert audit_trail(api_env.sessions, pid)[-1] == ("viewer-user", "reject", "refused")
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).status == "pending"


def test_claims_assign_take_over_release_and_filter(api_env, client):
    mine = insert_proposal(api_env.sessions, "rag_source")
    other = insert_proposal(api_env.sessions, "rag_source")
    free = insert_proposal(api_env.sessions, "rag_source")
    reviewer, admin = api_env.auth("reviewer"), api_env.auth("admin")

    r = client.post(f"/v1/proposals/{mine}/claim", headers=reviewer)
    assert r.status_code == 200
    assert r.json()["claimed_by"] == "reviewer-user" and r.json()["claimed_at"]
    assert r.json()["version"] == 1  # a claim is no edit: open pages stay valid
    # Assign to another reviewer: needs an active reviewer token of that name.
    r = client.post(
        f"/v1/proposals/{other}/claim", json={"assignee": "admin-user"}, headers=reviewer
    )
    assert r.status_code == 200 and r.json()["claimed_by"] == "admin-user"
    r = client.post(f"/v1/proposals/{free}/claim", json={"assignee": "nobody"}, headers=reviewer)
    assert r.status_code == 422 and "nobody" in r.text
    r = client.post(
        f"/v1/proposals/{free}/claim", json={"assignee": "viewer-user"}, headers=reviewer
    )
    assert r.status_code == 422
    # Someone else's claim: 409 naming them, unless forced.
    taken = client.post(f"/v1/proposals/{mine}/claim", headers=admin)
    assert taken.status_code == 409
    assert (
        taken.json()["claimed_by"] == "reviewer-user"
        and "claimed by reviewer-user" in (taken.json()["detail"])
    )
    assert client.delete(f"/v1/proposals/{mine}/claim", headers=admin).status_code == 409
    assert (
        client.post(f"/v1/proposals/{free}/claim", headers=api_env.auth("viewer")).status_code
        == 403
    )

    def ids(query: str, headers) -> set[str]:
        got = client.get(f"/v1/proposals?{query}", headers=headers)
        assert got.status_code == 200, got.text
        return {i["id"] for i in got.json()["items"]}

    assert ids("claim=mine", reviewer) == {mine}
    assert ids("claim=mine&claimed_by=admin-user", reviewer) == {mine}  # mine wins
    assert ids("claim=mine", admin) == {other}
    assert ids("claim=unclaimed", reviewer) == {free}
    assert ids("claimed_by=admin-user", api_env.auth("viewer")) == {other}
    bad = client.get("/v1/proposals?claim=everyone", headers=reviewer)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "claim"]

    forced = client.post(f"/v1/proposals/{mine}/claim", json={"force": True}, headers=admin)
    assert forced.status_code == 200 and forced.json()["claimed_by"] == "admin-user"
    released = client.delete(f"/v1/proposals/{other}/claim", headers=admin)
    assert released.status_code == 200 and released.json()["claimed_by"] is None
    assert ids("claim=unclaimed", reviewer) == {free, other}

    # Only pending proposals are claimed; the claim stays on the record after a decision.
    client.post(f"/v1/proposals/{mine}/reject", json={"expected_version": 1}, headers=admin)
    late = client.post(f"/v1/proposals/{mine}/claim", json={"force": True}, headers=reviewer)
    assert late.status_code == 409 and late.json()["status"] == "rejected"
    assert [e for e in audit_trail(api_env.sessions, mine) if e[1] == "claim"] == [
        ("reviewer-user", "claim", "ok"),
        ("admin-user", "claim", "refused"),
        ("admin-user", "claim", "ok"),
        ("reviewer-user", "claim", "refused"),
    ]
    detail = client.get(f"/v1/proposals/{mine}/history", headers=reviewer).json()
    assert any(h["detail"] == "claimed by admin-user (was reviewer-user)" for h in detail)


def test_cli_claim_and_list_mine(api_env, cli):  # noqa: F811
    pid = insert_proposal(api_env.sessions, "rag_source")
    other = insert_proposal(api_env.sessions, "rag_source")
    code, out, _ = cli("review", "claim", pid, "--actor", "alice")
    assert code == 0 and "claimed by alice" in out
    code, _, err = cli("review", "claim", pid, "--actor", "bob")
    assert code == 3 and "claimed by alice" in err
    code, out, _ = cli("review", "list", "--mine", "--actor", "alice")
    assert code == 0 and pid in out and other not in out
    code, out, _ = cli("review", "list", "--unclaimed")
    assert code == 0 and other in out and pid not in out
    code, out, _ = cli("review", "claim", pid, "--actor", "bob", "--force")
    assert code == 0 and "claimed by bob" in out
    code, out, _ = cli("review", "claim", pid, "--actor", "bob", "--release")
    assert code == 0
    with api_env.sessions() as s:
        assert s.get(ProposalRow, pid).claimed_by is None
    code, _, err = cli("review", "list", "--mine")
    assert code == 2 and "--actor" in err
