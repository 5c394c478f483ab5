"""Reviewers' operations, shared by the CLI and the API: list, show, approve, reject, claim.

One winner under concurrency: a decision is a conditional UPDATE on (id, version, status); the
loser's UPDATE matches no row and it gets `DecisionConflict`. Every attempt, won or refused, is
audited; refusals are written in their own transaction so a rollback cannot erase them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from refinery.ops.metrics import PROPOSALS, REVIEW_DECISIONS
from refinery.review.transitions import TransitionRefused, check_transition, record_audit
from refinery.store.models import ApiToken, AuditEntry, OutboxRow, ProposalRow, utcnow
from refinery.store.prompts import current_prompt, set_prompt
from schemas.artifacts import ArtifactInvalid, check_artifact
from schemas.proposals import ApprovedRefinement, Proposal, ProposalKind, ProposalStatus

PROPOSAL_ADAPTER: TypeAdapter[Proposal] = TypeAdapter(Proposal)


class ProposalNotFound(LookupError):
    pass


class DecisionConflict(Exception):
    """Someone else changed the proposal first (HTTP 409)."""


class InvalidEdit(ValueError):
    """The edit does not fit the proposal, or the stored artifact is not one its consumers accept
    (HTTP 422); `loc` names the offending field, and for a dataset the row (rows.<index>.…)."""

    def __init__(self, field: str, message: str, *, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.loc = loc or (field,)

    @classmethod
    def of(cls, exc: ArtifactInvalid) -> InvalidEdit:
        return cls(".".join(str(p) for p in exc.loc), exc.message, loc=exc.loc)


def check_stored(kind: str, payload: dict[str, Any]) -> None:
    """Raise InvalidEdit unless the stored artifact is one its consumers accept: approval runs
    this, so an artifact stored before a rule existed cannot go downstream either."""
    try:
        check_artifact(kind, payload["artifact"])
    except ArtifactInvalid as exc:
        raise InvalidEdit.of(exc) from exc


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
SORTS = ("newest", "oldest", "size")
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
    return (ProposalRow.created_at.desc(), ProposalRow.id.desc())


def clamp_offset(offset: int, limit: int, total: int) -> int:
    """An offset past the end shows the last page, not an empty one."""
    limit = max(limit, 1)
    if offset < total:
        return max(offset, 0)
    return max(0, (total - 1) // limit * limit)


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
    total = int(
        session.scalar(select(func.count()).select_from(ProposalRow).where(*conditions)) or 0
    )
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


def approve(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
    expected_version: int | None = None,
) -> ProposalRow:
    return _decide(
        sessions, proposal_id, ProposalStatus.APPROVED, actor, comment, expected_version, topic
    )


def reject(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    comment: str | None = None,
    expected_version: int | None = None,
) -> ProposalRow:
    return _decide(
        sessions, proposal_id, ProposalStatus.REJECTED, actor, comment, expected_version, None
    )


def conditional_transition(
    session: Session,
    row: ProposalRow,
    target: str,
    *,
    expected_version: int | None,
    **values: object,
) -> None:
    """Move `row` to `target` only if nobody changed it since it was read: the one-winner rule
    of every status change (UPDATE ... WHERE id, version, status). Raises TransitionRefused or
    DecisionConflict; the caller audits and commits."""
    current, version = row.status, row.version
    check_transition(current, target)
    if expected_version is not None and expected_version != version:
        raise DecisionConflict(
            f"proposal {row.id} is at version {version}, not {expected_version}; reload it"
        )
    won = session.execute(
        update(ProposalRow)
        .where(
            ProposalRow.id == row.id,
            ProposalRow.version == version,
            ProposalRow.status == current,
        )
        .values(status=target, version=version + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        raise DecisionConflict(f"proposal {row.id} was changed by someone else first")


def _decide(
    sessions: sessionmaker[Session],
    proposal_id: str,
    target: ProposalStatus,
    actor: str,
    comment: str | None,
    expected_version: int | None,
    topic: str | None,
) -> ProposalRow:
    action = "approve" if target is ProposalStatus.APPROVED else "reject"
    refusal: tuple[str | None, str] | None = None
    with sessions() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        current = row.status
        try:
            now = utcnow()
            conditional_transition(
                session,
                row,
                target,
                expected_version=expected_version,
                decided_by=actor,
                decided_at=now,
                decision_comment=comment,
            )
            if target is ProposalStatus.APPROVED:
                check_stored(row.kind, row.payload)
            record_audit(session, proposal_id, actor, action, current, target, "ok", comment)
            if target is ProposalStatus.APPROVED:
                assert topic is not None
                _on_approval(session, row, actor=actor, comment=comment, at=now, topic=topic)
            session.commit()
        except (TransitionRefused, DecisionConflict, InvalidEdit) as exc:
            session.rollback()
            refusal = (current, str(exc))
            error = exc
        if refusal is None:
            session.refresh(row)
            REVIEW_DECISIONS.labels(action, "applied").inc()
            PROPOSALS.labels(row.kind, target).inc()
            return row
    with sessions.begin() as audit_session:
        record_audit(
            audit_session, proposal_id, actor, action, refusal[0], target, "refused", refusal[1]
        )
    REVIEW_DECISIONS.labels(action, outcome(error)).inc()
    raise error


def claim(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    assignee: str | None = None,
    force: bool = False,
) -> ProposalRow:
    """Claim a pending proposal for `assignee` (the actor by default): the queue's "mine" is what
    one has claimed. Assigning it to someone else needs an active reviewer or admin token of that
    name (InvalidEdit otherwise). A proposal claimed by someone else is taken over only with
    `force`, else DecisionConflict saying who holds it; TransitionRefused unless pending. The claim
    is a conditional UPDATE on the claimant read (one winner), audited, and leaves the version
    alone: a reviewer's open page stays valid."""
    holder = assignee or actor
    return _set_claim(sessions, proposal_id, actor=actor, holder=holder, force=force)


def release(
    sessions: sessionmaker[Session], proposal_id: str, *, actor: str, force: bool = False
) -> ProposalRow:
    """Drop the claim on a proposal; someone else's only with `force` (DecisionConflict
    otherwise). Releasing an unclaimed proposal changes nothing and is still audited."""
    return _set_claim(sessions, proposal_id, actor=actor, holder=None, force=force)


def _set_claim(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    holder: str | None,
    force: bool,
) -> ProposalRow:
    action = "claim" if holder is not None else "release"
    refusal: tuple[str, Exception] | None = None
    with sessions() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        current, before = row.status, row.claimed_by
        try:
            if holder is not None and holder != actor and not _is_reviewer(session, holder):
                raise InvalidEdit(
                    "assignee", f"no active reviewer or admin token is named {holder!r}"
                )
            if holder is not None and current != ProposalStatus.PENDING:
                raise TransitionRefused(
                    f"only a pending proposal can be claimed; this one is {current}"
                )
            if before is not None and before not in (holder, actor) and not force:
                raise DecisionConflict(
                    f"proposal {proposal_id} is claimed by {before}; force to take it over"
                )
            now = utcnow()
            won = session.execute(
                update(ProposalRow)
                .where(
                    ProposalRow.id == proposal_id,
                    ProposalRow.status == current,
                    ProposalRow.claimed_by.is_(None)
                    if before is None
                    else ProposalRow.claimed_by == before,
                )
                .values(claimed_by=holder, claimed_at=now if holder is not None else None)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if won != 1:
                raise DecisionConflict(f"proposal {proposal_id} was changed by someone else first")
            if holder is None:
                detail = f"released (was {before})" if before else "was not claimed"
            elif holder == actor:
                detail = f"claimed by {holder}" + (f" (was {before})" if before else "")
            else:
                detail = f"assigned to {holder}" + (f" (was {before})" if before else "")
            record_audit(session, proposal_id, actor, action, current, current, "ok", detail)
            session.commit()
        except (TransitionRefused, DecisionConflict, InvalidEdit) as exc:
            session.rollback()
            refusal = (current, exc)
        if refusal is None:
            session.refresh(row)
            REVIEW_DECISIONS.labels(action, "applied").inc()
            return row
    if not isinstance(refusal[1], InvalidEdit):  # a malformed request is not an attempt
        with sessions.begin() as audit_session:
            record_audit(
                audit_session, proposal_id, actor, action, refusal[0], refusal[0], "refused",
                str(refusal[1]),
            )  # fmt: skip
    REVIEW_DECISIONS.labels(action, outcome(refusal[1])).inc()
    raise refusal[1]


def _is_reviewer(session: Session, name: str) -> bool:
    return (
        session.scalar(
            select(func.count())
            .select_from(ApiToken)
            .where(
                ApiToken.name == name,
                ApiToken.revoked_at.is_(None),
                ApiToken.role.in_(("reviewer", "admin")),
            )
        )
        or 0
    ) > 0


def outcome(error: Exception) -> str:
    """The `outcome` label of a refused review attempt: `conflict` when someone else changed the
    proposal first, `invalid` when its status does not allow the action."""
    return "conflict" if isinstance(error, DecisionConflict) else "invalid"


def _on_approval(
    session: Session, row: ProposalRow, *, actor: str, comment: str | None, at: datetime, topic: str
) -> None:
    """Effects of an approval, in the approval's own transaction (transactional outbox)."""
    proposal = PROPOSAL_ADAPTER.validate_python(row.payload)
    if proposal.kind is ProposalKind.SYSTEM_PROMPT_EDIT:
        current = current_prompt(session, app_id=row.app_id, name=proposal.artifact.prompt_name)
        current_version = current.version if current else None
        if current_version != proposal.artifact.base_version:
            # Approving would silently undo whatever changed the prompt since the diff was drafted.
            raise DecisionConflict(
                f"prompt {proposal.artifact.prompt_name!r} is at version {current_version}, but "
                f"this edit was drafted against {proposal.artifact.base_version}; reject it, or "
                "let the next propose pass redraft it against the current text"
            )
        set_prompt(
            session,
            app_id=row.app_id,
            name=proposal.artifact.prompt_name,
            text=proposal.artifact.proposed_text,
            source="approval",
        )
    outbox_id = f"o_{uuid.uuid4().hex}"
    message = ApprovedRefinement(
        outbox_id=outbox_id,
        proposal_id=row.id,
        app_id=row.app_id,
        kind=proposal.kind,
        approved_by=actor,
        approved_at=at,
        comment=comment,
        proposal=proposal,
    )
    session.add(
        OutboxRow(
            id=outbox_id,
            proposal_id=row.id,
            topic=topic,
            key=row.id,
            payload=message.model_dump(mode="json"),
        )
    )
