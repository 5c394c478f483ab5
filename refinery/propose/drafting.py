"""Deterministic templates: a cluster's evidence -> the refinement it calls for, or None.

Pure functions over plain data; no database. Each kind is backed by its own evidence on members,
read by the predicates of refinery.signals.evidence (the rule the cluster stage splits by):
- users supplied target answers (corrections)       -> fine-tuning dataset
- retrieval found nothing useful, or the model said it did not know -> new RAG source
- feedback complains about a behaviour (length, tone, format, language) -> system prompt edit
The kind is the one whose evidence most members carry, among those whose share reaches its
minimum (and, for a dataset, with enough distinct target answers): a failure mode is what most
of its cluster says, not what a few neighbouring interactions that landed in it say. Ties go to
the order above (the more specific evidence). A cluster with none of these gets no proposal: a
reviewer cannot act on "users were unhappy".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refinery.corpus.index import CorpusHit
from refinery.embed.keys import normalize_query
from refinery.propose.prompt_fit import fit
from refinery.signals.complaints import OTHER
from refinery.signals.evidence import (
    BEHAVIOUR_RULES,
    BehaviourRule,
    behaviour_complaints,
    correction_text,
    gap_signals,
    has_correction,
)
from schemas.artifacts import added_instruction, prompt_diff, proposal_title, topic_of
from schemas.proposals import (
    Evidence,
    FineTuneDataset,
    FineTuneDatasetProposal,
    MissingDocument,
    PreferencePair,
    ProposalKind,
    RagCandidate,
    RagSourceManifest,
    RagSourceProposal,
    SystemPromptEdit,
    SystemPromptEditProposal,
)


@dataclass
class MemberEvidence:
    """One failing interaction of the cluster with its feedback, as drafting needs it."""

    interaction_id: str
    query: str
    response: str
    sources: list[dict]
    feedback: list[tuple[str, float | None, str | None]]  # (kind, value, text)
    occurred_at: str = ""
    session_id: str = ""
    failure_score: float = 0.0
    vector: np.ndarray | None = None  # (dim,) float32, L2-normalized: the query's embedding
    # Nearest chunks of the app's candidate corpus to the query, best first (refinery.corpus).
    corpus_hits: list[CorpusHit] = field(default_factory=list)


@dataclass
class DraftInput:
    app_id: str
    cluster_id: str
    keywords: list[str]
    members: list[MemberEvidence]  # representative first
    evidence: Evidence
    prompt_name: str
    prompt_version: str | None
    prompt_text: str
    retrieval_low_score: float
    retrieval_gap_fraction: float
    min_corrections: int
    # Least share of members whose evidence a fine-tune or prompt edit needs (RAG has
    # retrieval_gap_fraction): below it, the evidence is a few members, not the failure mode.
    min_evidence_share: float = 0.25
    # The app's candidate corpus (None: none registered) and how its hits count for a RAG draft.
    corpus_version: int | None = None
    rag_match_floor: float = 0.45
    rag_candidate_min_share: float = 0.2
    rag_max_candidates: int = 3
    question_merge_similarity: float = 0.85
    # The embedding model (`embed(texts) -> (n, dim)`, L2-normalized) for fitting a prompt edit
    # into the prompt (refinery.propose.prompt_fit); None: appended unless the text is there.
    embed: Callable[[list[str]], np.ndarray] | None = None
    prompt_duplicate_similarity: float = 0.7
    prompt_conflict_similarity: float = 0.6
    extras: dict = field(default_factory=dict)


def retrieval_gap_counts(members: list[MemberEvidence], low_score: float) -> dict[str, int]:
    counts = {"no_sources": 0, "low_retrieval_score": 0, "admits_not_knowing": 0, "any_gap": 0}
    for m in members:
        gap = gap_signals(m.sources, m.response, low_score)
        counts["no_sources"] += gap.no_sources
        counts["low_retrieval_score"] += gap.low_retrieval_score
        counts["admits_not_knowing"] += gap.admits_not_knowing
        counts["any_gap"] += gap.any
    return counts


def behaviour_counts(members: list[MemberEvidence]) -> Counter[str]:
    """How many members' feedback text complains about each behaviour."""
    counts: Counter[str] = Counter()
    for m in members:
        counts.update(behaviour_complaints(m.feedback))
    return counts


def target_answers(members: list[MemberEvidence]) -> dict[str, tuple[str, str]]:
    """normalized query -> (query, the user's corrected answer); the latest correction wins."""
    return {k: (q, a) for k, (q, a, _) in _corrections(members).items()}


def _corrections(members: list[MemberEvidence]) -> dict[str, tuple[str, str, str]]:
    """normalized query -> (query, corrected answer, the app's answer it corrects)."""
    targets: dict[str, tuple[str, str, str]] = {}
    for m in sorted(members, key=lambda m: (m.occurred_at, m.interaction_id)):
        for kind, _, text in m.feedback:
            answer = correction_text(kind, text)
            if answer:
                targets[normalize_query(m.query)] = (m.query, answer, m.response)
    return targets


@dataclass(frozen=True)
class KindEvidence:
    """How many members carry each kind's evidence."""

    members: int
    corrected: int  # members with a user correction
    targets: dict[str, tuple[str, str]]  # distinct corrected queries -> target answers
    gaps: dict[str, int]
    behaviours: Counter[str]

    @property
    def top_behaviour(self) -> tuple[str, int] | None:
        if not self.behaviours:
            return None
        return min(self.behaviours.items(), key=lambda kv: (-kv[1], kv[0]))

    def summary(self) -> str:
        """The shares behind the choice of kind, for the rationale."""
        n = self.members
        gaps = self.gaps["any_gap"]
        rest = f"{self.corrected} carry a user correction; {gaps} show a retrieval gap."
        top = self.top_behaviour
        if top is None:
            return f"Of {n} failing interactions, none complains about a behaviour; {rest}"
        return f"{top[1]} of {n} failing interactions complain about {top[0]}; {rest}"


def kind_evidence(data: DraftInput) -> KindEvidence:
    corrected = sum(has_correction(m.feedback) for m in data.members)
    return KindEvidence(
        members=len(data.members),
        corrected=corrected,
        targets=target_answers(data.members),
        gaps=retrieval_gap_counts(data.members, data.retrieval_low_score),
        behaviours=behaviour_counts(data.members),
    )


def draft(
    data: DraftInput,
) -> FineTuneDatasetProposal | RagSourceProposal | SystemPromptEditProposal | None:
    if not data.members:
        return None
    ev = kind_evidence(data)
    n = len(data.members)
    top = ev.top_behaviour
    # (share, tie-break rank, kind): the order of strength of evidence breaks ties.
    candidates: list[tuple[float, int, str]] = []
    if ev.corrected / n >= data.min_evidence_share and len(ev.targets) >= data.min_corrections:
        candidates.append((ev.corrected / n, 0, "fine_tune"))
    if ev.gaps["any_gap"] / n >= data.retrieval_gap_fraction:
        candidates.append((ev.gaps["any_gap"] / n, 1, "rag"))
    if top is not None and top[1] / n >= data.min_evidence_share:
        candidates.append((top[1] / n, 2, "prompt_edit"))
    for _, _, kind in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if kind == "fine_tune":
            return _fine_tune(data, ev)
        if kind == "rag":
            return _rag_source(data, ev)
        assert top is not None
        proposal = _prompt_edit(data, next(r for r in BEHAVIOUR_RULES if r.name == top[0]), ev)
        if proposal is not None:
            return proposal
    return None


def _merged_note(data: DraftInput) -> str:
    parts = data.evidence.parts
    if len(parts) < 2:
        return ""
    return (
        f" Merged from {len(parts)} clusters of this topic: "
        + "; ".join(f"{p.label or p.cluster_id} ({p.size})" for p in parts)
        + "."
    )


def _topic(data: DraftInput) -> str:
    # The cluster's label, as reviewers see it beside the title (schemas.artifacts.topic_of).
    return topic_of(data.evidence)


def _fine_tune(data: DraftInput, ev: KindEvidence) -> FineTuneDatasetProposal:
    targets = ev.targets
    # No system message when the app registered no prompt: an empty one is an invalid row.
    system = [{"role": "system", "content": data.prompt_text}] if data.prompt_text.strip() else []
    lines = [
        json.dumps(
            {
                "messages": [
                    *system,
                    {"role": "user", "content": query},
                    {"role": "assistant", "content": answer},
                ]
            },
            ensure_ascii=False,
            sort_keys=True,
        )
        for _, (query, answer) in sorted(targets.items())
    ]
    pairs = [
        PreferencePair(prompt=query, chosen=answer, rejected=response)
        for _, (query, answer, response) in sorted(_corrections(data.members).items())
        if response.strip() and response.strip() != answer.strip()
    ]
    artifact = FineTuneDataset(
        system_prompt=data.prompt_text,
        rows=len(lines),
        jsonl="\n".join(lines) + "\n",
        preference_pairs=pairs,
    )
    return FineTuneDatasetProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=proposal_title(ProposalKind.FINE_TUNE_DATASET, artifact.model_dump(), data.evidence),
        rationale=(
            f"{len(targets)} distinct queries received a user correction; the corrections are the "
            f"target answers. {ev.summary()}{_merged_note(data)}"
        ),
        evidence=data.evidence,
        artifact=artifact,
    )


def _rag_source(data: DraftInput, ev: KindEvidence) -> RagSourceProposal:
    gaps = ev.gaps
    queries = list(dict.fromkeys(m.query for m in data.members))[:10]
    topic = _topic(data)
    must_cover = [f"Answer: {q}" for q in queries[:5]]
    must_cover.append(f"Authoritative, current facts on: {', '.join(data.keywords[:5])}")
    candidates = rag_candidates(data)
    missing = None if candidates else missing_document(data, topic)
    if candidates:
        names = "; ".join(
            f"{c.doc_id} ({c.matched_queries} queries, {c.score:.2f})" for c in candidates
        )
        found = (
            f" Add {_these_documents(len(candidates))}"
            f" of the candidate corpus (version {data.corpus_version}) to the index; the"
            f" retriever never returned them for these queries: {names}."
        )
    elif data.corpus_version is not None:
        found = (
            f" No document of the candidate corpus (version {data.corpus_version}) matches these"
            f" queries at cosine {data.rag_match_floor:.2f} or above: write the missing document"
            f" ({len(missing.questions) if missing else 0} distinct questions)."
        )
    else:
        found = " The app registered no candidate corpus: write the missing document."
    return RagSourceProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=proposal_title(ProposalKind.RAG_SOURCE, {"topic": topic}, data.evidence),
        rationale=(
            f"{gaps['any_gap']} of {len(data.members)} failing interactions had no retrieved "
            f"sources ({gaps['no_sources']}), only weak matches ({gaps['low_retrieval_score']}), "
            f"or a response admitting it did not know ({gaps['admits_not_knowing']}). "
            f"{ev.summary()}{found}{_merged_note(data)}"
        ),
        evidence=data.evidence,
        artifact=RagSourceManifest(
            topic=topic,
            representative_queries=queries,
            must_cover=must_cover,
            gap_signals={k: v for k, v in gaps.items() if k != "any_gap"},
            corpus_version=data.corpus_version,
            match_floor=data.rag_match_floor if data.corpus_version is not None else None,
            candidate_documents=candidates,
            missing_document=missing,
        ),
    )


def _these_documents(n: int) -> str:
    return "this document" if n == 1 else f"these {n} documents"


def rag_candidates(data: DraftInput) -> list[RagCandidate]:
    """Corpus documents the members' queries match (cosine >= the floor) that the app's retriever
    never returned for them, best first: by queries matched, then mean score. A document matched
    by fewer than `rag_candidate_min_share` of the members is a neighbour, not the answer."""
    retrieved = {
        str(s.get("source_id"))
        for m in data.members
        for s in m.sources
        if isinstance(s, dict) and s.get("source_id")
    }
    matches: dict[str, list[CorpusHit]] = {}
    for m in data.members:
        best: dict[str, CorpusHit] = {}
        for hit in m.corpus_hits:
            if hit.score < data.rag_match_floor or hit.doc_id in retrieved:
                continue
            if hit.doc_id not in best or hit.score > best[hit.doc_id].score:
                best[hit.doc_id] = hit
        for doc_id, hit in best.items():
            matches.setdefault(doc_id, []).append(hit)
    least = max(1, int(np.ceil(data.rag_candidate_min_share * len(data.members))))
    ranked = sorted(
        (
            (len(hits), float(np.mean([h.score for h in hits])), doc_id, hits)
            for doc_id, hits in matches.items()
            if len(hits) >= least
        ),
        key=lambda r: (-r[0], -r[1], r[2]),
    )
    out = []
    for n, mean, doc_id, hits in ranked[: data.rag_max_candidates]:
        top = max(hits, key=lambda h: (h.score, -h.chunk_id))
        out.append(
            RagCandidate(
                doc_id=doc_id,
                title=top.title,
                heading=top.heading,
                score=round(mean, 3),
                best_score=round(top.score, 3),
                matched_queries=n,
                snippet=top.snippet,
            )
        )
    return out


def distinct_questions(members: list[MemberEvidence], merge_similarity: float) -> list[str]:
    """Member queries in order, a query dropped when one kept before is the same text or its
    embedding is at least `merge_similarity` (cosine) to it."""
    kept: list[str] = []
    kept_vectors: list[np.ndarray] = []
    seen: set[str] = set()
    for m in members:
        key = normalize_query(m.query)
        if key in seen:
            continue
        if (
            m.vector is not None
            and kept_vectors
            and float(np.max(np.stack(kept_vectors) @ m.vector)) >= merge_similarity
        ):
            continue
        seen.add(key)
        kept.append(m.query)
        if m.vector is not None:
            kept_vectors.append(m.vector)
    return kept


def missing_document(data: DraftInput, topic: str) -> MissingDocument:
    facts = list(dict.fromkeys(answer for _, answer in target_answers(data.members).values()))
    title = data.evidence.title or f"{topic[:1].upper()}{topic[1:]}: what customers ask"
    return MissingDocument(
        title=title,
        questions=distinct_questions(data.members, data.question_merge_similarity)[:20],
        corrected_facts=facts[:20],
    )


def _prompt_edit(
    data: DraftInput, rule: BehaviourRule, ev: KindEvidence
) -> SystemPromptEditProposal | None:
    base = data.prompt_text
    fitted = fit(
        base,
        rule.name,
        rule.instruction,
        data.embed,
        duplicate_similarity=data.prompt_duplicate_similarity,
        conflict_similarity=data.prompt_conflict_similarity,
    )
    if fitted is None:
        return None  # already says it; the problem lies elsewhere
    proposed = fitted.proposed_text
    placed = ""
    if fitted.replaced:
        placed = (
            f" Replaces the prompt's “{fitted.replaced}”, which asks for the opposite of what"
            " users complain about."
        )
    elif fitted.section:
        placed = f" Added to the prompt's section “{fitted.section}”."
    artifact = SystemPromptEdit(
        prompt_name=data.prompt_name,
        base_version=data.prompt_version,
        base_text=base,
        proposed_text=proposed,
        instruction=added_instruction(base, proposed),
        diff=prompt_diff(data.prompt_name, data.prompt_version, base, proposed),
    )
    return SystemPromptEditProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=proposal_title(ProposalKind.SYSTEM_PROMPT_EDIT, artifact.model_dump(), data.evidence),
        rationale=f"{_addresses(rule)}{placed} {ev.summary()}{_merged_note(data)}",
        evidence=data.evidence,
        artifact=artifact,
    )


def _addresses(rule: BehaviourRule) -> str:
    if rule.name == OTHER:
        # The complaint classifier matched no class with confidence: a generic instruction.
        return (
            "Users complained in words that match no known behaviour with confidence; review "
            "these examples and reword this generic instruction before approving."
        )
    return f"Addresses “{rule.name}” complaints."
