"""Per approved refinement: when it shipped, its region's failure rate before and after, verdict.

Shipped ("applied") is either reported (the proposal's status is applied; the time is that of its
audited acknowledgement) or inferred: interactions start arriving with the prompt version the
approval registered (refinery/store/prompts.py), and the first one's time is when it shipped. An
inferred one is then reported through the review package (review_calls.report_applied), so the
queue says applied too.

The region is the cluster's, as refinery/cluster/region.py samples it: failing interactions and a
fixed-order sample of up to REGION_SAMPLE_SIZE non-failing ones per period, embedded through the
cache; those at cosine >= CLUSTER_ASSIGN_SIMILARITY to the centroid are in it. Per period, with F
failing and n sampled non-failing in the region, out of s sampled among N non-failing:

    failing = F,  total = F + round(n * N / s)

before = [applied_at - IMPACT_WINDOW_S, applied_at), after = [applied_at, applied_at +
IMPACT_WINDOW_S). The verdict is refinery.impact.verdict.assess on those counts; the same counts
per prompt version are stored beside it. A regressed verdict writes one alert to the outbox
(TOPIC_ALERTS), in the transaction that stores it, so the relay publishes it exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import false, func, select, true
from sqlalchemy.orm import Session, sessionmaker

from refinery.cluster.region import sample_order
from refinery.embed.embedder import Embedder
from refinery.embed.service import embed_interactions, query_vector, vectors_from_rows
from refinery.impact.review_calls import report_applied
from refinery.impact.verdict import Counts, Verdict, assess
from refinery.settings import Settings, TopicSettings
from refinery.store.models import (
    AuditEntry,
    Cluster,
    Embedding,
    Interaction,
    OutboxRow,
    Prompt,
    ProposalRow,
    RefinementImpact,
    utcnow,
)
from schemas.proposals import ProposalKind, ProposalStatus

log = logging.getLogger(__name__)

NOT_APPLIED = "not_applied"
IMPACT_ACTOR = "refinery-impact"
_CHUNK = 1000


@dataclass
class ImpactResult:
    refinements: int = 0
    inferred: list[str] = field(default_factory=list)  # proposals found shipped from traffic
    verdicts: dict[str, str] = field(default_factory=dict)  # proposal id -> verdict
    alerts: list[str] = field(default_factory=list)  # proposals alerted as regressed this pass


def refresh_impacts(
    sessions: sessionmaker[Session],
    settings: Settings,
    embedder: Embedder,
    *,
    app_id: str | None = None,
    now: datetime | None = None,
) -> ImpactResult:
    """Recompute the impact row of every approved or applied proposal (of `app_id`, or all)."""
    now = now or utcnow()
    result = ImpactResult()
    with sessions() as session:
        query = select(ProposalRow.id).where(
            ProposalRow.status.in_((ProposalStatus.APPROVED, ProposalStatus.APPLIED))
        )
        if app_id is not None:
            query = query.where(ProposalRow.app_id == app_id)
        ids = list(session.scalars(query.order_by(ProposalRow.decided_at, ProposalRow.id)))
    for proposal_id in ids:
        with sessions() as session:
            inferred = _inferred_shipping(session, proposal_id)
        if inferred is not None and report_applied(
            sessions,
            proposal_id,
            actor=IMPACT_ACTOR,
            comment=f"inferred: traffic with prompt version {inferred[1]} since "
            f"{inferred[0]:%Y-%m-%d %H:%M:%S} UTC",
        ):
            result.inferred.append(proposal_id)
        with sessions() as session:
            impact = _refresh_one(session, proposal_id, settings, embedder, inferred, now, result)
            session.commit()
        result.refinements += 1
        result.verdicts[proposal_id] = impact.verdict
    return result


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def _registered_version(session: Session, row: ProposalRow) -> str | None:
    """The prompt version the approval of a prompt edit registered (None for other kinds)."""
    if row.kind != ProposalKind.SYSTEM_PROMPT_EDIT:
        return None
    artifact = row.payload.get("artifact", {})
    return session.scalar(
        select(Prompt.version)
        .where(
            Prompt.app_id == row.app_id,
            Prompt.name == artifact.get("prompt_name"),
            Prompt.text == artifact.get("proposed_text"),
        )
        .order_by(Prompt.seq.desc())
        .limit(1)
    )


def _inferred_shipping(session: Session, proposal_id: str) -> tuple[datetime, str] | None:
    """(first interaction time, version) when an approved prompt edit's version is in traffic."""
    row = session.get(ProposalRow, proposal_id)
    if row is None or row.status != ProposalStatus.APPROVED:
        return None
    version = _registered_version(session, row)
    if version is None:
        return None
    first = session.scalar(
        select(func.min(Interaction.occurred_at)).where(
            Interaction.app_id == row.app_id,
            Interaction.prompt_name == row.payload["artifact"].get("prompt_name"),
            Interaction.prompt_version == version,
        )
    )
    return (_aware(first), version) if first is not None else None  # type: ignore[return-value]


def _reported_at(session: Session, proposal_id: str) -> datetime | None:
    return _aware(
        session.scalar(
            select(func.min(AuditEntry.at)).where(
                AuditEntry.proposal_id == proposal_id,
                AuditEntry.action == "applied",
                AuditEntry.outcome == "ok",
            )
        )
    )


def _refresh_one(
    session: Session,
    proposal_id: str,
    settings: Settings,
    embedder: Embedder,
    inferred: tuple[datetime, str] | None,
    now: datetime,
    result: ImpactResult,
) -> RefinementImpact:
    row = session.get(ProposalRow, proposal_id)
    assert row is not None
    impact = session.get(RefinementImpact, proposal_id)
    if impact is None:
        impact = RefinementImpact(
            proposal_id=row.id,
            app_id=row.app_id,
            cluster_id=row.cluster_id,
            kind=row.kind,
            approved_at=row.decided_at,
            verdict=NOT_APPLIED,
            detail={},
            by_version={},
        )
        session.add(impact)
    if impact.applied_at is None:
        if inferred is not None:
            impact.applied_at, impact.applied_how = inferred[0], "inferred"
        elif row.status == ProposalStatus.APPLIED:
            impact.applied_at, impact.applied_how = _reported_at(session, row.id), "reported"
    if impact.applied_version is None:
        impact.applied_version = inferred[1] if inferred else _registered_version(session, row)
    impact.computed_at = now
    applied_at = _aware(impact.applied_at)
    if applied_at is None:
        impact.verdict = NOT_APPLIED
        return impact
    cluster = session.get(Cluster, row.cluster_id)
    if cluster is None:
        impact.verdict = Verdict.NOT_ENOUGH_DATA
        impact.detail = {"reason": "its cluster is gone"}
        return impact
    centroid = np.frombuffer(cluster.centroid, dtype=np.float32)
    window = timedelta(seconds=settings.impact_window_s)
    periods = {
        "before": (applied_at - window, applied_at),
        "after": (applied_at, applied_at + window),
    }
    counts: dict[str, Counts] = {}
    by_version: dict[str, dict[str, float]] = defaultdict(lambda: {"failing": 0, "total": 0.0})
    for name, (start, end) in periods.items():
        counts[name] = _region_counts(
            session, row.app_id, centroid, start, end, settings, embedder, by_version
        )
    assessment = assess(counts["before"], counts["after"])
    impact.verdict = assessment.verdict.value
    impact.detail = {
        **assessment.as_dict(),
        "windows": {k: [a.isoformat(), b.isoformat()] for k, (a, b) in periods.items()},
    }
    impact.by_version = {
        v: {"failing": int(c["failing"]), "total": round(c["total"])}
        for v, c in sorted(by_version.items())
    }
    if assessment.verdict is Verdict.REGRESSED and impact.alerted_at is None:
        _alert(session, row, impact, settings)
        result.alerts.append(row.id)
    return impact


def _region_counts(
    session: Session,
    app_id: str,
    centroid: np.ndarray,
    start: datetime,
    end: datetime,
    settings: Settings,
    embedder: Embedder,
    by_version: dict[str, dict[str, float]],
) -> Counts:
    """Failing and (estimated) total interactions of the period near `centroid`; adds each
    version's share to `by_version`."""
    period = (
        Interaction.app_id == app_id,
        Interaction.occurred_at >= start,
        Interaction.occurred_at < end,
    )
    failing_ids = list(
        session.scalars(select(Interaction.id).where(*period, Interaction.failing == true()))
    )
    healthy = (*period, Interaction.failing == false())
    non_failing = int(session.scalar(select(func.count(Interaction.id)).where(*healthy)) or 0)
    sample_ids = list(
        session.scalars(
            select(Interaction.id)
            .where(*healthy)
            .order_by(sample_order(Interaction.id), Interaction.id)
            .limit(max(settings.region_sample_size, 0))
        )
    )
    scale = non_failing / len(sample_ids) if sample_ids else 0.0
    failing = 0
    sampled_near = 0
    for ids, weight in ((failing_ids, None), (sample_ids, scale)):
        for chunk in (ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)):
            embed_interactions(session, chunk, embedder)
            versions, vectors = _vectors(session, embedder.name, chunk)
            if len(vectors) == 0 or vectors.shape[1] != centroid.shape[0]:
                continue
            near = vectors @ centroid >= settings.cluster_assign_similarity
            for version, is_near in zip(versions, near, strict=True):
                if not is_near:
                    continue
                entry = by_version[version or "none"]
                if weight is None:
                    failing += 1
                    entry["failing"] += 1
                    entry["total"] += 1
                else:
                    sampled_near += 1
                    entry["total"] += weight
    return Counts(failing, failing + round(sampled_near * scale))


def _vectors(session: Session, model: str, ids: list[int]) -> tuple[list[str | None], np.ndarray]:
    rows = session.execute(
        select(Interaction.prompt_version, Embedding.vector, Embedding.dim)
        .join(
            Embedding,
            query_vector(model),
        )
        .where(Interaction.id.in_(ids))
    ).all()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [r.prompt_version for r in rows], vectors_from_rows(
        [r.vector for r in rows], rows[0].dim
    )


def _alert(
    session: Session, row: ProposalRow, impact: RefinementImpact, settings: TopicSettings
) -> None:
    """One alert event for a regressed refinement, through the outbox (same transaction)."""
    outbox_id = f"o_{uuid.uuid4().hex}"
    detail = impact.detail
    payload: dict[str, Any] = {
        "type": "refinement_regressed",
        "outbox_id": outbox_id,
        "app_id": row.app_id,
        "proposal_id": row.id,
        "cluster_id": row.cluster_id,
        "kind": row.kind,
        "title": row.title,
        "applied_at": impact.applied_at.isoformat() if impact.applied_at else None,
        "applied_how": impact.applied_how,
        "applied_version": impact.applied_version,
        "before": detail["before"],
        "after": detail["after"],
        "p_improved": detail["p_improved"],
        "diff_interval": [detail["diff_low"], detail["diff_high"]],
    }
    session.add(
        OutboxRow(
            id=outbox_id,
            proposal_id=row.id,
            topic=settings.topic_alerts,
            key=row.id,
            payload=payload,
        )
    )
    impact.alerted_at = utcnow()
    log.warning(
        "refinement %s of %s regressed: failure rate %s -> %s; alert %s",
        row.id, row.app_id, detail["before"], detail["after"], outbox_id,
    )  # fmt: skip
