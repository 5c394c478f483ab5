"""The verdict on a refinement from before/after counts of its region's traffic (pure).

Each period's failure rate gets a Beta-Binomial posterior under a uniform prior,
p ~ Beta(1 + failing, 1 + total - failing). From DRAWS samples of each (a fixed seed, so the same
counts always give the same verdict):

    p_improved = P(p_after < p_before)
    interval   = the 2.5% and 97.5% quantiles of p_after - p_before (negative: fewer failures)

improved when p_improved >= DECISION_PROBABILITY, regressed when it is <= 1 - that, no_change
otherwise. Below `minimum_traffic` in either period the verdict is not_enough_data (the interval
is still reported).

Minimum traffic: the n per period at which a halving of the observed baseline failure rate p0
(to p1 = p0 / 2) is detected with 80% power by a two-sided 5% test of two proportions:

    n = (z_0.975 * sqrt(2 * pbar * (1 - pbar)) + z_0.8 * sqrt(p0 (1 - p0) + p1 (1 - p1)))^2
        / (p0 - p1)^2,        pbar = (p0 + p1) / 2

p0 is the baseline's posterior mean (never 0, so a region with no failures before asks for a
finite, large n), and n is at least MIN_TRAFFIC_FLOOR. A region failing 80% of the time needs ~23
queries per period; one failing 20% of the time ~199; 5% ~889.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

DRAWS = 20_000
SEED = 13
DECISION_PROBABILITY = 0.95
Z_ALPHA = 1.959964  # two-sided 5%
Z_POWER = 0.841621  # 80% power
MIN_TRAFFIC_FLOOR = 10


class Verdict(StrEnum):
    IMPROVED = "improved"
    NO_CHANGE = "no_change"
    REGRESSED = "regressed"
    NOT_ENOUGH_DATA = "not_enough_data"


@dataclass(frozen=True)
class Counts:
    failing: int
    total: int

    def __post_init__(self) -> None:
        if self.total < 0 or not 0 <= self.failing <= self.total:
            raise ValueError(f"need 0 <= failing <= total, got {self.failing} of {self.total}")

    @property
    def rate(self) -> float | None:
        return self.failing / self.total if self.total else None


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    before: Counts
    after: Counts
    p_improved: float  # P(after's failure rate < before's)
    diff_low: float  # 95% interval of after - before (failure rate)
    diff_high: float
    diff_mean: float
    minimum_traffic: int  # per period

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        return out


def minimum_traffic(before: Counts) -> int:
    """Queries needed per period to detect a halving of `before`'s failure rate (docstring)."""
    p0 = (before.failing + 1) / (before.total + 2)
    p1 = p0 / 2
    pbar = (p0 + p1) / 2
    root = Z_ALPHA * math.sqrt(2 * pbar * (1 - pbar)) + Z_POWER * math.sqrt(
        p0 * (1 - p0) + p1 * (1 - p1)
    )
    return max(MIN_TRAFFIC_FLOOR, math.ceil(root**2 / (p0 - p1) ** 2))


def assess(before: Counts, after: Counts, *, draws: int = DRAWS, seed: int = SEED) -> Assessment:
    """The verdict and interval for failure counts before and after a refinement shipped."""
    rng = np.random.default_rng(seed)
    p_before = rng.beta(1 + before.failing, 1 + before.total - before.failing, draws)
    p_after = rng.beta(1 + after.failing, 1 + after.total - after.failing, draws)
    diff = p_after - p_before
    p_improved = float(np.mean(diff < 0))
    low, high = (float(q) for q in np.quantile(diff, [0.025, 0.975]))
    needed = minimum_traffic(before)
    if min(before.total, after.total) < needed:
        verdict = Verdict.NOT_ENOUGH_DATA
    elif p_improved >= DECISION_PROBABILITY:
        verdict = Verdict.IMPROVED
    elif p_improved <= 1 - DECISION_PROBABILITY:
        verdict = Verdict.REGRESSED
    else:
        verdict = Verdict.NO_CHANGE
    return Assessment(
        verdict=verdict,
        before=before,
        after=after,
        p_improved=round(p_improved, 4),
        diff_low=round(low, 4),
        diff_high=round(high, 4),
        diff_mean=round(float(np.mean(diff)), 4),
        minimum_traffic=needed,
    )
