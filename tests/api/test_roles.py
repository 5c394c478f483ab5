"""Role x endpoint matrix: no caller gets a 2xx from an endpoint above its role. No token or a bad
one: 401; a role too low: 403 (and, on a proposal, an audited refusal with no state change); a role
high enough: allowed. The matrix must list every /v1 route, so a new endpoint cannot skip it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from refinery.api.app import create_app
from refinery.store.models import AuditEntry, ProposalRow
from tests.api.helpers import insert_proposal

RANK = {"viewer": 0, "reviewer": 1, "admin": 2}

# (method, path template, least role, JSON body or None)
MATRIX = [
    ("GET", "/v1/proposals", "viewer", None),
    ("GET", "/v1/proposals/{proposal_id}", "viewer", None),
    ("GET", "/v1/proposals/{proposal_id}/history", "viewer", None),
    ("GET", "/v1/proposals/{proposal_id}/artifact", "viewer", None),
    (
        "PATCH",
        "/v1/proposals/{proposal_id}",
        "reviewer",
        {"expected_version": 1, "topic": "edited topic"},
    ),
    ("POST", "/v1/proposals/{proposal_id}/approve", "reviewer", {"expected_version": 1}),
    ("POST", "/v1/proposals/{proposal_id}/reject", "reviewer", {"expected_version": 1}),
    ("POST", "/v1/proposals/{proposal_id}/applied", "reviewer", {}),
    ("POST", "/v1/proposals/{proposal_id}/claim", "reviewer", {}),
    ("DELETE", "/v1/proposals/{proposal_id}/claim", "reviewer", None),
    # Names no stored proposal: allowed is 200 with a 404 per id; the refusals audited on real
    # proposals are in tests/api/test_triage_api.py.
    (
        "POST",
        "/v1/proposals/bulk",
        "reviewer",
        {"action": "reject", "proposals": [{"id": "p_matrix", "expected_version": 1}]},
    ),
    ("GET", "/v1/proposals/{proposal_id}/export", "viewer", None),
    ("GET", "/v1/apps/{app_id}/impact", "viewer", None),
    ("GET", "/v1/apps/{app_id}/corpus", "viewer", None),
    (
        "POST",
        "/v1/apps/{app_id}/corpus",
        "reviewer",
        {"documents": [{"id": "kb-matrix", "text": "# Warranty\n\nRefurbished: one year."}]},
    ),
    ("GET", "/v1/prompts/{app_id}/{name}", "viewer", None),
    ("PUT", "/v1/prompts/{app_id}/{name}", "admin", {"text": "admin wrote this\n"}),
    ("GET", "/v1/me", "viewer", None),
    ("GET", "/v1/tokens", "admin", None),
    ("POST", "/v1/tokens", "admin", {"name": "new-token", "role": "viewer"}),
    ("DELETE", "/v1/tokens/{token_id}", "admin", None),
]


def test_matrix_lists_every_v1_route(api_env):
    paths = create_app(api_env.settings, sessions=api_env.sessions).openapi()["paths"]
    routes = {
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/v1/")
        for method in ops
    }
    # The event collector authenticates producers with per-app keys, not reviewers' tokens; its
    # own tests (tests/integration/test_collector.py) cover its 401/403.
    routes.discard(("POST", "/v1/events"))
    routes.discard(("POST", "/v1/traces"))  # OTLP/HTTP: the collector's keys too
    assert routes == {(m, p) for m, p, _, _ in MATRIX}


def _fill(api_env, path: str, needs_approved: bool) -> str:
    """A fresh target per request, so an allowed call can succeed."""
    status = "approved" if needs_approved else "pending"
    kind = "fine_tune_dataset" if path.endswith("/export") else "rag_source"  # what exports
    pid = insert_proposal(api_env.sessions, kind, status=status)
    token_id = "t_missing"
    if "{token_id}" in path:
        from refinery.api.tokens import Role, create_token

        with api_env.sessions.begin() as s:
            token_id = create_token(s, name="victim", role=Role.VIEWER)[0].id
    insert_proposal(api_env.sessions, "system_prompt_edit")  # registers nimbus-support/support
    return path.format(proposal_id=pid, app_id="nimbus-support", name="support", token_id=token_id)


@pytest.mark.parametrize(
    ("method", "path", "least", "body"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_role_matrix(api_env, client, method, path, least, body):
    callers = {
        "no token": {},
        "bad token": {"Authorization": "Bearer rfy_not-a-real-token"},
        "not bearer": {"Authorization": f"Basic {api_env.tokens['admin']}"},
        **{role: api_env.auth(role) for role in RANK},
    }
    for caller, headers in callers.items():
        url = _fill(api_env, path, needs_approved=path.endswith("/applied"))
        r = client.request(method, url, headers=headers, json=body)
        if caller not in RANK:
            assert r.status_code == 401, (caller, r.status_code, r.text)
        elif RANK[caller] < RANK[least]:
            assert r.status_code == 403, (caller, r.status_code, r.text)
            if "/v1/proposals/" in url and not url.endswith("/bulk"):
                pid = url.split("/")[3]
                with api_env.sessions() as s:
                    row = s.get(ProposalRow, pid)
                    assert row.version == 1  # nothing changed
                    last = s.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.proposal_id == pid)
                        .order_by(AuditEntry.id.desc())
                    ).first()
                    assert (last.outcome, last.actor) == ("refused", f"{caller}-user")
        else:
            assert 200 <= r.status_code < 300, (caller, r.status_code, r.text)
