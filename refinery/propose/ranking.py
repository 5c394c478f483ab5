"""Expected impact of a proposal: which of the queue to review first.

score = 100 x (0.4 traffic share + 0.25 user share + 0.15 growth + 0.2 severity), each part in
[0, 1] and shown in the evidence (schemas.proposals.ExpectedImpact):
- traffic share: the proposal's failing interactions / the app's failing interactions;
- user share: distinct sessions (events carry no user id; a session is one user's visit) with a
  failing interaction here / the app's distinct sessions;
- growth: the stored growth_rate g as g / (1 + g) when rising, else 0 (doubling = 0.5);
- severity: the members' mean failure score over twice FAILURE_THRESHOLD, capped at 1: a
  correction plus a thumbs-down weighs more than a lone rephrase.
Pure: the app's totals come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from refinery.propose.drafting import DraftInput
from schemas.proposals import ExpectedImpact

WEIGHTS = {"traffic_share": 0.4, "user_share": 0.25, "growth": 0.15, "severity": 0.2}


@dataclass(frozen=True)
class AppTraffic:
    failing: int  # the app's failing interactions
    sessions: int  # the app's distinct sessions


def expected_impact(
    data: DraftInput, traffic: AppTraffic, failure_threshold: float
) -> ExpectedImpact:
    members = data.members
    n = len(members)
    traffic_share = min(1.0, n / traffic.failing) if traffic.failing else 0.0
    sessions = {m.session_id for m in members if m.session_id}
    user_share = min(1.0, len(sessions) / traffic.sessions) if traffic.sessions else 0.0
    g = data.evidence.growth_rate or 0.0
    growth = g / (1.0 + g) if g > 0 else 0.0
    mean_score = sum(m.failure_score for m in members) / n if n else 0.0
    severity = min(1.0, mean_score / (2 * failure_threshold)) if failure_threshold > 0 else 0.0
    parts = {
        "traffic_share": round(traffic_share, 3),
        "user_share": round(user_share, 3),
        "growth": round(growth, 3),
        "severity": round(severity, 3),
    }
    score = 100 * sum(WEIGHTS[k] * v for k, v in parts.items())
    return ExpectedImpact(score=round(score, 1), weights=dict(WEIGHTS), **parts)
