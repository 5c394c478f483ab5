"""One winner: two reviewers acting on one proposal at the same moment. 50 proposals, each hit by
an approve and a reject released together (a barrier per pair), over HTTP against a real uvicorn
server, on PostgreSQL and SQLite. Exactly one of each pair wins, the other gets 409, and the audit
log holds both attempts. A third are system prompt edits of one shared prompt, so approvals also
race for the prompt registry's next version (retried, never a 500)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select

from refinery.store.models import AuditEntry, OutboxRow, ProposalRow
from tests.api.helpers import insert_proposal

PAIRS = 50


def test_fifty_concurrent_approve_reject_pairs(api_env, live_server):
    kinds = ["system_prompt_edit", "rag_source", "fine_tune_dataset"]
    ids = [
        insert_proposal(api_env.sessions, kinds[i % 3], register_prompt=i == 0)
        for i in range(PAIRS)
    ]
    barriers = {pid: threading.Barrier(2) for pid in ids}
    headers = api_env.auth("reviewer")

    with httpx.Client(
        base_url=live_server.url, timeout=60, limits=httpx.Limits(max_connections=2 * PAIRS)
    ) as http:

        def act(pid: str, action: str) -> tuple[str, str, int]:
            barriers[pid].wait(timeout=30)
            r = http.post(
                f"/v1/proposals/{pid}/{action}",
                headers=headers,
                json={"expected_version": 1, "comment": f"{action} race"},
            )
            return pid, action, r.status_code

        with ThreadPoolExecutor(max_workers=2 * PAIRS) as pool:
            results = list(
                pool.map(
                    lambda job: act(*job), [(pid, a) for pid in ids for a in ("approve", "reject")]
                )
            )

    by_proposal: dict[str, dict[str, int]] = {}
    for pid, action, code in results:
        by_proposal.setdefault(pid, {})[action] = code
    assert Counter(code for _, _, code in results) == {200: PAIRS, 409: PAIRS}
    winners = {}
    for pid, codes in by_proposal.items():
        assert sorted(codes.values()) == [200, 409], (pid, codes)
        winners[pid] = "approved" if codes["approve"] == 200 else "rejected"

    with api_env.sessions() as s:
        for pid in ids:
            row = s.get(ProposalRow, pid)
            assert row.status == winners[pid] and row.version == 2
            audit = s.scalars(
                select(AuditEntry).where(AuditEntry.proposal_id == pid).order_by(AuditEntry.id)
            ).all()
            decisions = [(a.action, a.outcome, a.to_status) for a in audit if a.action != "create"]
            won = "approve" if winners[pid] == "approved" else "reject"
            lost = "reject" if won == "approve" else "approve"
            assert sorted(decisions) == sorted(
                [
                    (won, "ok", winners[pid]),
                    (lost, "refused", "rejected" if lost == "reject" else "approved"),
                ]
            )
            assert {a.actor for a in audit if a.action != "create"} == {"reviewer-user"}
        approvals = sum(1 for w in winners.values() if w == "approved")
        assert s.scalar(select(func.count()).select_from(OutboxRow)) == approvals
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == PAIRS * 3
