"""The impact verdict on synthetic counts, and its interval's coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from refinery.impact.verdict import Counts, Verdict, assess, minimum_traffic


def test_improved_when_the_failure_rate_halves_on_enough_traffic() -> None:
    a = assess(Counts(60, 100), Counts(20, 100))
    assert a.verdict is Verdict.IMPROVED
    assert a.p_improved > 0.99
    assert a.diff_low < -0.4 < a.diff_mean < a.diff_high < 0


def test_regressed_when_the_failure_rate_doubles() -> None:
    a = assess(Counts(40, 200), Counts(90, 200))
    assert a.verdict is Verdict.REGRESSED
    assert a.p_improved < 0.01
    assert 0 < a.diff_low < a.diff_high


def test_no_change_when_the_rates_match() -> None:
    a = assess(Counts(50, 100), Counts(49, 100))
    assert a.verdict is Verdict.NO_CHANGE
    assert a.diff_low < 0 < a.diff_high


def test_not_enough_data_below_the_minimum_traffic() -> None:
    # A clear halving, but on five queries after: not enough to tell.
    a = assess(Counts(60, 100), Counts(1, 5))
    assert a.verdict is Verdict.NOT_ENOUGH_DATA
    assert a.minimum_traffic > 5
    assert assess(Counts(0, 0), Counts(0, 0)).verdict is Verdict.NOT_ENOUGH_DATA


def test_minimum_traffic_grows_as_the_baseline_rate_falls() -> None:
    needed = [minimum_traffic(Counts(round(p * 1000), 1000)) for p in (0.8, 0.5, 0.2, 0.05)]
    assert needed == sorted(needed)
    # The textbook two-proportion figure for 50% -> 25% at 80% power, two-sided 5%: 58 per arm.
    assert needed[1] == 58
    assert minimum_traffic(Counts(0, 0)) >= 10


def test_same_counts_same_verdict() -> None:
    assert assess(Counts(30, 80), Counts(20, 80)) == assess(Counts(30, 80), Counts(20, 80))


def test_counts_are_checked() -> None:
    with pytest.raises(ValueError):
        Counts(5, 3)


@pytest.mark.parametrize(("p_before", "p_after", "n"), [(0.6, 0.3, 80), (0.2, 0.2, 150)])
def test_interval_covers_the_true_difference_95_percent_of_the_time(
    p_before: float, p_after: float, n: int
) -> None:
    rng = np.random.default_rng(2024)
    trials = 500
    covered = 0
    for i in range(trials):
        before = Counts(int(rng.binomial(n, p_before)), n)
        after = Counts(int(rng.binomial(n, p_after)), n)
        a = assess(before, after, draws=4_000, seed=i)
        covered += a.diff_low <= p_after - p_before <= a.diff_high
    assert 0.92 <= covered / trials <= 0.98
