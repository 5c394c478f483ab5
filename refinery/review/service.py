"""What reviewers read, shared by the CLI, the API and the web UI: the queue's filters, orders and
pages, one proposal, its history, and the state a refused writer is told about. Every write is in
`refinery.review.decisions`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from refinery.review.errors import ProposalNotFound
from refinery.store.models import AuditEntry, ProposalRow
from schemas.proposals import ProposalStatus


@dataclass(frozen=True)
class ProposalFilter:
    app_id: str | None = None
    kind: str | None = None
    status: str | None = None
    cluster_id: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    search: str | None = None  # in titles, cluster labels and example queries, any case
    claimed_by: str | None = None  # claimed by this reviewer ("mine" is the caller's name)
    unclaimed: bool = False  # claimed by nobody


# Orders of the queue; ties broken by id, so that pages never overlap.
Sort = Literal["newest", "oldest", "size", "impact"]
SORTS: tuple[str, ...] = get_args(Sort)
SEARCH_MAX_CHARS = 200


def _contains(
    column: ColumnElement[str] | InstrumentedAttribute[str], needle: str
) -> ColumnElement[bool]:
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped}%", escape="\\")


def filter_conditions(filters: ProposalFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a queue filter, shared by the API, the web UI and the CLI."""
    conditions: list[ColumnElement[bool]] = [
        column == value
        for column, value in (
            (ProposalRow.app_id, filters.app_id),
            (ProposalRow.kind, filters.kind),
            (ProposalRow.status, filters.status),
            (ProposalRow.cluster_id, filters.cluster_id),
        )
        if value is not None
    ]
    if filters.claimed_by is not None:
        conditions.append(ProposalRow.claimed_by == filters.claimed_by)
    if filters.unclaimed:
        conditions.append(ProposalRow.claimed_by.is_(None))
    if filters.created_after is not None:
        conditions.append(ProposalRow.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(ProposalRow.created_at < filters.created_before)
    term = (filters.search or "").strip().lower()[:SEARCH_MAX_CHARS]
    if term:
        # Payload text is stored JSON-encoded (non-ASCII as \uXXXX escapes): lists are matched in
        # that form, the label and the title as plain text.
        encoded = json.dumps(term)[1:-1]
        evidence = ProposalRow.payload
        conditions.append(
            or_(
                _contains(ProposalRow.title, term),
                _contains(evidence[("evidence", "label")].as_string(), term),
                _contains(evidence[("evidence", "examples")].as_string(), encoded),
                _contains(evidence[("evidence", "representative_queries")].as_string(), encoded),
            )
        )
    return conditions


def sort_order(sort: str) -> tuple[ColumnElement[Any], ...]:
    """ORDER BY of a queue sort (one of SORTS)."""
    if sort == "oldest":
        return (ProposalRow.created_at.asc(), ProposalRow.id.asc())
    if sort == "size":
        size = ProposalRow.payload[("evidence", "size")].as_integer()
        return (size.desc(), ProposalRow.created_at.desc(), ProposalRow.id.desc())
    if sort == "impact":
        # refinery.propose.ranking; proposals drafted before it existed have none: last.
        impact = ProposalRow.payload[("evidence", "expected_impact", "score")].as_float()
        return (
            impact.desc().nulls_last(),
            ProposalRow.created_at.desc(),
            ProposalRow.id.desc(),
        )
    return (ProposalRow.created_at.desc(), ProposalRow.id.desc())


def clamp_offset(offset: int, limit: int, total: int) -> int:
    """An offset past the end shows the last page, not an empty one."""
    limit = max(limit, 1)
    if offset < total:
        return max(offset, 0)
    return max(0, (total - 1) // limit * limit)


# A queue filter's count is kept a moment per process once it is large: on a big queue the count
# is the dearest part of a page (PostgreSQL reads the whole table for it until autovacuum has set
# the visibility map an index-only count needs), and a total of "10,000" two seconds old misleads
# nobody. Below COUNT_CACHE_MIN matches the count is exact on every page, so that a small queue's
# total moves the moment a proposal is decided.
COUNT_CACHE_MIN = 1_000
COUNT_CACHE_TTL_S = 2.0
_COUNT_CACHE_MAX_ENTRIES = 1_024
_counts: dict[tuple[str, ProposalFilter], tuple[float, int]] = {}


def count_matches(session: Session, filters: ProposalFilter) -> int:
    """How many proposals match `filters`: exact below COUNT_CACHE_MIN, else at most
    COUNT_CACHE_TTL_S old (per database and filter, in this process)."""
    key = (str(session.get_bind().engine.url), filters)
    now = time.monotonic()
    cached = _counts.get(key)
    if cached is not None and now - cached[0] < COUNT_CACHE_TTL_S:
        return cached[1]
    total = int(
        session.scalar(
            select(func.count()).select_from(ProposalRow).where(*filter_conditions(filters))
        )
        or 0
    )
    if total >= COUNT_CACHE_MIN:
        if len(_counts) >= _COUNT_CACHE_MAX_ENTRIES:
            _counts.clear()  # many distinct searches: start over rather than track ages
        _counts[key] = (now, total)
    else:
        _counts.pop(key, None)
    return total


def list_page(
    session: Session,
    filters: ProposalFilter = ProposalFilter(),
    *,
    limit: int = 50,
    offset: int = 0,
    sort: str = "newest",
) -> tuple[list[ProposalRow], int, int]:
    """A page of the queue: (rows, number of matches, the offset used: clamped to the last
    page)."""
    conditions = filter_conditions(filters)
    total = count_matches(session, filters)
    offset = clamp_offset(offset, limit, total)
    rows = session.scalars(
        select(ProposalRow)
        .where(*conditions)
        .order_by(*sort_order(sort))
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total, offset


def list_proposals(
    session: Session,
    filters: ProposalFilter = ProposalFilter(),
    *,
    limit: int = 50,
    offset: int = 0,
    sort: str = "newest",
) -> tuple[list[ProposalRow], int]:
    """`list_page` without the offset used."""
    rows, total, _ = list_page(session, filters, limit=limit, offset=offset, sort=sort)
    return rows, total


def get_proposal(session: Session, proposal_id: str) -> ProposalRow:
    row = session.get(ProposalRow, proposal_id)
    if row is None:
        raise ProposalNotFound(f"no proposal {proposal_id!r}")
    return row


# The claim filters of the queue: the caller's own claims, or nobody's.
CLAIM_FILTERS = ("mine", "unclaimed")


def claim_filter(claim: str | None, *, actor: str) -> dict[str, Any]:
    """ProposalFilter fields of a claim filter (one of CLAIM_FILTERS, or None for any)."""
    if claim == "mine":
        return {"claimed_by": actor}
    if claim == "unclaimed":
        return {"unclaimed": True}
    return {}


def describe_state(row: ProposalRow) -> str:
    """What a refused writer needs to know: the proposal's status and version now, and who
    decided it, when, and with what comment."""
    text = f"It is {row.status} at version {row.version}"
    if row.decided_by:
        at = row.decided_at
        when = f" at {at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else ""
        text += f": {row.status} by {row.decided_by}{when}"
        if row.decision_comment:
            text += f" (“{row.decision_comment}”)"
    elif row.claimed_by and row.status == ProposalStatus.PENDING:
        at = row.claimed_at
        when = f" since {at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else ""
        text += f", claimed by {row.claimed_by}{when}"
    return text + "."


def proposal_history(session: Session, proposal_id: str) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry).where(AuditEntry.proposal_id == proposal_id).order_by(AuditEntry.id)
        )
    )
