"""The review stage's errors: one base type, `ReviewError`, that the CLI, the API and the web UI
map to their answers (exit 4 / 404, exit 3 / 409, exit 2 / 422)."""

from __future__ import annotations

from schemas.artifacts import ArtifactInvalid


class ReviewError(Exception):
    """Base of every error a review operation raises on purpose."""


class ProposalNotFound(ReviewError, LookupError):
    """No proposal has this id (HTTP 404)."""


class Refused(ReviewError):
    """The proposal's state refuses the attempt (HTTP 409); the attempt is audited."""


class DecisionConflict(Refused):
    """Someone else changed the proposal first (HTTP 409)."""


class TransitionRefused(Refused):
    """The proposal is not in a state that allows this action (HTTP 409)."""


class InvalidEdit(ReviewError, ValueError):
    """The edit does not fit the proposal, or the stored artifact is not one its consumers accept
    (HTTP 422); `loc` names the offending field, and for a dataset the row (rows.<index>.…).
    `stored`: the stored artifact is at fault (an audited refusal), not the request."""

    def __init__(
        self, field: str, message: str, *, loc: tuple[str | int, ...] = (), stored: bool = False
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.loc = loc or (field,)
        self.stored = stored

    @classmethod
    def of(cls, exc: ArtifactInvalid, *, stored: bool = False) -> InvalidEdit:
        return cls(".".join(str(p) for p in exc.loc), exc.message, loc=exc.loc, stored=stored)


def outcome(error: Exception) -> str:
    """The `outcome` label of a refused review attempt: `conflict` when someone else changed the
    proposal first, `invalid` when its status does not allow the action."""
    return "conflict" if isinstance(error, DecisionConflict) else "invalid"
