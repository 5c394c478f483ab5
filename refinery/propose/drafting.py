"""Deterministic templates: a cluster's evidence -> the refinement it calls for, or None.

Pure functions over plain data; no database. The choice, in order of strength of evidence:
1. users supplied target answers (corrections)       -> fine-tuning dataset
2. retrieval found nothing useful, or the model said it did not know -> new RAG source
3. feedback complains about a behaviour (length, tone, format, language) -> system prompt edit
A cluster with none of these gets no proposal: a reviewer cannot act on "users were unhappy".
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from refinery.ingest.storage import normalize_query
from schemas.proposals import (
    Evidence,
    FineTuneDataset,
    FineTuneDatasetProposal,
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
    extras: dict = field(default_factory=dict)


# Responses in which the model admits it lacks the knowledge.
_ADMITS_NOT_KNOWING = re.compile(
    r"\b(i (do not|don't|dont) (know|have (any )?(information|details|data))|"
    r"i'?m not sure|i am not sure|i (could not|couldn't|cannot|can't) find|"
    r"no information (about|on)|not (able|unable) to find|unable to (find|answer)|"
    r"i (cannot|can't) answer|outside (of )?my knowledge)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BehaviourRule:
    name: str
    pattern: re.Pattern[str]
    instruction: str


BEHAVIOUR_RULES = [
    BehaviourRule(
        "length",
        re.compile(r"too long|verbose|wordy|shorter|concise|tl;?dr|rambl|wall of text|to the point", re.I),
        "Keep answers brief: lead with the answer in one or two sentences, then at most five "
        "short steps. Offer more detail only if the user asks for it.",
    ),
    BehaviourRule(
        "detail",
        re.compile(r"too short|more detail|not enough detail|elaborate|too vague|vague", re.I),
        "Give complete answers: include the concrete steps, values and conditions the user "
        "needs to act without asking again.",
    ),
    BehaviourRule(
        "tone",
        re.compile(r"rude|condescending|patroniz|unfriendly|robotic|cold|impolite|tone", re.I),
        "Use a warm, respectful tone; acknowledge the user's situation before answering.",
    ),
    BehaviourRule(
        "format",
        re.compile(r"bullet|numbered|list|step[- ]by[- ]step|formatting|format|table|markdown", re.I),
        "Format multi-step instructions as a numbered list, one action per step.",
    ),
    BehaviourRule(
        "language",
        re.compile(
            r"wrong language|in english|in spanish|in french|in german|my language|language", re.I
        ),
        "Reply in the language the user wrote in.",
    ),
]


def retrieval_gap_counts(members: list[MemberEvidence], low_score: float) -> dict[str, int]:
    counts = {"no_sources": 0, "low_retrieval_score": 0, "admits_not_knowing": 0, "any_gap": 0}
    for m in members:
        scores = [s.get("score") for s in m.sources if s.get("score") is not None]
        gap = False
        if not m.sources:
            counts["no_sources"] += 1
            gap = True
        elif scores and max(scores) < low_score:
            counts["low_retrieval_score"] += 1
            gap = True
        if _ADMITS_NOT_KNOWING.search(m.response):
            counts["admits_not_knowing"] += 1
            gap = True
        counts["any_gap"] += gap
    return counts


def behaviour_counts(members: list[MemberEvidence]) -> Counter[str]:
    """How many members' feedback text complains about each behaviour."""
    counts: Counter[str] = Counter()
    for m in members:
        texts = " ".join(t for kind, _, t in m.feedback if t and kind in {"comment", "edit"})
        for rule in BEHAVIOUR_RULES:
            if texts and rule.pattern.search(texts):
                counts[rule.name] += 1
    return counts


def target_answers(members: list[MemberEvidence]) -> dict[str, tuple[str, str]]:
    """normalized query -> (query, the user's corrected answer); the latest correction wins."""
    targets: dict[str, tuple[str, str]] = {}
    for m in sorted(members, key=lambda m: (m.occurred_at, m.interaction_id)):
        for kind, _, text in m.feedback:
            if kind == "correction" and text and text.strip():
                targets[normalize_query(m.query)] = (m.query, text.strip())
    return targets


def draft(
    data: DraftInput,
) -> FineTuneDatasetProposal | RagSourceProposal | SystemPromptEditProposal | None:
    targets = target_answers(data.members)
    if len(targets) >= data.min_corrections:
        return _fine_tune(data, targets)
    gaps = retrieval_gap_counts(data.members, data.retrieval_low_score)
    if data.members and gaps["any_gap"] / len(data.members) >= data.retrieval_gap_fraction:
        return _rag_source(data, gaps)
    behaviours = behaviour_counts(data.members)
    if behaviours:
        name, _ = min(behaviours.items(), key=lambda kv: (-kv[1], kv[0]))
        return _prompt_edit(data, next(r for r in BEHAVIOUR_RULES if r.name == name), behaviours)
    return None


def _topic(data: DraftInput) -> str:
    return " ".join(data.keywords[:3]) or "uncategorized"


def _fine_tune(data: DraftInput, targets: dict[str, tuple[str, str]]) -> FineTuneDatasetProposal:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": data.prompt_text},
                    {"role": "user", "content": query},
                    {"role": "assistant", "content": answer},
                ]
            },
            ensure_ascii=False,
            sort_keys=True,
        )
        for _, (query, answer) in sorted(targets.items())
    ]
    return FineTuneDatasetProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=f"Fine-tune on {len(lines)} corrected answers about “{_topic(data)}”",
        rationale=(
            f"{len(targets)} distinct queries in this cluster received a user correction; "
            "the corrections are the target answers."
        ),
        evidence=data.evidence,
        artifact=FineTuneDataset(system_prompt=data.prompt_text, rows=len(lines), jsonl="\n".join(lines) + "\n"),
    )


def _rag_source(data: DraftInput, gaps: dict[str, int]) -> RagSourceProposal:
    queries = list(dict.fromkeys(m.query for m in data.members))[:10]
    topic = _topic(data)
    must_cover = [f"Answer: {q}" for q in queries[:5]]
    must_cover.append(f"Authoritative, current facts on: {', '.join(data.keywords[:5])}")
    return RagSourceProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=f"Add a knowledge source on “{topic}”",
        rationale=(
            f"{gaps['any_gap']} of {len(data.members)} failing interactions had no retrieved "
            f"sources ({gaps['no_sources']}), only weak matches ({gaps['low_retrieval_score']}), "
            f"or a response admitting it did not know ({gaps['admits_not_knowing']})."
        ),
        evidence=data.evidence,
        artifact=RagSourceManifest(
            topic=topic,
            representative_queries=queries,
            must_cover=must_cover,
            gap_signals={k: v for k, v in gaps.items() if k != "any_gap"},
        ),
    )


def _prompt_edit(
    data: DraftInput, rule: BehaviourRule, behaviours: Counter[str]
) -> SystemPromptEditProposal | None:
    if rule.instruction in data.prompt_text:
        return None  # already says it; the problem lies elsewhere
    base = data.prompt_text
    proposed = (base.rstrip("\n") + "\n\n" if base.strip() else "") + rule.instruction + "\n"
    diff = "".join(
        difflib.unified_diff(
            base.splitlines(keepends=True),
            proposed.splitlines(keepends=True),
            fromfile=f"{data.prompt_name}@{data.prompt_version or 'none'}",
            tofile=f"{data.prompt_name}@proposed",
        )
    )
    return SystemPromptEditProposal(
        app_id=data.app_id,
        cluster_id=data.cluster_id,
        title=f"System prompt: address “{rule.name}” complaints on “{_topic(data)}”",
        rationale=(
            f"{behaviours[rule.name]} of {len(data.members)} failing interactions carry feedback "
            f"about {rule.name}."
        ),
        evidence=data.evidence,
        artifact=SystemPromptEdit(
            prompt_name=data.prompt_name,
            base_version=data.prompt_version,
            base_text=base,
            proposed_text=proposed,
            instruction=rule.instruction,
            diff=diff,
        ),
    )
