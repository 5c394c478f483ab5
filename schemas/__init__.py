"""The contract with producers and downstream consumers: versioned pydantic v2 models.

`schemas/json/` holds the same contract as JSON Schema for non-Python producers;
regenerate with `python -m schemas.export` (a test checks it is current).
"""

from schemas.events import (
    CURRENT_SCHEMA_VERSION,
    SUPPORTED_MAJOR_VERSION,
    Event,
    FeedbackEvent,
    FeedbackKind,
    InteractionEvent,
    RetrievedSource,
    SystemPromptRef,
    TokenUsage,
)
from schemas.proposals import (
    ApprovedRefinement,
    Evidence,
    EvidenceExample,
    FeedbackSummary,
    FineTuneDataset,
    FineTuneDatasetProposal,
    Proposal,
    ProposalKind,
    ProposalStatus,
    RagSourceManifest,
    RagSourceProposal,
    SystemPromptEdit,
    SystemPromptEditProposal,
)

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "SUPPORTED_MAJOR_VERSION",
    "ApprovedRefinement",
    "Event",
    "Evidence",
    "EvidenceExample",
    "FeedbackEvent",
    "FeedbackKind",
    "FeedbackSummary",
    "FineTuneDataset",
    "FineTuneDatasetProposal",
    "InteractionEvent",
    "Proposal",
    "ProposalKind",
    "ProposalStatus",
    "RagSourceManifest",
    "RagSourceProposal",
    "RetrievedSource",
    "SystemPromptEdit",
    "SystemPromptEditProposal",
    "SystemPromptRef",
    "TokenUsage",
]
