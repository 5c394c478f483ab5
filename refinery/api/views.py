"""What a reviewer sees of a proposal: summary, evidence with its figures (refinery.review.figures:
the trend, growth, size and region rate the cluster stage stored), the artifact rendered (diff
lines, manifest, dataset rows with counts), history, and the downloadable artifact. Shared by the
JSON API and the web UI, so both show the same thing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Row, select
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
)
from refinery.review.figures import evidence_figures
from refinery.review.service import (
    ProposalFilter,
    clamp_offset,
    count_matches,
    filter_conditions,
    sort_order,
)
from refinery.settings import TrendSettings
from refinery.store.models import AuditEntry, Cluster, ProposalRow
from schemas.proposals import Evidence, ProposalKind


def aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; every stored one is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def summary(row: ProposalRow) -> ProposalSummary:
    return _summary(row, size=(row.payload.get("evidence") or {}).get("size"))


def _summary(r: ProposalRow | Row[Any], *, size: int | None) -> ProposalSummary:
    """From a loaded proposal or a row of `_SUMMARY_COLUMNS`: the same fields, one mapping."""
    return ProposalSummary(
        id=r.id,
        app_id=r.app_id,
        kind=r.kind,  # type: ignore[arg-type]
        status=r.status,  # type: ignore[arg-type]
        version=r.version,
        cluster_id=r.cluster_id,
        title=r.title,
        size=size,
        created_at=aware(r.created_at),
        updated_at=aware(r.updated_at),
        decided_by=r.decided_by,
        decided_at=aware(r.decided_at) if r.decided_at else None,
        claimed_by=r.claimed_by,
        claimed_at=aware(r.claimed_at) if r.claimed_at else None,
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
    ProposalRow.claimed_by,
    ProposalRow.claimed_at,
)


def list_summaries(
    session: Session,
    filters: ProposalFilter,
    *,
    limit: int,
    offset: int,
    sort: str = "newest",
) -> tuple[list[ProposalSummary], int, int]:
    """A page of the queue, the number of matches, and the offset used (past the end: the last
    page); the filters and orders of refinery.review.service, without loading payloads."""
    conditions = filter_conditions(filters)
    total = count_matches(session, filters)
    offset = clamp_offset(offset, limit, total)
    # Two steps: the page's ids from the indexes alone, then the columns of those rows only.
    # In one query PostgreSQL parses every matching payload (for its size) before it sorts.
    # Keys descending, so that an index on (..., created_at, id) yields the newest first as is.
    order = sort_order(sort)
    page = (
        select(ProposalRow.id).where(*conditions).order_by(*order).limit(limit).offset(offset)
    ).subquery()
    rows = session.execute(
        select(*_SUMMARY_COLUMNS).join(page, ProposalRow.id == page.c.id).order_by(*order)
    ).all()
    return (
        [_summary(r, size=r.size) for r in rows],
        total,
        offset,
    )


DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def time_bound(raw: str, *, end: bool) -> datetime:
    """A filter bound from ISO 8601. A date alone means its whole day (UTC): as the start, its
    midnight; as the (exclusive) end, the next midnight, so that "until 2026-02-01" includes
    that day. A time without a zone is UTC. Raises ValueError."""
    raw = raw.strip()
    if DATE_ONLY.match(raw):
        day = datetime.combine(date.fromisoformat(raw), time(0), UTC)
        return day + timedelta(days=1) if end else day
    value = datetime.fromisoformat(raw)
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00
        raise ValueError("out of range once converted to UTC") from exc


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


def detail(
    session: Session,
    row: ProposalRow,
    history: list[AuditEntry],
    settings: TrendSettings,
    *,
    max_rows: int = 200,
) -> ProposalDetail:
    """The proposal as a reviewer reads it; TREND_BASELINE_BUCKETS stands in for evidence
    drafted before it recorded its own baseline."""
    payload = row.payload
    cluster = session.get(Cluster, row.cluster_id)
    evidence = Evidence.model_validate(payload["evidence"])
    figures = evidence_figures(evidence, default_baseline_buckets=settings.trend_baseline_buckets)
    return ProposalDetail(
        **summary(row).model_dump(),
        rationale=payload.get("rationale", ""),
        decision_comment=row.decision_comment,
        evidence=evidence,
        figures=figures,
        cluster=ClusterPublic(
            id=cluster.id,
            label=cluster.label,
            size=cluster.size,
            active=cluster.active,
            updated_at=aware(cluster.updated_at),
        )
        if cluster is not None
        else None,
        trend=figures.trend,
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
