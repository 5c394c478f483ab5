"""Which interactions failed, and why: the verdict from all feedback joined to an interaction.

A pure function of the interaction and its feedback, so it gives the same answer whatever order
events arrived in and however often they were redelivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from refinery.settings import Settings


class FeedbackLike(Protocol):
    kind: str
    value: float | None
    scale_max: float
    text: str | None


@dataclass(frozen=True)
class FailureVerdict:
    failing: bool
    reasons: list[str]


# Implicit signals that, on their own, say the response did not serve the user.
_FAILING_IMPLICIT = {"regenerate", "rephrase", "escalate", "abandon", "edit"}


def judge_interaction(
    interaction: object, feedback: Sequence[FeedbackLike], settings: Settings
) -> FailureVerdict:
    reasons: list[str] = []
    for fb in sorted(feedback, key=lambda f: (f.kind, f.value or 0)):
        if fb.kind == "thumbs_down":
            reasons.append("thumbs_down")
        elif fb.kind == "rating" and fb.value is not None:
            if fb.value <= settings.rating_failure_fraction * fb.scale_max:
                reasons.append(f"rating {fb.value:g}/{fb.scale_max:g}")
        elif fb.kind == "correction":
            reasons.append("correction")
        elif fb.kind in _FAILING_IMPLICIT:
            reasons.append(fb.kind)
    # Duplicate signals of one kind count once.
    reasons = list(dict.fromkeys(reasons))
    return FailureVerdict(failing=bool(reasons), reasons=reasons)
