"""Which interactions failed, how badly, and why: the verdict from every signal on an interaction.

A pure function of the interaction and its signals (feedback rows, whether sent by the app or
detected from the session), so it gives the same answer whatever order events arrived in and
however often they were redelivered.

The score, folding the signals in time order (ties broken by event id):
- a signal counts only if it occurred at most FEEDBACK_WINDOW_S after the interaction;
- a negative signal (weight > 0) adds its weight, once per kind: a second thumbs-down, or the
  app's "rephrase" next to the one detected from the session, changes nothing (the heavier of
  the two is kept);
- thumbs up, thumbs down and a rating are one vote: the latest replaces the earlier one;
- a positive signal (weight < 0) lowers the score accumulated before it, never below 0; when it
  cancels all of it, the failure is cleared (a later negative signal counts afresh); a positive
  kind counts once until then (two copies are one copy);
- the same event (event id) twice counts once;
- failing = score >= FAILURE_THRESHOLD; the reasons are the negative signals in effect, in the
  order they happened (empty when not failing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from refinery.settings import SignalsSettings


class FeedbackLike(Protocol):
    event_id: str
    kind: str
    value: float | None
    scale_max: float
    text: str | None
    occurred_at: datetime
    source: str
    detail: dict[str, Any] | None


class InteractionLike(Protocol):
    occurred_at: datetime


@dataclass(frozen=True)
class FailureVerdict:
    failing: bool
    score: float
    reasons: list[str] = field(default_factory=list)


_VOTE_KINDS = {"thumbs_up", "thumbs_down", "rating"}


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def signal_weight(fb: FeedbackLike, settings: SignalsSettings) -> tuple[float, str]:
    """(weight, reason) of one signal; weight 0 means it does not count."""
    kind = fb.kind
    if kind == "rating":
        if fb.value is None or fb.scale_max <= 0:
            return 0.0, ""
        share = fb.value / fb.scale_max
        if share <= settings.rating_failure_fraction:
            return settings.signal_weight_rating_low, f"rating {fb.value:g}/{fb.scale_max:g}"
        if share >= settings.rating_success_fraction:
            return settings.signal_weight_rating_high, ""
        return 0.0, ""
    detail = fb.detail or {}
    if kind == "rephrase" and "after_s" in detail:
        return settings.signal_weight_rephrase, f"rephrased within {float(detail['after_s']):.0f} s"
    if kind == "abandon" and detail.get("after_rephrase"):
        return settings.signal_weight_abandon_after_rephrase, "abandoned after rephrasing"
    if kind == "abandon" and fb.source == "system":
        return settings.signal_weight_abandon, "abandoned"
    weight = getattr(settings, f"signal_weight_{kind}", 0.0)
    return float(weight), kind


def judge_interaction(
    interaction: InteractionLike, feedback: Sequence[FeedbackLike], settings: SignalsSettings
) -> FailureVerdict:
    start = as_utc(interaction.occurred_at)
    by_id = {
        fb.event_id: fb
        for fb in feedback
        if (as_utc(fb.occurred_at) - start).total_seconds() <= settings.feedback_window_s
    }
    counted = sorted(by_id.values(), key=lambda fb: (as_utc(fb.occurred_at), fb.event_id))
    # group -> (weight, reason) of the negative signals in effect, in the order they happened.
    active: dict[str, tuple[float, str]] = {}
    discount = 0.0  # what positive signals took off the active ones
    positives_applied: set[str] = set()
    for fb in counted:
        weight, reason = signal_weight(fb, settings)
        group = "vote" if fb.kind in _VOTE_KINDS else fb.kind
        if group == "vote":
            active.pop("vote", None)  # the latest vote replaces the earlier one
            if weight >= 0:
                positives_applied.discard("vote")
        if weight > 0:
            if group in active and active[group][0] >= weight:
                continue  # a duplicate of a signal in effect counts once
            active[group] = (weight, reason)
        elif weight < 0:
            if group in positives_applied:
                continue  # a second copy, or thumbs-up after thumbs-up: once
            positives_applied.add(group)
            discount -= weight
            if discount >= sum(w for w, _ in active.values()):
                active.clear()
                discount = 0.0
                positives_applied.clear()
    score = round(max(0.0, sum(w for w, _ in active.values()) - discount), 6)
    failing = score >= settings.failure_threshold and score > 0
    return FailureVerdict(
        failing=failing, score=score, reasons=[r for _, r in active.values()] if failing else []
    )
