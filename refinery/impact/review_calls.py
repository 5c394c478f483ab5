"""The impact stage's only calls into the review package (its public functions, never SQL).

The review package is being reshaped around one transition function; this module is the one place
to follow it: the new layout (refinery.review.decisions / errors) first, the old one otherwise.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

try:
    from refinery.review.decisions import approve as _approve
    from refinery.review.decisions import mark_applied as _mark_applied
    from refinery.review.errors import DecisionConflict, TransitionRefused
except ImportError:  # before the refactor
    from refinery.review.actions import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        mark_applied as _mark_applied,
    )
    from refinery.review.service import DecisionConflict  # type: ignore[no-redef, attr-defined, unused-ignore]
    from refinery.review.service import approve as _approve  # type: ignore[no-redef, attr-defined, unused-ignore]
    from refinery.review.transitions import TransitionRefused  # type: ignore[no-redef, attr-defined, unused-ignore]


def report_applied(
    sessions: sessionmaker[Session], proposal_id: str, *, actor: str, comment: str | None
) -> bool:
    """approved -> applied through the review package's own path (audited, one winner). False
    when it was not approved any more (someone reported it first)."""
    try:
        _mark_applied(sessions, proposal_id, actor=actor, comment=comment)
    except (TransitionRefused, DecisionConflict):
        return False
    return True


def approve(sessions: sessionmaker[Session], proposal_id: str, **kwargs: Any) -> None:
    """A reviewer's approval (the demo and tests approve as a reviewer would)."""
    _approve(sessions, proposal_id, **kwargs)
