"""Proposals for API tests, inserted as the proposer would leave them (row + "create" audit entry),
so that tests need neither the demo database nor the ML pipeline."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from refinery.review.edits import prompt_diff
from refinery.review.transitions import record_audit
from refinery.store.models import AuditEntry, ProposalRow
from refinery.store.prompts import set_prompt
from schemas.proposals import (
    Evidence,
    EvidenceExample,
    FeedbackSummary,
    FineTuneDataset,
    FineTuneDatasetProposal,
    RagSourceManifest,
    RagSourceProposal,
    SystemPromptEdit,
    SystemPromptEditProposal,
)

BASE_PROMPT = "You are the support assistant of Nimbus Gadgets.\nAnswer questions about orders.\n"
INSTRUCTION = "Keep answers brief: lead with the answer in one or two sentences."


def _evidence(cluster_id: str, query: str, response: str, feedback_text: str | None) -> Evidence:
    return Evidence(
        cluster_id=cluster_id,
        label="pair / phone / earbuds",
        keywords=["pair", "phone", "earbuds"],
        size=12,
        signal_counts={"thumbs_down": 12, "comment": 5},
        examples=[
            EvidenceExample(
                interaction_id=f"i_{uuid.uuid4().hex[:8]}",
                query=query,
                response=response,
                feedback=[
                    FeedbackSummary(kind="thumbs_down"),
                    FeedbackSummary(kind="comment", text=feedback_text),
                    FeedbackSummary(kind="rating", value=2),
                ],
                failure_reasons=["thumbs_down"],
            ),
            EvidenceExample(
                interaction_id=f"i_{uuid.uuid4().hex[:8]}",
                query="How do I pair the smart speaker with my phone?",
                response="Great question! Step 1: read the manual in full.",
                feedback=[FeedbackSummary(kind="thumbs_down")],
                failure_reasons=["thumbs_down"],
            ),
        ],
    )


def insert_proposal(
    sessions: sessionmaker[Session],
    kind: str = "system_prompt_edit",
    *,
    app_id: str = "nimbus-support",
    cluster_id: str | None = None,
    query: str = "How do I pair the wireless earbuds with my phone?",
    response: str = "Great question! Setting up takes some care. Step 1: read the manual.",
    feedback_text: str | None = "This answer is too long and rambles.",
    status: str = "pending",
    created_at: datetime | None = None,
    register_prompt: bool = True,
) -> str:
    """Insert one proposal of `kind`; returns its id. A system prompt edit also registers its base
    prompt (v1), as ingest would have."""
    cluster_id = cluster_id or f"c_{uuid.uuid4().hex[:16]}"
    evidence = _evidence(cluster_id, query, response, feedback_text)
    proposal: SystemPromptEditProposal | RagSourceProposal | FineTuneDatasetProposal
    if kind == "system_prompt_edit":
        proposed = BASE_PROMPT + "\n" + INSTRUCTION + "\n"
        proposal = SystemPromptEditProposal(
            app_id=app_id,
            cluster_id=cluster_id,
            title="System prompt: address “length” complaints on “pair phone earbuds”",
            rationale="12 of 12 failing interactions carry feedback about length.",
            evidence=evidence,
            artifact=SystemPromptEdit(
                prompt_name="support",
                base_version="v1",
                base_text=BASE_PROMPT,
                proposed_text=proposed,
                instruction=INSTRUCTION,
                diff=prompt_diff("support", "v1", BASE_PROMPT, proposed),
            ),
        )
    elif kind == "rag_source":
        proposal = RagSourceProposal(
            app_id=app_id,
            cluster_id=cluster_id,
            title="Add a knowledge source on “refurbished warranty cover”",
            rationale="12 of 12 failing interactions had no retrieved sources.",
            evidence=evidence,
            artifact=RagSourceManifest(
                topic="refurbished warranty cover",
                representative_queries=[query, "Is there a warranty on a refurbished phone?"],
                must_cover=[
                    f"Answer: {query}",
                    "Authoritative, current facts on: refurbished, warranty",
                ],
                gap_signals={"no_sources": 12, "low_retrieval_score": 0, "admits_not_knowing": 9},
            ),
        )
    else:
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": BASE_PROMPT},
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                    ]
                },
                ensure_ascii=False,
                sort_keys=True,
            )
            for q, a in [
                (query, "Returns within 30 days are free."),
                ("What is the restocking fee after 45 days?", "After 30 days a 15% fee applies."),
            ]
        ]
        proposal = FineTuneDatasetProposal(
            app_id=app_id,
            cluster_id=cluster_id,
            title="Fine-tune on 2 corrected answers about “days fee restocking”",
            rationale="2 distinct queries received a user correction.",
            evidence=evidence,
            artifact=FineTuneDataset(
                system_prompt=BASE_PROMPT, rows=len(lines), jsonl="\n".join(lines) + "\n"
            ),
        )
    proposal_id = f"p_{uuid.uuid4().hex[:16]}"
    with sessions.begin() as session:
        if kind == "system_prompt_edit" and register_prompt:
            set_prompt(session, app_id=app_id, name="support", text=BASE_PROMPT, source="cli")
        row = ProposalRow(
            id=proposal_id,
            app_id=app_id,
            cluster_id=cluster_id,
            kind=kind,
            status=status,
            version=1,
            title=proposal.title,
            payload=proposal.model_dump(mode="json"),
            fingerprint=uuid.uuid4().hex,
        )
        if created_at is not None:
            row.created_at = row.updated_at = created_at
        session.add(row)
        session.flush()
        record_audit(session, proposal_id, "system:proposer", "create", None, "pending", "ok", None)
    return proposal_id


def audit_trail(sessions: sessionmaker[Session], proposal_id: str) -> list[tuple[str, str, str]]:
    """The proposal's audit log, oldest first, as (actor, action, outcome)."""
    with sessions() as s:
        return [
            (a.actor, a.action, a.outcome)
            for a in s.scalars(
                select(AuditEntry)
                .where(AuditEntry.proposal_id == proposal_id)
                .order_by(AuditEntry.id)
            )
        ]
