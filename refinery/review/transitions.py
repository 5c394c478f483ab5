"""The proposal state machine and its append-only audit trail."""

from __future__ import annotations

from sqlalchemy.orm import Session

from refinery.review.errors import TransitionRefused
from refinery.store.models import AuditEntry
from schemas.proposals import ProposalStatus as S

# from-status -> statuses a decision may move it to
ALLOWED: dict[str, set[str]] = {
    S.PENDING: {S.APPROVED, S.REJECTED, S.SUPERSEDED},
    S.APPROVED: {S.APPLIED},
    S.REJECTED: set(),
    S.SUPERSEDED: set(),
    S.APPLIED: set(),
}


def check_transition(current: str, target: str) -> None:
    """TransitionRefused unless the state machine allows current -> target."""
    if target not in ALLOWED.get(current, set()):
        allowed = ", ".join(sorted(ALLOWED.get(current, set()))) or "nothing"
        raise TransitionRefused(
            f"cannot move a proposal from {current} to {target}; from {current} only: {allowed}"
        )


def record_audit(
    session: Session,
    proposal_id: str,
    actor: str,
    action: str,
    from_status: str | None,
    to_status: str | None,
    outcome: str,
    detail: str | None,
) -> None:
    session.add(
        AuditEntry(
            proposal_id=proposal_id,
            actor=actor,
            action=action,
            from_status=from_status,
            to_status=to_status,
            outcome=outcome,
            detail=detail,
        )
    )
