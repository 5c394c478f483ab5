"""Score an app's review queue against the failure modes planted in it.

A planted intent is *recalled* when the clusters behind one proposal (its own and those merged
into it) whose members are mostly that intent hold at least COVERAGE of its failing interactions,
at least PURITY of their members being that intent.
Also counted: impure proposal clusters, redundant proposals (more than one proposal with a
cluster of the same intent), spurious ones (every cluster mostly traffic nobody planted as
failing), and whether each recalled intent got the expected kind.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from refinery.scenario.plant import Scenario
from refinery.store.models import Interaction, ProposalRow

PURITY = 0.8
COVERAGE = 0.6
OPEN_STATUSES = ("pending", "approved", "applied")


@dataclass
class IntentScore:
    intent: str
    expected_kind: str
    failing: int  # its failing interactions
    recalled: bool = False
    proposal_id: str | None = None
    kind: str | None = None
    purity: float = 0.0
    coverage: float = 0.0

    @property
    def kind_right(self) -> bool:
        return self.recalled and self.kind == self.expected_kind


@dataclass
class QueueScore:
    intents: list[IntentScore] = field(default_factory=list)
    proposals: int = 0
    clusters: int = 0  # clusters behind the proposals
    impure_clusters: int = 0
    redundant: int = 0  # proposals beyond the first whose members are mostly the same intent
    spurious: int = 0  # proposals whose members are mostly traffic planted as healthy

    @property
    def recalled(self) -> int:
        return sum(s.recalled for s in self.intents)

    @property
    def kinds_right(self) -> int:
        return sum(s.kind_right for s in self.intents)

    def misses(self) -> list[str]:
        """What falls short of the targets: at least N-1 of N intents recalled, at most one
        impure cluster per 10, no redundant or spurious proposal, every recalled kind right."""
        n = len(self.intents)
        out = []
        if self.recalled < n - 1:
            out.append(f"recalled {self.recalled} of {n} planted intents (target {n - 1})")
        if self.impure_clusters * 10 > max(self.clusters, 10):
            out.append(f"{self.impure_clusters} impure of {self.clusters} clusters")
        if self.redundant:
            out.append(f"{self.redundant} redundant proposal(s)")
        if self.spurious:
            out.append(f"{self.spurious} proposal(s) for healthy traffic")
        wrong = [s.intent for s in self.intents if s.recalled and not s.kind_right]
        if wrong:
            out.append(f"wrong kind for {', '.join(wrong)}")
        return out


def score_queue(session: Session, scenario: Scenario) -> QueueScore:
    members: dict[str, list[str]] = defaultdict(list)  # cluster id -> labels of failing members
    failing_per_label: Counter[str] = Counter()
    for interaction_id, cluster_id in session.execute(
        select(Interaction.interaction_id, Interaction.cluster_id).where(
            Interaction.app_id == scenario.app_id, Interaction.failing.is_(True)
        )
    ):
        label = scenario.truth.get(interaction_id, "unknown")
        failing_per_label[label] += 1
        if cluster_id is not None:
            members[cluster_id].append(label)

    rows = session.scalars(
        select(ProposalRow)
        .where(ProposalRow.app_id == scenario.app_id, ProposalRow.status.in_(OPEN_STATUSES))
        .order_by(ProposalRow.created_at, ProposalRow.id)
    ).all()
    result = QueueScore(proposals=len(rows))
    best: dict[str, IntentScore] = {
        intent: IntentScore(intent, kind, failing_per_label[intent])
        for intent, kind in sorted(scenario.planted.items())
    }
    proposals_per_label: Counter[str] = Counter()
    for row in rows:
        # The clusters behind a proposal, grouped by the intent most of their members are: a
        # prompt edit merged across topics (one instruction fixes them all) recalls each topic
        # it covers, and a topic split in two and merged back counts whole.
        groups: dict[str, Counter[str]] = defaultdict(Counter)
        for cluster_id in proposal_cluster_ids(row):
            labels = Counter(members.get(cluster_id, []))
            if not labels:
                continue
            result.clusters += 1
            label, count = labels.most_common(1)[0]
            if count < PURITY * sum(labels.values()):
                result.impure_clusters += 1
            groups[label].update(labels)
        for label, labels in groups.items():
            if label not in scenario.planted:
                continue
            purity = labels[label] / sum(labels.values())
            coverage = labels[label] / max(1, failing_per_label[label])
            candidate = best[label]
            if (purity >= PURITY, coverage) > (candidate.purity >= PURITY, candidate.coverage):
                candidate.proposal_id, candidate.kind = row.id, row.kind
                candidate.purity, candidate.coverage = round(purity, 3), round(coverage, 3)
                candidate.recalled = purity >= PURITY and coverage >= COVERAGE
        proposals_per_label.update(groups.keys())
        if groups and not set(groups) & set(scenario.planted):
            result.spurious += 1
    result.redundant = sum(
        n - 1 for label, n in proposals_per_label.items() if label in scenario.planted
    )
    result.intents = list(best.values())
    return result


def proposal_cluster_ids(row: ProposalRow) -> list[str]:
    """The proposal's own cluster, then the clusters merged into it (evidence parts)."""
    ids = [row.cluster_id]
    evidence = (row.payload or {}).get("evidence") or {}
    for part in evidence.get("parts") or []:
        cluster_id = part.get("cluster_id") if isinstance(part, dict) else None
        if cluster_id and cluster_id not in ids:
            ids.append(cluster_id)
    return ids
