"""How did an interaction fail: the one rule both stages read from an interaction's stored evidence.

Functions of plain data (feedback as (kind, value, text) tuples, the retrieved sources, the
response); no database. Comment text is read by the complaint classifier, which embeds it (the
process's embedding model, loaded once; labels cached per text).

The cluster stage (refinery.cluster.service) splits a topic whose members
fail in clearly different ways by `failure_type`; drafting (refinery.propose.drafting) counts
the same predicates to choose a cluster's proposal kind, so the two stages cannot disagree on what
a member's evidence says.

Failure types, the most specific evidence first (an interaction carrying several is typed by the
first that holds):
- correction: the user supplied the answer they wanted (a target answer for a dataset);
- behaviour: the user's own words complain about a behaviour (length, detail, tone, format,
  language, refusal, or a complaint no class matches: "other"), explicit text that outranks what
  retrieval suggests; the complaint classifier (refinery.signals.complaints, embedding similarity
  to labelled phrasings, negations handled) reads the words;
- retrieval_gap: nothing useful was retrieved (no sources, or only weak ones) or the response
  admits not knowing;
- unspecified: a failure with none of these (a thumbs-down, a low rating, a rephrase, an abandon).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from refinery.signals.complaints import OTHER, classify

FeedbackTuple = tuple[str, float | None, str | None]  # (kind, value, text)

CORRECTION = "correction"
BEHAVIOUR = "behaviour"
RETRIEVAL_GAP = "retrieval_gap"
UNSPECIFIED = "unspecified"
# The types that call for a kind of proposal, in order of precedence.
SPECIFIC_TYPES = (CORRECTION, BEHAVIOUR, RETRIEVAL_GAP)

# Feedback kinds whose text may carry a behaviour complaint.
COMPLAINT_KINDS = frozenset({"comment", "edit"})
# Feedback kinds the cluster stage needs to load to type an interaction.
TYPED_FEEDBACK_KINDS = COMPLAINT_KINDS | {"correction"}

# Responses in which the model admits it lacks the knowledge.
ADMITS_NOT_KNOWING = re.compile(
    r"\b(i (do not|don't|dont) (know|have (any )?(information|details|data))|"
    r"i'?m not sure|i am not sure|i (could not|couldn't|cannot|can't) find|"
    r"no information (about|on)|not (able|unable) to find|unable to (find|answer)|"
    r"i (cannot|can't) answer|outside (of )?my knowledge)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BehaviourRule:
    """A complaint class (refinery.signals.complaints) that a system prompt instruction answers."""

    name: str
    instruction: str


# Complaints about facts (wrong_facts, outdated) are not behaviours: an instruction cannot supply
# knowledge; corrections and retrieval gaps carry that evidence.
BEHAVIOUR_RULES = [
    BehaviourRule(
        "length",
        "Keep answers brief: lead with the answer in one or two sentences, then at most five "
        "short steps. Offer more detail only if the user asks for it.",
    ),
    BehaviourRule(
        "detail",
        "Give complete answers: include the concrete steps, values and conditions the user "
        "needs to act without asking again.",
    ),
    BehaviourRule(
        "tone",
        "Use a warm, respectful tone; acknowledge the user's situation before answering.",
    ),
    BehaviourRule(
        "format",
        "Format multi-step instructions as a numbered list, one action per step.",
    ),
    BehaviourRule(
        "language",
        "Reply in the language the user wrote in.",
    ),
    BehaviourRule(
        "refusal",
        "Answer requests that fall within your purpose; decline only what your instructions rule "
        "out, and then say briefly why and what the user can do instead.",
    ),
    # Comments that no class matches with confidence: a generic instruction, flagged in the
    # rationale for reviewers to check against the examples, rather than a misfiled one.
    BehaviourRule(
        OTHER,
        "Answer the question the user actually asked, using only facts you are sure of; if the "
        "request is unclear, ask one short clarifying question.",
    ),
]
BEHAVIOURS = frozenset(rule.name for rule in BEHAVIOUR_RULES)


def correction_text(kind: str, text: str | None) -> str | None:
    """The user's target answer, if this feedback is a non-empty correction."""
    if kind == "correction" and text and text.strip():
        return text.strip()
    return None


def has_correction(feedback: Iterable[FeedbackTuple]) -> bool:
    return any(correction_text(kind, text) for kind, _, text in feedback)


def behaviour_complaints(feedback: Iterable[FeedbackTuple]) -> list[str]:
    """Names of the behaviours the feedback's text complains about (rule order), as the complaint
    classifier (refinery.signals.complaints) labels each comment: a comment no class matches with
    confidence is OTHER; an edit (the user's own version of the answer) counts only for the
    classes it clearly names."""
    texts = [(kind, t) for kind, _, t in feedback if t and t.strip() and kind in COMPLAINT_KINDS]
    if not texts:
        return []
    found: set[str] = set()
    for (kind, _), complaint in zip(texts, classify([t for _, t in texts]), strict=True):
        if complaint.label == OTHER:
            if kind == "comment":
                found.add(OTHER)
        else:
            found.update(complaint.labels)
    if found - {OTHER}:
        found.discard(OTHER)  # a named behaviour outranks a vague one
    return [rule.name for rule in BEHAVIOUR_RULES if rule.name in found]


@dataclass(frozen=True)
class GapSignals:
    no_sources: bool
    low_retrieval_score: bool
    admits_not_knowing: bool

    @property
    def any(self) -> bool:
        return self.no_sources or self.low_retrieval_score or self.admits_not_knowing


def gap_signals(sources: list[Any] | None, response: str | None, low_score: float) -> GapSignals:
    sources = sources or []
    scores = [
        float(s["score"]) for s in sources if isinstance(s, dict) and s.get("score") is not None
    ]
    return GapSignals(
        no_sources=not sources,
        # Sources without scores say nothing about their quality: not a gap by score.
        low_retrieval_score=bool(sources) and bool(scores) and max(scores) < low_score,
        admits_not_knowing=bool(response) and bool(ADMITS_NOT_KNOWING.search(response or "")),
    )


def failure_type(
    feedback: Iterable[FeedbackTuple],
    sources: list[Any] | None,
    response: str | None,
    low_score: float,
) -> str:
    """One of SPECIFIC_TYPES or UNSPECIFIED (see the module docstring for the precedence)."""
    feedback = list(feedback)
    if has_correction(feedback):
        return CORRECTION
    if behaviour_complaints(feedback):
        return BEHAVIOUR
    if gap_signals(sources, response, low_score).any:
        return RETRIEVAL_GAP
    return UNSPECIFIED
