"""Propose refinements for an app's clusters and keep the review queue free of duplicates.

Owns inserts and system updates of proposals. Re-running is idempotent: the open proposal for a
(cluster, kind) is updated only if its content changed; a cluster whose proposal reviewers already
decided gets no new one; proposals of retired clusters are superseded. A drafter that may call a
server is asked with no transaction open (`propose_and_commit`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from refinery.cluster.trends import growth
from refinery.corpus.index import CorpusIndex
from refinery.corpus.store import corpus_index
from refinery.embed.embedder import get_embedder
from refinery.embed.service import query_vector, vectors_from_rows
from refinery.ops.metrics import PROPOSALS, after_commit
from refinery.propose.drafters import (
    TEMPLATE,
    ChatDrafter,
    Drafter,
    TemplateDrafter,
    make_drafter,
    marked,
)
from refinery.propose.drafting import DraftInput, MemberEvidence, draft
from refinery.propose.ranking import AppTraffic, expected_impact
from refinery.propose.topics import TopicVectors, group_same_topic
from refinery.review.decisions import system_transition
from refinery.review.transitions import record_audit
from refinery.settings import Settings
from refinery.store.db import session_scope
from refinery.store.models import (
    AuditEntry,
    Cluster,
    Embedding,
    Feedback,
    Interaction,
    ProposalRow,
)
from refinery.store.prompts import current_prompt
from schemas.proposals import (
    Evidence,
    EvidenceExample,
    EvidencePart,
    FeedbackSummary,
    FineTuneDatasetProposal,
    ProposalKind,
    ProposalStatus,
    RagSourceProposal,
    SystemPromptEditProposal,
    TrendBucket,
)

AnyProposal = SystemPromptEditProposal | RagSourceProposal | FineTuneDatasetProposal

SYSTEM_ACTOR = "system:proposer"
# Passes of propose_and_commit: a draft whose evidence changed again by the last one is stored in
# the template's words (it was drafted from evidence that is no longer the cluster's).
WORDING_PASSES = 3
STALE_WORDING = "rejected: the evidence changed while the model worded it"

Word = Callable[[DraftInput, AnyProposal], AnyProposal | None]
"""A drafter's word(), or None: not worded yet, store nothing for this draft in this pass."""


@dataclass
class ProposeResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    skipped_clusters: list[str] = field(default_factory=list)
    # Clusters whose draft the pass found unworded (propose_and_commit words them and runs again).
    unworded: list[str] = field(default_factory=list)


def propose_for_app(
    session: Session,
    app_id: str,
    settings: Settings,
    model: str,
    drafter: Drafter | None = None,
) -> ProposeResult:
    """In the caller's transaction, the drafter asked inside it. `drafter` words the templates'
    drafts (refinery.propose.drafters); default: the one the settings select (templates unless
    DRAFT_LLM_ENDPOINT is set). Workers use `propose_and_commit`, which asks a model outside."""
    result = ProposeResult()
    with _drafter_of(settings, drafter) as chosen:
        _propose(session, app_id, settings, model, chosen.word, result)
    return result


def propose_and_commit(
    app_id: str, settings: Settings, model: str, drafter: Drafter | None = None
) -> ProposeResult:
    """`propose_for_app` in a transaction of its own, the drafter (when not the templates, which
    word in memory) asked with no transaction open: a remote model would otherwise hold the
    proposals' rows, and a connection, for as long as it takes. The caller holds the app's lock.

    A pass that finds drafts still to word writes none of them, nor supersedes anything, and is
    rolled back; they are worded; the next pass reads everything again and stores the words of
    each draft whose template content (fingerprint) is still the one worded. A draft changed
    meanwhile is worded again, or, on the last pass, stored in the template's words
    (fallback_reason says so); a proposal a reviewer decided or edited meanwhile is theirs, as in
    any pass (`transition()`'s one winner)."""
    with _drafter_of(settings, drafter) as chosen:
        if isinstance(chosen, TemplateDrafter):
            with session_scope(settings.database_url) as session:
                return propose_for_app(session, app_id, settings, model, chosen)
        outside = _WordedOutside(chosen)
        for n in range(1, WORDING_PASSES + 1):
            outside.last_pass = n == WORDING_PASSES
            result = ProposeResult()
            with session_scope(settings.database_url) as session:
                _propose(session, app_id, settings, model, outside.word, result)
                if result.unworded:
                    session.rollback()
            if not result.unworded:
                return result
            outside.word_pending()  # no transaction open
    raise AssertionError("the last pass words every draft")


@contextmanager
def _drafter_of(settings: Settings, drafter: Drafter | None) -> Iterator[Drafter]:
    """`drafter`, or the settings' (closed after use)."""
    chosen = drafter or make_drafter(settings)
    try:
        yield chosen
    finally:
        if drafter is None and isinstance(chosen, ChatDrafter):
            chosen.close()


class _WordedOutside:
    """A drafter's words, asked for between passes of propose_and_commit, with no transaction
    open. Keyed by the template draft they word, (cluster, kind, fingerprint): a pass takes them
    only for a draft whose content is still the one the drafter saw."""

    def __init__(self, drafter: Drafter) -> None:
        self._drafter = drafter
        self._worded: dict[tuple[str, str, str], AnyProposal] = {}
        self._pending: dict[tuple[str, str, str], tuple[DraftInput, AnyProposal]] = {}
        self.last_pass = False

    def word(self, data: DraftInput, proposal: AnyProposal) -> AnyProposal | None:
        key = (data.cluster_id, proposal.kind.value, fingerprint_of(proposal))
        if key in self._worded:
            return self._worded[key]
        if self.last_pass:
            return marked(proposal, TEMPLATE, STALE_WORDING)
        self._pending[key] = (data, proposal)
        return None

    def word_pending(self) -> None:
        for key, (data, proposal) in self._pending.items():
            self._worded[key] = self._drafter.word(data, proposal)
        self._pending.clear()


def _propose(
    session: Session,
    app_id: str,
    settings: Settings,
    model: str,
    word: Word,
    result: ProposeResult,
) -> None:
    clusters = session.scalars(
        select(Cluster)
        .where(Cluster.app_id == app_id, Cluster.active.is_(True))
        .order_by(Cluster.id)
    ).all()
    drafts: list[ClusterDraft] = []
    corpus = corpus_index(session, app_id, model)
    for cluster in clusters:
        if cluster.size < settings.proposal_min_failures:
            result.skipped_clusters.append(cluster.id)
            continue
        drafts.append(_draft_input(session, cluster, settings, model, corpus))
    traffic = _app_traffic(session, app_id)
    produced: set[tuple[str, str]] = set()
    transitions: Counter[tuple[str, str]] = Counter()  # (kind, status entered) -> proposals
    for cluster, proposal, data in _failure_modes(
        drafts, settings.proposal_merge_topic_closeness, result
    ):
        kind = proposal.kind.value
        produced.add((cluster.id, kind))
        impact = expected_impact(data, traffic, settings.failure_threshold)
        proposal = proposal.model_copy(
            update={"evidence": proposal.evidence.model_copy(update={"expected_impact": impact})}
        )
        before = len(result.created)
        _upsert(session, cluster, proposal, result, word=partial(word, data))
        transitions[(kind, ProposalStatus.PENDING)] += len(result.created) - before
    if result.unworded:
        return  # the caller rolls this pass back, words them, and proposes again

    # Pending proposals the current evidence no longer calls for: their cluster was retired or
    # merged, or its refinement now comes from another cluster's proposal.
    for row in session.scalars(
        select(ProposalRow).where(
            ProposalRow.app_id == app_id, ProposalRow.status == ProposalStatus.PENDING
        )
    ):
        if (row.cluster_id, row.kind) not in produced and system_transition(
            session,
            row,
            actor=SYSTEM_ACTOR,
            action="supersede",
            detail="its cluster was merged or retired, or the evidence changed",
            status=ProposalStatus.SUPERSEDED,
        ):
            result.superseded.append(row.id)
            transitions[(row.kind, ProposalStatus.SUPERSEDED)] += 1
    session.flush()

    def count() -> None:
        for (kind, status), n in transitions.items():
            if n:
                PROPOSALS.labels(kind, status).inc(n)

    # Counted when the caller commits: a pass that rolls back (and is retried) created nothing.
    after_commit(session, count)


def _edited_by_a_reviewer(session: Session, proposal_id: str) -> bool:
    return (
        session.scalar(
            select(AuditEntry.id)
            .where(AuditEntry.proposal_id == proposal_id, AuditEntry.action == "edit")
            .limit(1)
        )
        is not None
    )


@dataclass
class ClusterDraft:
    cluster: Cluster
    data: DraftInput
    topic: TopicVectors | None  # its members' vectors; None when none are embedded


def _refinement_key(proposal: AnyProposal) -> tuple[str, ...]:
    """Drafts with equal keys propose the same kind of change to the same target."""
    if isinstance(proposal, SystemPromptEditProposal):
        return (proposal.kind.value, proposal.artifact.prompt_name, proposal.artifact.instruction)
    if isinstance(proposal, FineTuneDatasetProposal):
        return (proposal.kind.value, proposal.artifact.system_prompt)
    return (proposal.kind.value,)


def _one_proposal_per_failure_mode(
    drafts: list[ClusterDraft], min_topic_closeness: float, result: ProposeResult
) -> list[tuple[Cluster, AnyProposal]]:
    """(anchor cluster, template draft) per failure mode; see _failure_modes."""
    return [(c, p) for c, p, _ in _failure_modes(drafts, min_topic_closeness, result)]


def _failure_modes(
    drafts: list[ClusterDraft], min_topic_closeness: float, result: ProposeResult
) -> list[tuple[Cluster, AnyProposal, DraftInput]]:
    """Each failure mode's template draft with its anchor cluster and the (pooled) input behind it.

    Clusters of one failure mode reach reviewers as one proposal, owned by the largest of them
    (the same clusters always give the same owner, so the upsert keyed by (cluster, kind) stays
    idempotent, and the parts' own pending proposals are superseded as no longer produced).

    - Prompt edits adding the same instruction to the same prompt merge whatever their topics:
      one behaviour (say, answers that are too long) often spans several query topics, and
      reviewers approve one edit, not several copies of it.
    - Datasets and knowledge sources merge only when their clusters are one topic split in two
      (refinery.propose.topics): gaps on different topics need different sources.
    """
    out: list[tuple[Cluster, AnyProposal, DraftInput]] = []
    by_refinement: dict[tuple[str, ...], list[ClusterDraft]] = {}
    for d in drafts:
        proposal = draft(d.data)
        if proposal is None:
            result.skipped_clusters.append(d.cluster.id)
        else:
            by_refinement.setdefault(_refinement_key(proposal), []).append(d)
    for key, same in by_refinement.items():
        if key[0] == ProposalKind.SYSTEM_PROMPT_EDIT:
            groups = [list(range(len(same)))]
        else:
            groups = group_same_topic([d.topic for d in same], min_topic_closeness)
        for indexes in groups:
            parts = sorted(
                (same[i] for i in indexes), key=lambda d: (-d.cluster.size, d.cluster.id)
            )
            pooled = _merged_input([d.data for d in parts]) if len(parts) > 1 else None
            merged = draft(pooled) if pooled is not None else None
            if pooled is not None and merged is not None and _refinement_key(merged) == key:
                out.append((parts[0].cluster, merged, pooled))
                continue
            # Single cluster, or (defensively) pooled evidence that no longer calls for the same
            # refinement: each part proposes on its own.
            for d in parts:
                own = draft(d.data)
                assert own is not None
                out.append((d.cluster, own, d.data))
    return out


def merged_growth(trend: list[TrendBucket], baseline_buckets: int | None) -> float | None:
    """refinery.cluster.trends.growth of the newest bucket of a summed trend."""
    if not trend or not baseline_buckets:
        return None
    counts = [b.count for b in trend]
    return round(growth(counts[-1], counts[max(0, len(counts) - 1 - baseline_buckets) : -1]), 2)


def _merged_input(inputs: list[DraftInput]) -> DraftInput:
    """One draft input from several clusters' (anchor first): members pooled, so every count in
    the title and rationale is over the merged population, and each part listed with its topic."""
    primary = inputs[0]
    keyword_counts: Counter[str] = Counter()
    for data in inputs:
        keyword_counts.update(data.keywords)
    keywords = [k for k, _ in sorted(keyword_counts.items(), key=lambda kv: -kv[1])][:5]
    signals: Counter[str] = Counter()
    for data in inputs:
        signals.update(data.evidence.signal_counts)
    examples = list(primary.evidence.examples)
    examples += [d.evidence.examples[0] for d in inputs[1:] if d.evidence.examples]
    trend: Counter = Counter()
    for data in inputs:
        # Buckets are aligned to the epoch, so equal starts are the same bucket in every cluster.
        for bucket in data.evidence.trend:
            trend[bucket.start] += bucket.count
    summed = [TrendBucket(start=start, count=n) for start, n in sorted(trend.items())]
    evidence = primary.evidence.model_copy(
        update={
            "size": sum(d.evidence.size for d in inputs),
            "signal_counts": dict(sorted(signals.items())),
            "examples": examples,
            "related_cluster_ids": [d.cluster_id for d in inputs[1:]],
            "parts": [
                EvidencePart(
                    cluster_id=d.cluster_id,
                    label=d.evidence.label,
                    keywords=list(d.evidence.keywords),
                    size=d.evidence.size,
                    trend=list(d.evidence.trend),
                    growth_rate=d.evidence.growth_rate,
                    emerging=d.evidence.emerging,
                    emerging_reason=d.evidence.emerging_reason,
                    region_failure_rate=d.evidence.region_failure_rate,
                )
                for d in inputs
            ],
            "trend": summed,
            # Figures of the whole from its parts, never the anchor's alone: the growth of the
            # summed trend (same rule as refinery.cluster.trends), emerging if any part is.
            "growth_rate": merged_growth(summed, primary.evidence.trend_baseline_buckets),
            "emerging": any(d.evidence.emerging for d in inputs),
            "emerging_reason": next(
                (
                    reason
                    for reason in ("new", "rising")
                    if any(d.evidence.emerging_reason == reason for d in inputs)
                ),
                None,
            ),
            "region_failure_rate": None,
        }
    )
    return replace(
        primary,
        keywords=keywords,
        members=[m for d in inputs for m in d.members],
        evidence=evidence,
    )


def fingerprint_of(proposal: AnyProposal) -> str:
    """The template draft's content, without who worded it: a model's rewording of unchanged
    evidence is not a change (and is not asked for again)."""
    payload = proposal.model_dump(mode="json")
    # The expected impact moves with the app's other traffic: it is refreshed with the evidence,
    # never on its own (which would re-draft every proposal of the app on every refine).
    for key in ("drafted_by", "fallback_reason", "expected_impact"):
        payload["evidence"].pop(key, None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _upsert(
    session: Session,
    cluster: Cluster,
    proposal: AnyProposal,
    result: ProposeResult,
    word: Callable[[AnyProposal], AnyProposal | None] | None = None,
) -> None:
    """`proposal` is the template's draft; `word` (a drafter) words it only when it is stored;
    nothing is stored for a draft it has not worded yet (None: result.unworded)."""
    fingerprint = fingerprint_of(proposal)
    kind = proposal.kind.value
    word = word or (lambda p: p)
    open_row = session.scalars(
        select(ProposalRow).where(
            ProposalRow.cluster_id == cluster.id,
            ProposalRow.kind == kind,
            ProposalRow.status == ProposalStatus.PENDING,
        )
    ).first()
    if open_row is not None:
        if open_row.fingerprint == fingerprint:
            result.unchanged.append(open_row.id)
            return
        if _edited_by_a_reviewer(session, open_row.id):
            # A person's edit outranks a template redraft; the evidence shown stays as they saw it.
            result.unchanged.append(open_row.id)
            return
        worded = word(proposal)
        if worded is None:
            result.unworded.append(cluster.id)
            return
        proposal = worded
        if not system_transition(
            session,
            open_row,
            actor=SYSTEM_ACTOR,
            action="refresh",
            detail="evidence changed",
            payload=proposal.model_dump(mode="json"),
            fingerprint=fingerprint,
            title=proposal.title,
        ):
            result.unchanged.append(open_row.id)  # a reviewer decided it meanwhile
            return
        result.updated.append(open_row.id)
        return
    decided = session.scalar(
        select(ProposalRow.id).where(
            ProposalRow.cluster_id == cluster.id,
            ProposalRow.kind == kind,
            ProposalRow.status.in_(
                [ProposalStatus.APPROVED, ProposalStatus.REJECTED, ProposalStatus.APPLIED]
            ),
        )
    )
    if decided is not None:
        # Reviewers already ruled on this failure mode; do not ask them again.
        result.unchanged.append(decided)
        return
    worded = word(proposal)
    if worded is None:
        result.unworded.append(cluster.id)
        return
    proposal = worded
    row = ProposalRow(
        id=f"p_{uuid.uuid4().hex[:16]}",
        app_id=cluster.app_id,
        cluster_id=cluster.id,
        kind=kind,
        status=ProposalStatus.PENDING,
        version=1,
        title=proposal.title,
        payload=proposal.model_dump(mode="json"),
        fingerprint=fingerprint,
    )
    session.add(row)
    session.flush()
    record_audit(session, row.id, SYSTEM_ACTOR, "create", None, "pending", "ok", None)
    result.created.append(row.id)


def _app_traffic(session: Session, app_id: str) -> AppTraffic:
    failing, sessions = session.execute(
        select(
            func.count(Interaction.id).filter(Interaction.failing.is_(True)),
            func.count(func.distinct(Interaction.session_id)),
        ).where(Interaction.app_id == app_id)
    ).one()
    return AppTraffic(failing=int(failing or 0), sessions=int(sessions or 0))


def _draft_input(
    session: Session,
    cluster: Cluster,
    settings: Settings,
    model: str,
    corpus: CorpusIndex | None = None,
) -> ClusterDraft:
    rows = session.execute(
        select(Interaction, Embedding.vector, Embedding.dim)
        .join(Embedding, query_vector(model))
        .where(Interaction.cluster_id == cluster.id, Interaction.failing.is_(True))
        .order_by(Interaction.id)
    ).all()
    interactions = [r[0] for r in rows]
    topic: TopicVectors | None = None
    ordered: np.ndarray | None = None
    # Representative first: closest to the centroid.
    if rows:
        vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim)
        topic = TopicVectors.of(vectors)
        centroid = np.frombuffer(cluster.centroid, dtype=np.float32)
        order = np.argsort(-(vectors @ centroid), kind="stable")
        interactions = [interactions[i] for i in order]
        ordered = vectors[order]
    hits = (
        corpus.search(ordered, settings.rag_hits_per_query)
        if corpus is not None and ordered is not None and len(corpus)
        else [[] for _ in interactions]
    )
    feedback: dict[str, list[Feedback]] = {}
    for fb in session.scalars(
        select(Feedback)
        .where(
            Feedback.app_id == cluster.app_id,
            Feedback.interaction_id.in_([i.interaction_id for i in interactions]),
        )
        .order_by(Feedback.occurred_at, Feedback.id)
    ):
        feedback.setdefault(fb.interaction_id, []).append(fb)
    members = [
        MemberEvidence(
            interaction_id=i.interaction_id,
            query=i.query,
            response=i.response,
            sources=i.sources or [],
            feedback=[(f.kind, f.value, f.text) for f in feedback.get(i.interaction_id, [])],
            occurred_at=i.occurred_at.isoformat(),
            session_id=i.session_id,
            failure_score=float(i.failure_score or 0.0),
            vector=ordered[n] if ordered is not None else None,
            corpus_hits=hits[n],
        )
        for n, i in enumerate(interactions)
    ]
    prompt_names = Counter(i.prompt_name for i in interactions if i.prompt_name)
    prompt_name = (
        min(prompt_names.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if prompt_names
        else settings.default_prompt_name
    )
    prompt = current_prompt(session, app_id=cluster.app_id, name=prompt_name)
    # Count reasons by their signal name: "rephrased within 40 s" and "... 35 s" are one signal.
    reasons = Counter(r.split(" ", 1)[0] for i in interactions for r in (i.failure_reasons or []))
    evidence = Evidence(
        cluster_id=cluster.id,
        label=cluster.label,
        keywords=list(cluster.keywords or []),
        size=len(interactions),
        signal_counts=dict(sorted(reasons.items())),
        examples=[
            EvidenceExample(
                interaction_id=m.interaction_id,
                query=m.query,
                response=m.response,
                feedback=[FeedbackSummary(kind=k, value=v, text=t) for k, v, t in m.feedback],
                failure_reasons=list(i.failure_reasons or []),
            )
            for m, i in zip(members[: settings.proposal_max_examples], interactions, strict=False)
        ],
        # Labels and trend as the last re-cluster stored them (refinery.cluster).
        title=cluster.title,
        representative_queries=list(cluster.representative_queries or []),
        trend=[TrendBucket.model_validate(b) for b in cluster.trend or []],
        trend_bucket_s=settings.trend_bucket_s if cluster.trend else None,
        trend_baseline_buckets=settings.trend_baseline_buckets if cluster.trend else None,
        growth_rate=cluster.growth_rate,
        emerging=bool(cluster.emerging),
        emerging_reason=cluster.emerging_reason,
        region_failure_rate=cluster.region_failure_rate,
    )
    data = DraftInput(
        app_id=cluster.app_id,
        cluster_id=cluster.id,
        keywords=list(cluster.keywords or []),
        members=members,
        evidence=evidence,
        prompt_name=prompt_name,
        prompt_version=prompt.version if prompt else None,
        prompt_text=prompt.text if prompt else "",
        retrieval_low_score=settings.retrieval_low_score,
        retrieval_gap_fraction=settings.retrieval_gap_fraction,
        min_corrections=settings.proposal_min_corrections,
        min_evidence_share=settings.proposal_min_evidence_share,
        corpus_version=corpus.version if corpus is not None else None,
        rag_match_floor=settings.rag_match_floor,
        rag_candidate_min_share=settings.rag_candidate_min_share,
        rag_max_candidates=settings.rag_max_candidates,
        question_merge_similarity=settings.question_merge_similarity,
        # The model loads only if a prompt edit is drafted against a non-empty prompt.
        embed=get_embedder(settings).embed,
        prompt_duplicate_similarity=settings.prompt_duplicate_similarity,
        prompt_conflict_similarity=settings.prompt_conflict_similarity,
    )
    return ClusterDraft(cluster=cluster, data=data, topic=topic)
