"""How did an interaction fail: the one rule both stages read from an interaction's stored evidence.

Pure functions over plain data (feedback as (kind, value, text) tuples, the retrieved sources, the
response); no database. The cluster stage (refinery.cluster.service) splits a topic whose members
fail in clearly different ways by `failure_type`; drafting (refinery.propose.drafting) counts
the same predicates to choose a cluster's proposal kind, so the two stages cannot disagree on what
a member's evidence says.

Failure types, the most specific evidence first (an interaction carrying several is typed by the
first that holds):
- correction: the user supplied the answer they wanted (a target answer for a dataset);
- behaviour: the user's own words complain about a behaviour (length, detail, tone, format,
  language), explicit text that outranks what retrieval suggests;
- retrieval_gap: nothing useful was retrieved (no sources, or only weak ones) or the response
  admits not knowing;
- unspecified: a failure with none of these (a thumbs-down, a low rating, a rephrase, an abandon).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
    name: str
    pattern: re.Pattern[str]
    instruction: str


BEHAVIOUR_RULES = [
    BehaviourRule(
        "length",
        re.compile(
            r"too long|verbose|wordy|shorter|concise|tl;?dr|rambl|wall of text|to the point", re.I
        ),
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
        re.compile(
            r"bullet|numbered|list|step[- ]by[- ]step|formatting|format|table|markdown", re.I
        ),
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


def correction_text(kind: str, text: str | None) -> str | None:
    """The user's target answer, if this feedback is a non-empty correction."""
    if kind == "correction" and text and text.strip():
        return text.strip()
    return None


def has_correction(feedback: Iterable[FeedbackTuple]) -> bool:
    return any(correction_text(kind, text) for kind, _, text in feedback)


def behaviour_complaints(feedback: Iterable[FeedbackTuple]) -> list[str]:
    """Names of the behaviours the feedback's text complains about (rule order)."""
    texts = " ".join(t for kind, _, t in feedback if t and kind in COMPLAINT_KINDS)
    if not texts:
        return []
    return [rule.name for rule in BEHAVIOUR_RULES if rule.pattern.search(texts)]


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
