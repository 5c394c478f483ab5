"""Events that LLM apps send to llm-refinery: the contract with producers.

`schema_version` is "MAJOR.MINOR". Within a major version fields are only added, so consumers
ignore fields they do not know; an unknown major version is refused (dead-lettered).
Size limits are deployment settings (refinery.settings), applied by `refinery.ingest.validate`
through the validation context, so these models stay importable without any settings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

SUPPORTED_MAJOR_VERSION = 1
CURRENT_SCHEMA_VERSION = "1.0"

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")
]
AppId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
]
SchemaVersion = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+$")]
MetadataValue = str | int | float | bool | None


def _limit(info: ValidationInfo, name: str) -> int | None:
    """A size limit from the validation context (set by ingest from settings), if any."""
    return (info.context or {}).get(name) if info.context else None


class _Event(BaseModel):
    # Minor versions may add fields: ignore what we do not know rather than refuse it. NaN and
    # Infinity parse from JSON (Python's json writes them) but are not JSON to PostgreSQL: an
    # event holding one would fail its whole batch at the insert, again on every redelivery.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False, allow_inf_nan=False)

    event_id: Identifier = Field(description="Idempotency key, unique per event.")
    schema_version: SchemaVersion = Field(CURRENT_SCHEMA_VERSION, description="MAJOR.MINOR.")
    app_id: AppId = Field(description="The LLM application (tenant) that sent the event.")
    occurred_at: AwareDatetime = Field(description="When it happened, with a timezone.")
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _major_supported(cls, value: str) -> str:
        major = int(value.split(".", 1)[0])
        if major != SUPPORTED_MAJOR_VERSION:
            raise ValueError(
                f"unsupported schema_version major {major}; this consumer reads "
                f"{SUPPORTED_MAJOR_VERSION}.x"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        limit = _limit(info, "max_metadata_keys")
        if limit is not None and len(value) > limit:
            raise ValueError(f"metadata has {len(value)} keys, more than the limit {limit}")
        return value


class RetrievedSource(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # see _Event

    source_id: Identifier
    title: str | None = Field(None, max_length=1000)
    uri: str | None = Field(None, max_length=2000)
    score: float | None = Field(None, description="Retriever similarity, higher is closer.")


class SystemPromptRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Identifier = Field(description="Name of the system prompt in the app.")
    version: Identifier = Field(description="Version of that prompt used for this response.")
    text: str | None = Field(
        None, description="Full prompt text; registers this version if the registry lacks it."
    )


class TokenUsage(BaseModel):
    prompt: int = Field(0, ge=0)
    completion: int = Field(0, ge=0)


class InteractionEvent(_Event):
    """One turn of an LLM app: a user query and the response the app gave."""

    event_type: Literal["interaction"] = "interaction"
    session_id: Identifier
    interaction_id: Identifier
    turn_index: int | None = Field(None, ge=0, description="Order of the turn in its session.")
    query: str = Field(min_length=1)
    response: str
    system_prompt: SystemPromptRef | None = None
    model: str | None = Field(None, max_length=200)
    retrieved_sources: list[RetrievedSource] = Field(default_factory=list)
    latency_ms: float | None = Field(None, ge=0)
    tokens: TokenUsage | None = None

    @model_validator(mode="after")
    def _sizes(self, info: ValidationInfo) -> InteractionEvent:
        for field, limit_name in (("query", "max_query_chars"), ("response", "max_response_chars")):
            limit = _limit(info, limit_name)
            length = len(getattr(self, field))
            if limit is not None and length > limit:
                raise ValueError(f"{field} has {length} characters, more than the limit {limit}")
        limit = _limit(info, "max_retrieved_sources")
        if limit is not None and len(self.retrieved_sources) > limit:
            raise ValueError(f"{len(self.retrieved_sources)} retrieved_sources, limit {limit}")
        return self


class FeedbackKind(StrEnum):
    # explicit
    THUMBS_UP = "thumbs_up"
    THUMBS_DOWN = "thumbs_down"
    RATING = "rating"
    COMMENT = "comment"
    CORRECTION = "correction"
    # implicit
    REGENERATE = "regenerate"
    COPY = "copy"
    EDIT = "edit"
    REPHRASE = "rephrase"
    ABANDON = "abandon"
    ESCALATE = "escalate"


# Kinds whose meaning is carried by `text`.
TEXT_KINDS = {FeedbackKind.COMMENT, FeedbackKind.CORRECTION, FeedbackKind.EDIT}


class FeedbackEvent(_Event):
    """Something a user did or said about one interaction."""

    event_type: Literal["feedback"] = "feedback"
    interaction_id: Identifier
    session_id: Identifier | None = None
    kind: FeedbackKind
    value: float | None = Field(None, description="The rating, for kind=rating.")
    scale_max: float = Field(5, gt=0, description="Top of the rating scale (bottom is 1, or 0).")
    text: str | None = Field(
        None, description="Comment, correction (the better answer) or edited text."
    )

    @model_validator(mode="after")
    def _value_fits_kind(self, info: ValidationInfo) -> FeedbackEvent:
        if self.kind is FeedbackKind.RATING:
            if self.value is None:
                raise ValueError("kind=rating needs a numeric value")
            if not 0 <= self.value <= self.scale_max:
                raise ValueError(f"rating {self.value} is outside 0..{self.scale_max}")
        if self.kind in TEXT_KINDS and not (self.text and self.text.strip()):
            raise ValueError(f"kind={self.kind.value} needs a non-empty text")
        limit = _limit(info, "max_feedback_text_chars")
        if limit is not None and self.text is not None and len(self.text) > limit:
            raise ValueError(f"text has {len(self.text)} characters, more than the limit {limit}")
        return self


Event = Annotated[InteractionEvent | FeedbackEvent, Field(discriminator="event_type")]
