"""Every change to a stored proposal, by people and by the proposer: the one-winner rule and the
audited attempt. The CLI, the API and the web UI call these functions, and nothing else writes a
proposal's status or content after it is created.

One winner: `transition` is the conditional UPDATE on (id, version, status as read) that bumps
the version; of two concurrent writers exactly one matches the row. A person's attempt goes
through `attempt`: applied and audited in one transaction, or refused (`Refused`: the loser gets
`DecisionConflict`, a state that forbids it `TransitionRefused`) and then audited in a
transaction of its own, so the rollback cannot erase the refusal. An edit keeps the proposal's
fingerprint, so a proposer re-run with unchanged evidence leaves the reviewer's edit alone
(changed evidence refreshes the proposal, audited as "refresh").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from refinery.ops.metrics import PROPOSALS, REVIEW_DECISIONS
from refinery.review.edits import PROPOSAL_ADAPTER, ArtifactEdit, apply_edit, artifact_diff
from refinery.review.edits import check_stored as check_stored
from refinery.review.errors import (
    DecisionConflict,
    InvalidEdit,
    ProposalNotFound,
    Refused,
    TransitionRefused,
    outcome,
)
from refinery.review.service import describe_state, get_proposal
from refinery.review.transitions import check_transition, record_audit
from refinery.store.models import ApiToken, OutboxRow, ProposalRow, utcnow
from refinery.store.prompts import current_prompt, set_prompt
from schemas.proposals import ApprovedRefinement, ProposalKind, ProposalStatus

# --- the one-winner rule ---------------------------------------------------------------------


def transition(session: Session, row: ProposalRow, **values: object) -> bool:
    """UPDATE the proposal with `values` (a new status, payload, decision fields ...), bump its
    version and updated_at, only if its version and status are still those `row` was read with.
    True when this caller won (`row` is refreshed to the new state); False when someone else
    changed it first (nothing written). The caller audits and commits."""
    won = session.execute(
        update(ProposalRow)
        .where(
            ProposalRow.id == row.id,
            ProposalRow.version == row.version,
            ProposalRow.status == row.status,
        )
        .values(**values, version=row.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if won == 1:
        session.refresh(row)
    return bool(won == 1)


def system_transition(
    session: Session,
    row: ProposalRow,
    *,
    actor: str,
    action: str,
    detail: str | None,
    **values: object,
) -> bool:
    """`transition` for a system actor (the proposer's supersede and refresh): audited when won;
    a loss is no refusal, a person decided first and the system leaves their decision alone."""
    before = row.status
    if not transition(session, row, **values):
        return False
    record_audit(session, row.id, actor, action, before, row.status, "ok", detail)
    return True


def expect_version(row: ProposalRow, expected_version: int | None) -> None:
    """DecisionConflict unless the proposal is at the version the person saw (None: any)."""
    if expected_version is not None and expected_version != row.version:
        raise DecisionConflict(
            f"proposal {row.id} is at version {row.version}, not {expected_version}; reload it"
        )


def win(
    session: Session,
    row: ProposalRow,
    target: str | None = None,
    *,
    expected_version: int | None = None,
    **values: object,
) -> None:
    """`transition` for a person: to `target` (None: the status stays) if the state machine
    allows it and the proposal is at `expected_version`; raises TransitionRefused or
    DecisionConflict instead of returning False."""
    if target is not None:
        check_transition(row.status, target)
        values["status"] = target
    expect_version(row, expected_version)
    if not transition(session, row, **values):
        raise DecisionConflict(f"proposal {row.id} was changed by someone else first")


# --- the audited attempt ---------------------------------------------------------------------

Change = Callable[[Session, ProposalRow], str | None]
"""Applies one attempt inside its transaction (raising a ReviewError to refuse it) and returns
the detail of its audit entry."""


def attempt(
    sessions: sessionmaker[Session],
    proposal_id: str,
    change: Change,
    *,
    actor: str,
    action: str,
    target: str | None,
    decision: bool = True,
    count_malformed: bool = True,
) -> ProposalRow:
    """Run `change` on the proposal in one transaction and audit it there ("ok"), or, when it
    raises `Refused` (or InvalidEdit for the stored artifact), roll back, audit the refusal in a
    transaction of its own and raise it again. `target`: the status the attempt enters (None: it
    stays). A malformed request (any other InvalidEdit) is not an attempt on the proposal: not
    audited, counted only with `count_malformed`. `decision`: counted in
    refinery_review_decisions_total (an acknowledgement from downstream is not). Raises
    ProposalNotFound, nothing audited."""
    with sessions() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        current = row.status
        try:
            detail = change(session, row)
            record_audit(
                session, proposal_id, actor, action, current, target or current, "ok", detail
            )
            session.commit()
        except (Refused, InvalidEdit) as exc:
            session.rollback()
            error: Refused | InvalidEdit = exc
        else:
            session.refresh(row)
            if decision:
                REVIEW_DECISIONS.labels(action, "applied").inc()
            if target is not None:
                PROPOSALS.labels(row.kind, target).inc()
            return row
    malformed = isinstance(error, InvalidEdit) and not error.stored
    if not malformed:
        with sessions.begin() as audit_session:
            record_audit(
                audit_session,
                proposal_id,
                actor,
                action,
                current,
                target or current,
                "refused",
                str(error),
            )
    if decision and (count_malformed or not malformed):
        REVIEW_DECISIONS.labels(action, outcome(error)).inc()
    raise error


def audit_forbidden(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    action: str,
    target: str | None,
    reason: str,
) -> None:
    """Record an attempt refused for lack of a role, when the proposal exists."""
    with sessions.begin() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is not None:
            record_audit(session, proposal_id, actor, action, row.status, target, "refused", reason)


# --- decisions -------------------------------------------------------------------------------


def approve(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
    expected_version: int | None = None,
    attempts: int = 3,
) -> ProposalRow:
    """pending -> approved; in the same transaction the outbox row for `topic` and, for a system
    prompt edit, the prompt registry's new version. InvalidEdit (audited) when the stored
    artifact is not one its consumers accept.

    Retried when the transaction hit a unique constraint: two system prompt edits of the same
    prompt approved at the same moment both take the registry's next version (PostgreSQL, read
    committed), and one transaction fails whole. Nothing of it was written, so running it again
    is safe; it then sees the other's version and builds on it."""

    def change(session: Session, row: ProposalRow) -> str | None:
        now = utcnow()
        win(
            session,
            row,
            ProposalStatus.APPROVED,
            expected_version=expected_version,
            decided_by=actor,
            decided_at=now,
            decision_comment=comment,
        )
        check_stored(row.kind, row.payload)
        _on_approval(session, row, actor=actor, comment=comment, at=now, topic=topic)
        return comment

    for round_ in range(1, attempts + 1):
        try:
            return attempt(
                sessions,
                proposal_id,
                change,
                actor=actor,
                action="approve",
                target=ProposalStatus.APPROVED,
            )
        except IntegrityError:
            if round_ == attempts:
                raise
    raise AssertionError("unreachable")


def reject(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    comment: str | None = None,
    expected_version: int | None = None,
) -> ProposalRow:
    """pending -> rejected."""

    def change(session: Session, row: ProposalRow) -> str | None:
        win(
            session,
            row,
            ProposalStatus.REJECTED,
            expected_version=expected_version,
            decided_by=actor,
            decided_at=utcnow(),
            decision_comment=comment,
        )
        return comment

    return attempt(
        sessions, proposal_id, change, actor=actor, action="reject", target=ProposalStatus.REJECTED
    )


def mark_applied(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    comment: str | None = None,
    expected_version: int | None = None,
) -> ProposalRow:
    """approved -> applied, when a downstream system acknowledges the refinement. Raises
    ProposalNotFound, TransitionRefused (not approved), DecisionConflict (lost a race). Not a
    review decision (a downstream system's acknowledgement): counted as a status change only."""

    def change(session: Session, row: ProposalRow) -> str | None:
        win(session, row, ProposalStatus.APPLIED, expected_version=expected_version)
        return comment

    return attempt(
        sessions,
        proposal_id,
        change,
        actor=actor,
        action="applied",
        target=ProposalStatus.APPLIED,
        decision=False,
    )


def edit_proposal(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    edit: ArtifactEdit,
    expected_version: int,
    comment: str | None = None,
) -> ProposalRow:
    """Change a pending proposal's artifact; bumps the version and audits the change (its
    comment, then a diff of the artifact). Raises ProposalNotFound, InvalidEdit (nothing audited
    or counted: a malformed request is not an attempt on the proposal), TransitionRefused when it
    is not pending, DecisionConflict when it is not at `expected_version` or changed under us."""

    def change(session: Session, row: ProposalRow) -> str | None:
        if row.status != ProposalStatus.PENDING:
            raise TransitionRefused(
                f"only a pending proposal can be edited; this one is {row.status}"
            )
        expect_version(row, expected_version)
        new_payload = apply_edit(row.kind, row.payload, edit)
        diff = artifact_diff(row.payload["artifact"], new_payload["artifact"])
        win(session, row, payload=new_payload, title=new_payload["title"])
        return (comment + "\n" if comment else "") + diff

    return attempt(
        sessions,
        proposal_id,
        change,
        actor=actor,
        action="edit",
        target=None,
        count_malformed=False,
    )


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
    return _set_claim(sessions, proposal_id, actor=actor, holder=assignee or actor, force=force)


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
    def change(session: Session, row: ProposalRow) -> str | None:
        current, before = row.status, row.claimed_by
        if holder is not None and holder != actor and not _is_reviewer(session, holder):
            raise InvalidEdit("assignee", f"no active reviewer or admin token is named {holder!r}")
        if holder is not None and current != ProposalStatus.PENDING:
            raise TransitionRefused(
                f"only a pending proposal can be claimed; this one is {current}"
            )
        if before is not None and before not in (holder, actor) and not force:
            raise DecisionConflict(
                f"proposal {proposal_id} is claimed by {before}; force to take it over"
            )
        # Not `transition`: a claim is one winner on the claimant, and leaves the version alone.
        won = session.execute(
            update(ProposalRow)
            .where(
                ProposalRow.id == proposal_id,
                ProposalRow.status == current,
                ProposalRow.claimed_by.is_(None)
                if before is None
                else ProposalRow.claimed_by == before,
            )
            .values(claimed_by=holder, claimed_at=utcnow() if holder is not None else None)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if won != 1:
            raise DecisionConflict(f"proposal {proposal_id} was changed by someone else first")
        if holder is None:
            return f"released (was {before})" if before else "was not claimed"
        verb = "claimed by" if holder == actor else "assigned to"
        return f"{verb} {holder}" + (f" (was {before})" if before else "")

    action = "claim" if holder is not None else "release"
    return attempt(sessions, proposal_id, change, actor=actor, action=action, target=None)


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


# --- one entry point for every caller --------------------------------------------------------

Action = Literal["approve", "reject", "applied", "edit", "claim", "release"]


def act(
    sessions: sessionmaker[Session],
    proposal_id: str,
    action: Action,
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
    expected_version: int | None = None,
    edit: ArtifactEdit | None = None,
    assignee: str | None = None,
    force: bool = False,
) -> ProposalRow:
    """One review action by name, for callers that dispatch on it (the CLI, the web UI's form
    posts). `edit` is required for "edit", together with `expected_version`."""
    if action == "approve":
        return approve(
            sessions,
            proposal_id,
            actor=actor,
            topic=topic,
            comment=comment,
            expected_version=expected_version,
        )
    if action == "reject":
        return reject(
            sessions, proposal_id, actor=actor, comment=comment, expected_version=expected_version
        )
    if action == "applied":
        return mark_applied(
            sessions, proposal_id, actor=actor, comment=comment, expected_version=expected_version
        )
    if action == "edit":
        if edit is None or expected_version is None:
            raise InvalidEdit("artifact", "an edit needs the fields to change and the version")
        return edit_proposal(
            sessions,
            proposal_id,
            actor=actor,
            edit=edit,
            comment=comment,
            expected_version=expected_version,
        )
    if action == "claim":
        return claim(sessions, proposal_id, actor=actor, assignee=assignee, force=force)
    return release(sessions, proposal_id, actor=actor, force=force)


# Most proposals one bulk decision may name: one queue page at its largest.
BULK_MAX_ITEMS = 200


@dataclass(frozen=True)
class BulkOutcome:
    """What one proposal of a bulk decision came to. `error`: None (decided), "not_found",
    "conflict" (its status does not allow it, or another writer won), or "invalid" (approval
    found the stored artifact invalid; `loc` names the field)."""

    proposal_id: str
    error: str | None = None
    detail: str | None = None
    status: str | None = None
    version: int | None = None
    loc: tuple[str | int, ...] = ()


def bulk_decide(
    sessions: sessionmaker[Session],
    decision: Literal["approve", "reject"],
    items: Sequence[tuple[str, int | None]],
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
) -> list[BulkOutcome]:
    """Approve or reject each (proposal id, expected version) in turn, through the very function
    a single decision uses: each is its own transaction, version check and audit entry, so one
    refusal leaves the others decided. Outcomes in input order."""
    outcomes: list[BulkOutcome] = []
    for proposal_id, expected_version in items:
        try:
            row = act(
                sessions,
                proposal_id,
                decision,
                actor=actor,
                topic=topic,
                comment=comment,
                expected_version=expected_version,
            )
        except ProposalNotFound as exc:
            outcomes.append(BulkOutcome(proposal_id, "not_found", str(exc.args[0])))
            continue
        except (Refused, InvalidEdit) as exc:
            with sessions() as session:
                now = get_proposal(session, proposal_id)
                state, status, version = describe_state(now), now.status, now.version
            error = "invalid" if isinstance(exc, InvalidEdit) else "conflict"
            loc = exc.loc if isinstance(exc, InvalidEdit) else ()
            outcomes.append(
                BulkOutcome(proposal_id, error, f"{exc}. {state}", status, version, loc)
            )
            continue
        outcomes.append(BulkOutcome(proposal_id, None, None, row.status, row.version))
    return outcomes
