"""What a reviewer sees of a proposal: summary, evidence (with the cluster's trend), the artifact
rendered (diff lines, manifest, dataset rows with counts), history, and the downloadable artifact.
Shared by the JSON API and the web UI, so both show the same thing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from refinery.api.models import (
    ArtifactView,
    AuditPublic,
    ChatMessagePublic,
    ClusterPublic,
    DatasetRowPublic,
    DatasetView,
    DiffLine,
    PromptEditView,
    ProposalDetail,
    ProposalSummary,
    RagManifestView,
    TrendPublic,
)
from refinery.review.service import ProposalFilter
from refinery.store.models import AuditEntry, Cluster, Interaction, ProposalRow
from schemas.proposals import Evidence, ProposalKind

# Days per trend window: failing interactions in the last week against the week before.
TREND_WINDOW_DAYS = 7


def aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; every stored one is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def summary(row: ProposalRow) -> ProposalSummary:
    return ProposalSummary(
        id=row.id,
        app_id=row.app_id,
        kind=row.kind,  # type: ignore[arg-type]
        status=row.status,  # type: ignore[arg-type]
        version=row.version,
        cluster_id=row.cluster_id,
        title=row.title,
        size=(row.payload.get("evidence") or {}).get("size"),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        decided_by=row.decided_by,
        decided_at=aware(row.decided_at) if row.decided_at else None,
    )


# The columns a list row needs: not the payload (kilobytes: diffs, datasets), only its size.
_SUMMARY_COLUMNS = (
    ProposalRow.id,
    ProposalRow.app_id,
    ProposalRow.kind,
    ProposalRow.status,
    ProposalRow.version,
    ProposalRow.cluster_id,
    ProposalRow.title,
    ProposalRow.payload[("evidence", "size")].as_integer().label("size"),
    ProposalRow.created_at,
    ProposalRow.updated_at,
    ProposalRow.decided_by,
    ProposalRow.decided_at,
)


def list_summaries(
    session: Session, filters: ProposalFilter, *, limit: int, offset: int
) -> tuple[list[ProposalSummary], int]:
    """A page of the queue, newest first, and the number of matches; the same filters as
    refinery.review.service.list_proposals, without loading payloads."""
    conditions = [
        column == value
        for column, value in (
            (ProposalRow.app_id, filters.app_id),
            (ProposalRow.kind, filters.kind),
            (ProposalRow.status, filters.status),
            (ProposalRow.cluster_id, filters.cluster_id),
        )
        if value is not None
    ]
    if filters.created_after is not None:
        conditions.append(ProposalRow.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(ProposalRow.created_at < filters.created_before)
    total = session.scalar(select(func.count()).select_from(ProposalRow).where(*conditions)) or 0
    # Two steps: the page's ids from the indexes alone, then the columns of those rows only.
    # In one query PostgreSQL parses every matching payload (for its size) before it sorts.
    # Both keys descending, so that an index on (..., created_at, id) yields the order as is.
    order = (ProposalRow.created_at.desc(), ProposalRow.id.desc())
    page = (
        select(ProposalRow.id).where(*conditions).order_by(*order).limit(limit).offset(offset)
    ).subquery()
    rows = session.execute(
        select(*_SUMMARY_COLUMNS).join(page, ProposalRow.id == page.c.id).order_by(*order)
    ).all()
    return [
        ProposalSummary(
            id=r.id,
            app_id=r.app_id,
            kind=r.kind,
            status=r.status,
            version=r.version,
            cluster_id=r.cluster_id,
            title=r.title,
            size=r.size,
            created_at=aware(r.created_at),
            updated_at=aware(r.updated_at),
            decided_by=r.decided_by,
            decided_at=aware(r.decided_at) if r.decided_at else None,
        )
        for r in rows
    ], int(total)


def audit_public(entry: AuditEntry) -> AuditPublic:
    return AuditPublic(
        id=entry.id,
        at=aware(entry.at),
        actor=entry.actor,
        action=entry.action,
        from_status=entry.from_status,
        to_status=entry.to_status,
        outcome=entry.outcome,
        detail=entry.detail,
    )


def diff_lines(diff: str) -> list[DiffLine]:
    out = []
    for line in diff.splitlines():
        if line.startswith(("--- ", "+++ ")):
            op = "h"
        elif line.startswith("@@"):
            op = "@"
        elif line[:1] in ("+", "-"):
            op = line[0]
        else:
            op = " "
        out.append(DiffLine(op=op, text=line))  # type: ignore[arg-type]
    return out


def artifact_view(kind: str, artifact: dict, *, max_rows: int) -> ArtifactView:
    if kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        lines = diff_lines(artifact["diff"])
        return PromptEditView(
            **artifact,
            diff_lines=lines,
            added=sum(1 for line in lines if line.op == "+"),
            removed=sum(1 for line in lines if line.op == "-"),
        )
    if kind == ProposalKind.RAG_SOURCE:
        return RagManifestView(**artifact)
    items: list[DatasetRowPublic] = []
    roles: Counter[str] = Counter()
    invalid = 0
    rows = 0
    for line in artifact["jsonl"].splitlines():
        if not line.strip():
            continue
        rows += 1
        try:
            obj = json.loads(line)
            messages = [
                ChatMessagePublic(role=str(m["role"]), content=str(m["content"]))
                for m in obj["messages"]
            ]
        except (ValueError, TypeError, KeyError):
            invalid += 1
            continue
        roles.update(m.role for m in messages)
        if len(items) < max_rows:
            items.append(DatasetRowPublic(messages=messages))
    return DatasetView(
        format=artifact.get("format", "openai-chat-jsonl"),
        system_prompt=artifact.get("system_prompt", ""),
        rows=rows,
        role_counts=dict(sorted(roles.items())),
        invalid_lines=invalid,
        items=items,
        items_truncated=rows - invalid > len(items),
    )


def cluster_trend(
    session: Session, cluster_id: str, *, now: datetime | None = None
) -> TrendPublic | None:
    now = now or datetime.now(UTC)
    split = now - timedelta(days=TREND_WINDOW_DAYS)
    start = split - timedelta(days=TREND_WINDOW_DAYS)
    recent, previous = session.execute(
        select(
            func.coalesce(func.sum(case((Interaction.occurred_at >= split, 1), else_=0)), 0),
            func.coalesce(func.sum(case((Interaction.occurred_at < split, 1), else_=0)), 0),
        ).where(
            Interaction.cluster_id == cluster_id,
            Interaction.failing.is_(True),
            Interaction.occurred_at >= start,
            Interaction.occurred_at <= now,
        )
    ).one()
    recent, previous = int(recent), int(previous)
    if recent == 0 and previous == 0:
        return None
    # A change of a fifth or less either way is noise at these counts.
    if recent > previous * 1.2:
        direction = "rising"
    elif recent < previous * 0.8:
        direction = "falling"
    else:
        direction = "flat"
    return TrendPublic(
        window_days=TREND_WINDOW_DAYS, recent=recent, previous=previous, direction=direction
    )


def detail(
    session: Session, row: ProposalRow, history: list[AuditEntry], *, max_rows: int = 200
) -> ProposalDetail:
    payload = row.payload
    cluster = session.get(Cluster, row.cluster_id)
    return ProposalDetail(
        **summary(row).model_dump(),
        rationale=payload.get("rationale", ""),
        decision_comment=row.decision_comment,
        evidence=Evidence.model_validate(payload["evidence"]),
        cluster=ClusterPublic(
            id=cluster.id,
            label=cluster.label,
            size=cluster.size,
            active=cluster.active,
            updated_at=aware(cluster.updated_at),
        )
        if cluster is not None
        else None,
        trend=cluster_trend(session, row.cluster_id),
        artifact=artifact_view(row.kind, payload["artifact"], max_rows=max_rows),
        history=[audit_public(h) for h in history],
    )


@dataclass(frozen=True)
class Download:
    filename: str
    media_type: str
    content: bytes


def artifact_download(row: ProposalRow) -> Download:
    """The artifact as a file: the prompt diff, the RAG manifest as JSON, the dataset as JSONL."""
    artifact = row.payload["artifact"]
    if row.kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        return Download(f"{row.id}.diff", "text/x-diff; charset=utf-8", artifact["diff"].encode())
    if row.kind == ProposalKind.RAG_SOURCE:
        manifest = {"proposal_id": row.id, "app_id": row.app_id, **artifact}
        body = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        return Download(f"{row.id}.manifest.json", "application/json", body.encode())
    return Download(f"{row.id}.jsonl", "application/x-ndjson", artifact["jsonl"].encode())
