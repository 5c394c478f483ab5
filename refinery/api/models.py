"""Request and response bodies of the review API (the OpenAPI schema is generated from these).

Families as in the house style: `*Public` is what a reader gets back, `*Create` / `*Update` /
`Decision` what a writer sends. Every free-text input is `CleanText` (no NUL, no lone surrogates)
and bounded, so bad input is a 422, never a database error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from refinery.api.tokens import NAME_PATTERN, Role
from refinery.review.decisions import BULK_MAX_ITEMS
from refinery.review.edits import ArtifactEdit, CleanText
from refinery.review.figures import EvidenceFigures, TrendFigures
from refinery.review.service import COUNT_CACHE_MIN, COUNT_CACHE_TTL_S
from schemas.proposals import (
    Evidence,
    ProposalKind,
    ProposalStatus,
    RagSourceManifest,
    SystemPromptEdit,
)

MAX_VERSION = 2**31 - 1
Version = Annotated[int, Field(ge=1, le=MAX_VERSION, description="The proposal version you read.")]
Comment = Annotated[CleanText, Field(max_length=4_000)]


class ErrorPublic(BaseModel):
    detail: str


class ConflictPublic(ErrorPublic):
    status: str | None = Field(None, description="The proposal's status now.")
    version: int | None = Field(None, description="The proposal's version now.")
    decided_by: str | None = Field(None, description="Who decided it, if someone did.")
    decided_at: datetime | None = Field(None, description="When they decided it.")
    decision_comment: str | None = Field(None, description="What they said with the decision.")
    claimed_by: str | None = Field(None, description="Who has claimed it, if someone has.")


# --- proposals ------------------------------------------------------------------------------


class ProposalSummary(BaseModel):
    id: str
    app_id: str
    kind: ProposalKind
    status: ProposalStatus
    version: int
    cluster_id: str
    title: str
    size: int | None = Field(None, description="Failing interactions in the cluster (evidence).")
    created_at: datetime
    updated_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    claimed_by: str | None = Field(None, description="Who claimed it to review, if someone did.")
    claimed_at: datetime | None = None


class ProposalListPublic(BaseModel):
    total: int = Field(
        description=f"Proposals matching the filters: exact below {COUNT_CACHE_MIN:,}, else at"
        f" most {COUNT_CACHE_TTL_S:g} s old."
    )
    limit: int
    offset: int = Field(description="The offset used: one past the end gives the last page.")
    sort: str = "newest"
    items: list[ProposalSummary]


class AuditPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    outcome: str = Field(description="ok or refused.")
    detail: str | None


class ClusterPublic(BaseModel):
    id: str
    label: str
    size: int = Field(description="Members now (the evidence's size is as of the proposal).")
    active: bool
    updated_at: datetime


TrendPublic = TrendFigures


class DiffLine(BaseModel):
    op: Literal["+", "-", " ", "@", "h"] = Field(
        description="+ added, - removed, space context, @ hunk header, h file header."
    )
    text: str


class PromptEditView(SystemPromptEdit):
    kind: Literal[ProposalKind.SYSTEM_PROMPT_EDIT] = ProposalKind.SYSTEM_PROMPT_EDIT
    diff_lines: list[DiffLine]
    added: int
    removed: int


class RagManifestView(RagSourceManifest):
    kind: Literal[ProposalKind.RAG_SOURCE] = ProposalKind.RAG_SOURCE


class ChatMessagePublic(BaseModel):
    role: str
    content: str


class DatasetRowPublic(BaseModel):
    messages: list[ChatMessagePublic]


class DatasetView(BaseModel):
    kind: Literal[ProposalKind.FINE_TUNE_DATASET] = ProposalKind.FINE_TUNE_DATASET
    format: str
    system_prompt: str
    rows: int = Field(description="Rows in the dataset.")
    role_counts: dict[str, int] = Field(description="Messages per role over all rows.")
    invalid_lines: int = Field(description="Lines that are not a {'messages': [...]} object.")
    items: list[DatasetRowPublic] = Field(description="The first `max_rows` rows.")
    items_truncated: bool


ArtifactView = Annotated[
    PromptEditView | RagManifestView | DatasetView, Field(discriminator="kind")
]


class ProposalDetail(ProposalSummary):
    rationale: str
    decision_comment: str | None = None
    evidence: Evidence
    cluster: ClusterPublic | None = Field(None, description="The cluster now, if it still exists.")
    trend: TrendPublic | None = Field(
        None,
        description="The trend the cluster stage stored with the evidence (for a merged proposal,"
        " the sum of its parts'); None when none was stored. Same as figures.trend.",
    )
    figures: EvidenceFigures = Field(
        description="Every figure the views print: size, trend, region rate, parts, feedback"
        " chips per example (refinery.review.figures)."
    )
    artifact: ArtifactView
    history: list[AuditPublic]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: Version
    comment: Comment | None = None


class AppliedAck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: Version | None = None
    comment: Comment | None = Field(None, description="E.g. the downstream job or deploy id.")


class BulkItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Proposal id (p_...).")]
    expected_version: Version


class BulkDecision(BaseModel):
    """Approve or reject several proposals with one comment; each is decided on its own."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["approve", "reject"]
    comment: Comment | None = None
    proposals: list[BulkItem] = Field(min_length=1, max_length=BULK_MAX_ITEMS)


class BulkResult(BaseModel):
    id: str
    ok: bool
    status_code: int = Field(
        description="What the single-proposal endpoint would have answered: 200, 404, 409 or 422."
    )
    detail: str | None = Field(None, description="Why it was refused, and the proposal's state.")
    loc: list[str | int] | None = Field(None, description="For a 422: the invalid field.")
    status: str | None = Field(None, description="The proposal's status now.")
    version: int | None = Field(None, description="The proposal's version now.")


class BulkResultPublic(BaseModel):
    action: str
    succeeded: int
    failed: int
    results: list[BulkResult] = Field(description="One per proposal, in the order sent.")


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="Whom to assign it to (a reviewer's token name); default: you."
    )
    force: bool = Field(False, description="Take it over from whoever holds it.")


class ProposalUpdate(ArtifactEdit):
    """PATCH body: the artifact fields to change, the version you edited, and why."""

    expected_version: Version
    comment: Comment | None = None


# --- prompts --------------------------------------------------------------------------------


class PromptPublic(BaseModel):
    app_id: str
    name: str
    version: str
    seq: int
    text: str
    source: str
    created_at: datetime
    current: bool = Field(description="Whether this is the current version.")
    current_version: str


class PromptUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: CleanText = Field(min_length=1, max_length=200_000)
    base_version: Annotated[CleanText, Field(max_length=128)] | None = Field(
        None, description="Refuse (409) unless this is the current version (optimistic write)."
    )


# --- tokens ---------------------------------------------------------------------------------

TokenName = Annotated[str, Field(pattern=NAME_PATTERN)]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName = Field(description="Who holds it; the audit log's actor.")
    role: Role


class TokenPublic(BaseModel):
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret. Shown once; only its hash is stored.")


class WhoAmI(BaseModel):
    token_id: str
    name: str
    role: Role
