"""The failure score: each signal alone, combinations, order, late feedback, duplicates."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinery.ingest.failure import judge_interaction
from refinery.settings import Settings

S = Settings(_env_file=None)
T0 = datetime(2026, 11, 27, 10, tzinfo=UTC)


@dataclass
class Interaction:
    occurred_at: datetime = T0


@dataclass
class Signal:
    kind: str
    at: float = 10.0  # seconds after the interaction
    value: float | None = None
    scale_max: float = 5
    text: str | None = None
    source: str = "app"
    detail: dict[str, Any] | None = None
    event_id: str = ""

    @property
    def occurred_at(self) -> datetime:
        return T0 + timedelta(seconds=self.at)

    def __post_init__(self) -> None:
        self.event_id = self.event_id or f"{self.kind}@{self.at}"


def judge(*signals: Signal, settings: Settings = S):
    return judge_interaction(Interaction(), list(signals), settings)


@pytest.mark.parametrize(
    ("signal", "failing", "score", "reasons"),
    [
        (Signal("thumbs_down"), True, 1.0, ["thumbs_down"]),
        (Signal("thumbs_up"), False, 0.0, []),
        (Signal("rating", value=1), True, 1.0, ["rating 1/5"]),
        (Signal("rating", value=2), True, 1.0, ["rating 2/5"]),
        (Signal("rating", value=3), False, 0.0, []),
        (Signal("rating", value=5), False, 0.0, []),
        (Signal("rating", value=3, scale_max=10), True, 1.0, ["rating 3/10"]),
        (Signal("comment", text="meh"), False, 0.0, []),
        (Signal("correction", text="the right answer"), True, 1.0, ["correction"]),
        (Signal("regenerate"), True, 1.0, ["regenerate"]),
        (Signal("copy"), False, 0.0, []),
        (Signal("edit", text="fixed"), True, 1.0, ["edit"]),
        (Signal("escalate"), True, 1.0, ["escalate"]),
        (Signal("rephrase"), True, 1.0, ["rephrase"]),
        (
            Signal("rephrase", source="system", detail={"after_s": 40.2, "similarity": 0.9}),
            True,
            1.0,
            ["rephrased within 40 s"],
        ),
        (Signal("abandon"), False, 0.5, []),
        (Signal("abandon", source="system", detail={"after_rephrase": False}), False, 0.5, []),
        (
            Signal("abandon", source="system", detail={"after_rephrase": True}),
            True,
            1.0,
            ["abandoned after rephrasing"],
        ),
    ],
)
def test_each_signal_alone(signal, failing, score, reasons):
    verdict = judge(signal)
    assert (verdict.failing, verdict.score, verdict.reasons) == (failing, score, reasons)


def test_reasons_in_the_order_they_happened():
    verdict = judge(
        Signal("rephrase", at=40, source="system", detail={"after_s": 40}),
        Signal("thumbs_down", at=5),
    )
    assert verdict.failing and verdict.score == 2.0
    assert "; ".join(verdict.reasons) == "thumbs_down; rephrased within 40 s"


def test_a_later_positive_signal_clears_a_failure():
    assert not judge(Signal("thumbs_down", at=5), Signal("thumbs_up", at=60)).failing
    assert not judge(Signal("regenerate", at=5), Signal("thumbs_up", at=60)).failing
    assert not judge(Signal("rephrase", at=5), Signal("rating", at=60, value=5)).failing


def test_an_earlier_positive_signal_does_not_cancel_a_later_failure():
    verdict = judge(Signal("thumbs_up", at=5), Signal("thumbs_down", at=60))
    assert verdict.failing and verdict.reasons == ["thumbs_down"]
    verdict = judge(Signal("copy", at=5), Signal("regenerate", at=60))
    assert verdict.failing and verdict.reasons == ["regenerate"]


def test_the_latest_vote_wins():
    assert not judge(Signal("thumbs_down", at=1), Signal("rating", at=2, value=3)).failing
    assert judge(Signal("rating", at=1, value=5), Signal("thumbs_down", at=2)).failing
    verdict = judge(
        Signal("thumbs_down", at=1), Signal("thumbs_up", at=2), Signal("thumbs_down", at=3)
    )
    assert verdict.failing and verdict.score == 1.0


def test_a_weak_positive_lowers_but_does_not_clear_two_failures():
    verdict = judge(Signal("regenerate", at=1), Signal("escalate", at=2), Signal("copy", at=3))
    assert verdict.failing and verdict.score == 1.5
    assert verdict.reasons == ["regenerate", "escalate"]


def test_weak_signals_add_up():
    verdict = judge(Signal("abandon", at=1, source="system", detail={}), Signal("copy", at=0))
    assert not verdict.failing
    custom = Settings(_env_file=None, signal_weight_abandon=0.5, signal_weight_edit=0.5)
    verdict = judge(Signal("edit", at=1, text="x"), Signal("abandon", at=2), settings=custom)
    assert verdict.failing and verdict.score == 1.0 and verdict.reasons == ["edit", "abandon"]


def test_duplicates_count_once():
    once = judge(Signal("thumbs_down", at=5))
    twice = judge(Signal("thumbs_down", at=5), Signal("thumbs_down", at=7))
    assert once == twice
    # The app says "rephrase" and the session analysis found it too: one signal, the heavier kept.
    verdict = judge(
        Signal("rephrase", at=5), Signal("rephrase", at=6, source="system", detail={"after_s": 6})
    )
    assert verdict.score == 1.0 and len(verdict.reasons) == 1


def test_late_feedback_counts_within_the_window_only():
    hours_later = 5 * 3600
    assert judge(Signal("thumbs_down", at=hours_later)).failing
    assert not judge(Signal("thumbs_down", at=S.feedback_window_s + 1)).failing
    short = Settings(_env_file=None, feedback_window_s=3600)
    assert not judge(Signal("thumbs_down", at=hours_later), settings=short).failing


def test_weights_and_threshold_are_settings():
    strict = Settings(_env_file=None, failure_threshold=2.0)
    assert not judge(Signal("thumbs_down"), settings=strict).failing
    assert judge(Signal("thumbs_down", at=1), Signal("regenerate", at=2), settings=strict).failing
    no_copy = Settings(_env_file=None, signal_weight_copy=0.0)
    assert (
        judge(
            Signal("regenerate", at=1),
            Signal("copy", at=2),
            Signal("escalate", at=3),
            settings=no_copy,
        ).score
        == 2.0
    )


KINDS = [
    "thumbs_up",
    "thumbs_down",
    "rating",
    "comment",
    "correction",
    "regenerate",
    "copy",
    "edit",
    "escalate",
    "rephrase",
    "abandon",
]


def _signal(kind: str, at: float, value: float) -> Signal:
    return Signal(
        kind,
        at=at,
        value=value if kind == "rating" else None,
        text="t" if kind in {"comment", "correction", "edit"} else None,
    )


@given(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000), st.integers(0, 5)),
        max_size=8,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.randoms(use_true_random=False),
)
def test_the_verdict_does_not_depend_on_arrival_order(raw, rng):
    signals = [_signal(kind, at, value) for kind, at, value in raw]
    shuffled = signals[:]
    rng.shuffle(shuffled)
    a, b = judge(*signals), judge(*shuffled)
    assert a == b
    assert a.score >= 0 and a.failing == (a.score >= S.failure_threshold)
    assert bool(a.reasons) == a.failing
    # Redelivery: every signal twice changes nothing.
    assert judge(*signals, *signals) == a


def test_every_pair_of_signals_is_judged():
    # Two signals of any kinds, in either order: no error, and a negative-only pair fails.
    negative = {"thumbs_down", "correction", "regenerate", "edit", "escalate", "rephrase"}
    for first, second in itertools.product(KINDS, repeat=2):
        verdict = judge(_signal(first, 1, 1), _signal(second, 2, 1))
        if first in negative and second in negative:
            assert verdict.failing, (first, second)
        if second in {"thumbs_up"}:
            assert not verdict.failing, (first, second)
