"""Refinement proposals: one model per kind, each with its artifact and the evidence behind it.

These are what reviewers read and what approval emits downstream (the "approved refinements"
topic carries `ApprovedRefinement`). User text inside evidence is untrusted and already
redacted; renderers must escape it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ProposalKind(StrEnum):
    SYSTEM_PROMPT_EDIT = "system_prompt_edit"
    RAG_SOURCE = "rag_source"
    FINE_TUNE_DATASET = "fine_tune_dataset"


class ProposalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    APPLIED = "applied"


class ExpectedImpact(BaseModel):
    """Expected impact of a proposal (refinery.propose.ranking): a weighted sum of its parts, each
    in [0, 1], times 100. Recomputed whenever the proposal is redrafted."""

    score: float = Field(description="0-100: the weighted sum of the parts below, times 100.")
    traffic_share: float = Field(
        description="Share of the app's failing interactions that the proposal's clusters hold."
    )
    user_share: float = Field(
        description="Share of the app's users (distinct sessions) with a failing interaction here."
    )
    growth: float = Field(
        description="growth_rate mapped to [0, 1] (g / (1 + g) for g > 0; 0 when not growing)."
    )
    severity: float = Field(
        description="Mean failure score of the members over twice FAILURE_THRESHOLD, at most 1:"
        " how strongly and by how many signals users said it failed."
    )
    weights: dict[str, float] = Field(description="Weight of each part in the score.")


class FeedbackSummary(BaseModel):
    kind: str
    value: float | None = None
    text: str | None = None


class EvidenceExample(BaseModel):
    interaction_id: str
    query: str
    response: str
    feedback: list[FeedbackSummary] = Field(default_factory=list)
    failure_reasons: list[str] = Field(default_factory=list)


class TrendBucket(BaseModel):
    start: datetime = Field(description="Start of the bucket (UTC); it spans trend_bucket_s.")
    count: int = Field(description="Failing interactions of the cluster that occurred in it.")


class EvidencePart(BaseModel):
    """One cluster of a proposal merged from several clusters of the same failure mode."""

    cluster_id: str
    label: str = Field(description="Top keywords of the cluster, joined: its topic.")
    keywords: list[str] = Field(default_factory=list)
    size: int = Field(description="Failing interactions of this cluster in the proposal.")
    trend: list[TrendBucket] = Field(
        default_factory=list,
        description="This cluster's failing interactions per bucket, as the cluster stage stored"
        " them; the proposal's trend is the sum of its parts'.",
    )
    growth_rate: float | None = Field(None, description="This cluster's stored growth rate.")
    emerging: bool = Field(False, description="This cluster's stored emerging flag.")
    emerging_reason: Literal["new", "rising"] | None = None
    region_failure_rate: float | None = Field(
        None, description="This cluster's stored region failure rate."
    )


class Evidence(BaseModel):
    cluster_id: str
    label: str = Field(description="Top keywords of the cluster, joined.")
    keywords: list[str]
    size: int = Field(
        description="Failing interactions in the cluster; for a merged proposal, the sum of its"
        " parts."
    )
    signal_counts: dict[str, int] = Field(
        default_factory=dict, description="How often each failure reason occurs in the cluster."
    )
    examples: list[EvidenceExample]
    related_cluster_ids: list[str] = Field(
        default_factory=list,
        description="Other clusters whose evidence calls for the same refinement, merged in.",
    )
    parts: list[EvidencePart] = Field(
        default_factory=list,
        description="Every cluster merged into this proposal, the anchor (cluster_id) first, with"
        " its topic and count; empty when the proposal covers one cluster.",
    )
    title: str | None = Field(
        None, description="Short title of the cluster from a language model, if one is configured."
    )
    representative_queries: list[str] = Field(
        default_factory=list, description="Member queries closest to the cluster's centroid."
    )
    trend: list[TrendBucket] = Field(
        default_factory=list,
        description="Failing interactions in the cluster per time bucket, oldest first; the newest"
        " bucket is the current one, still filling.",
    )
    trend_bucket_s: float | None = Field(None, description="Width of a trend bucket in seconds.")
    trend_baseline_buckets: int | None = Field(
        None, description="Buckets before the newest whose mean is the baseline of growth_rate."
    )
    growth_rate: float | None = Field(
        None,
        description="(newest bucket - mean of the trend_baseline_buckets before it) / max(that"
        " mean, 1): 1.0 means doubled; for a merged proposal, of the summed trend.",
    )
    emerging: bool = Field(
        False,
        description="A new failure mode, or one rising sharply (see emerging_reason); for a"
        " merged proposal, whether any part is.",
    )
    emerging_reason: Literal["new", "rising"] | None = Field(None)
    region_failure_rate: float | None = Field(
        None,
        description="Failing share of all interactions near the cluster's centroid, estimated from"
        " a sample of non-failing ones; None until a sample was drawn, and for a merged proposal"
        " (each part has its own).",
    )
    expected_impact: ExpectedImpact | None = Field(
        None,
        description="Expected impact with its parts, for ranking the queue (sort=impact); None on"
        " proposals drafted before it existed.",
    )
    drafted_by: str = Field(
        "template",
        description='Who worded the artifact: "template" (deterministic) or "llm:<model>"'
        " (DRAFT_LLM_ENDPOINT; the shape and every figure stay the template's).",
    )
    fallback_reason: str | None = Field(
        None,
        description="Why a configured language model's draft was not used and the template was:"
        " timeout, refusal, http_error, invalid_output or rejected (with detail).",
    )


class SystemPromptEdit(BaseModel):
    prompt_name: str
    base_version: str | None = Field(description="Registry version the diff applies to.")
    base_text: str
    proposed_text: str
    instruction: str = Field(description="The instruction the edit adds.")
    diff: str = Field(description="Unified diff from base_text to proposed_text.")


class RagCandidate(BaseModel):
    """A document of the app's candidate corpus close to the failing queries, which the app's
    retriever never returned for them."""

    doc_id: str = Field(description="Its id in the corpus (the source_id to index it under).")
    title: str
    heading: str = Field("", description="Section of the best-matching chunk.")
    score: float = Field(description="Mean cosine of the matched queries to their best chunk.")
    best_score: float = Field(description="Highest cosine of any query to any of its chunks.")
    matched_queries: int = Field(description="Failing queries with a chunk at or above the floor.")
    snippet: str = Field(description="Start of the best-matching chunk.")


class MissingDocument(BaseModel):
    """What a document to write must contain, when no candidate matches."""

    title: str
    questions: list[str] = Field(
        description="The distinct questions it must answer (near-duplicates merged)."
    )
    corrected_facts: list[str] = Field(
        default_factory=list, description="Facts users supplied in corrections."
    )


class RagSourceManifest(BaseModel):
    topic: str
    representative_queries: list[str]
    must_cover: list[str] = Field(description="What a new source must answer.")
    gap_signals: dict[str, int] = Field(
        description="Interactions with no sources, low retrieval scores, or admitted ignorance."
    )
    corpus_version: int | None = Field(
        None, description="Version of the app's candidate corpus searched; None: none registered."
    )
    match_floor: float | None = Field(
        None, description="Least cosine for a candidate chunk to count as a match."
    )
    candidate_documents: list[RagCandidate] = Field(
        default_factory=list,
        description="Corpus documents to add to the index, best first (empty: none matched).",
    )
    missing_document: MissingDocument | None = Field(
        None, description="Spec of the document to write, when no candidate matched."
    )


class PreferencePair(BaseModel):
    """A corrected query with the app's answer it corrects: one DPO row."""

    prompt: str
    chosen: str = Field(description="The user's correction.")
    rejected: str = Field(description="The app's answer.")


class FineTuneDataset(BaseModel):
    format: Literal["openai-chat-jsonl"] = "openai-chat-jsonl"
    system_prompt: str
    rows: int
    jsonl: str = Field(description="One {'messages': [system, user, assistant]} object per line.")
    preference_pairs: list[PreferencePair] = Field(
        default_factory=list,
        description="Per corrected query, the app's answer it replaced (for the DPO export).",
    )


class _Proposal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: str
    cluster_id: str
    title: str
    rationale: str
    evidence: Evidence


class SystemPromptEditProposal(_Proposal):
    kind: Literal[ProposalKind.SYSTEM_PROMPT_EDIT] = ProposalKind.SYSTEM_PROMPT_EDIT
    artifact: SystemPromptEdit


class RagSourceProposal(_Proposal):
    kind: Literal[ProposalKind.RAG_SOURCE] = ProposalKind.RAG_SOURCE
    artifact: RagSourceManifest


class FineTuneDatasetProposal(_Proposal):
    kind: Literal[ProposalKind.FINE_TUNE_DATASET] = ProposalKind.FINE_TUNE_DATASET
    artifact: FineTuneDataset


Proposal = Annotated[
    SystemPromptEditProposal | RagSourceProposal | FineTuneDatasetProposal,
    Field(discriminator="kind"),
]


class ApprovedRefinement(BaseModel):
    """What the outbox relay publishes downstream; consumers de-duplicate on `outbox_id`."""

    outbox_id: str
    proposal_id: str
    app_id: str
    kind: ProposalKind
    approved_by: str
    approved_at: datetime
    comment: str | None = None
    proposal: Proposal
