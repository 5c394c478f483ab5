"""What a reviewer's edit of a proposal is: the fields of each artifact kind, the payload with an
edit applied (derived fields recomputed, checked as its consumers will read it) and the audit diff.
No I/O: `refinery.review.decisions.edit_proposal` stores it under the one-winner rule.
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from refinery.review.errors import InvalidEdit
from schemas.artifacts import (
    ArtifactInvalid,
    added_instruction,
    check_artifact,
    prompt_diff,
    proposal_title,
)
from schemas.proposals import Evidence, Proposal, ProposalKind

__all__ = ["InvalidEdit", "prompt_diff", "check_stored"]

PROPOSAL_ADAPTER: TypeAdapter[Proposal] = TypeAdapter(Proposal)

# Longest audit detail kept for one edit (the artifact diff is cut beyond it).
MAX_AUDIT_DETAIL_CHARS = 20_000


def _storable(value: str) -> str:
    """Text both databases store: PostgreSQL refuses NUL, and neither encodes lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


CleanText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$"), AfterValidator(_storable)]
"""A string safe to store: use for every free-text field that reaches the database. The pattern
puts the NUL rule into the JSON schema (so clients and fuzzers know it); the validator also
refuses lone surrogates, which no schema pattern can express."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: CleanText = Field(max_length=200_000)


class DatasetRow(BaseModel):
    """One line of an OpenAI chat fine-tuning file."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=200)


class ArtifactEdit(BaseModel):
    """New values for a pending proposal's artifact; give only the fields of its kind.

    system_prompt_edit: proposed_text (the diff is recomputed against the base text).
    rag_source: topic, representative_queries, must_cover.
    fine_tune_dataset: rows (the JSONL and its row count are recomputed).
    """

    model_config = ConfigDict(extra="forbid")

    proposed_text: CleanText | None = Field(None, max_length=200_000)
    topic: CleanText | None = Field(None, min_length=1, max_length=400)
    representative_queries: list[Annotated[CleanText, Field(max_length=8_000)]] | None = Field(
        None, max_length=100
    )
    must_cover: list[Annotated[CleanText, Field(min_length=1, max_length=8_000)]] | None = Field(
        None, min_length=1, max_length=100
    )
    rows: list[DatasetRow] | None = Field(None, min_length=1, max_length=50_000)


_FIELDS_BY_KIND: dict[str, set[str]] = {
    ProposalKind.SYSTEM_PROMPT_EDIT: {"proposed_text"},
    ProposalKind.RAG_SOURCE: {"topic", "representative_queries", "must_cover"},
    ProposalKind.FINE_TUNE_DATASET: {"rows"},
}


def dataset_line(row: DatasetRow) -> str:
    # Same serialization as the proposer's, so an unedited row keeps its bytes.
    return json.dumps(row.model_dump(), ensure_ascii=False, sort_keys=True)


def apply_edit(kind: str, payload: dict[str, Any], edit: ArtifactEdit) -> dict[str, Any]:
    """The proposal payload with `edit` applied, its derived fields (diff, instruction, row count,
    title) recomputed, and checked as the artifact its consumers will read; raises InvalidEdit."""
    given = edit.model_fields_set & {
        name for name in ArtifactEdit.model_fields if getattr(edit, name) is not None
    }
    if not given:
        raise InvalidEdit("artifact", "give at least one field to change")
    allowed = _FIELDS_BY_KIND.get(kind, set())
    foreign = sorted(given - allowed)
    if foreign:
        raise InvalidEdit(
            foreign[0],
            f"not a field of a {kind} artifact (those are: {', '.join(sorted(allowed))})",
        )
    artifact = dict(payload["artifact"])
    if kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        proposed = edit.proposed_text or ""
        if not proposed.strip():
            raise InvalidEdit("proposed_text", "must not be empty")
        if proposed == artifact["base_text"]:
            raise InvalidEdit("proposed_text", "equals the base text; reject the proposal instead")
        artifact["proposed_text"] = proposed
        artifact["diff"] = prompt_diff(
            artifact["prompt_name"], artifact.get("base_version"), artifact["base_text"], proposed
        )
        artifact["instruction"] = added_instruction(artifact["base_text"], proposed)
    elif kind == ProposalKind.RAG_SOURCE:
        for name in ("topic", "representative_queries", "must_cover"):
            if name in given:
                artifact[name] = getattr(edit, name)
    else:
        lines = [dataset_line(row) for row in edit.rows or []]
        artifact["jsonl"] = "\n".join(lines) + "\n"
        artifact["rows"] = len(lines)
    if artifact == payload["artifact"]:
        raise InvalidEdit(sorted(given)[0], "the edit changes nothing")
    try:
        check_artifact(kind, artifact)
    except ArtifactInvalid as exc:
        raise InvalidEdit.of(exc) from exc
    title = proposal_title(kind, artifact, Evidence.model_validate(payload["evidence"]))
    new_payload = {**payload, "artifact": artifact, "title": title}
    # Validate the whole proposal again: what approval emits downstream must stay well-typed.
    return PROPOSAL_ADAPTER.validate_python(new_payload).model_dump(mode="json")


def check_stored(kind: str, payload: dict[str, Any]) -> None:
    """Raise InvalidEdit (stored=True) unless the stored artifact is one its consumers accept:
    approval runs this, so an artifact stored before a rule existed cannot go downstream either."""
    try:
        check_artifact(kind, payload["artifact"])
    except ArtifactInvalid as exc:
        raise InvalidEdit.of(exc, stored=True) from exc


def artifact_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A unified diff of two artifacts for the audit log, cut at MAX_AUDIT_DETAIL_CHARS."""

    def lines(artifact: dict[str, Any]) -> list[str]:
        return json.dumps(artifact, indent=1, sort_keys=True, ensure_ascii=False).splitlines(
            keepends=True
        )

    diff = "".join(
        difflib.unified_diff(lines(old), lines(new), "artifact@before", "artifact@after", n=1)
    )
    if len(diff) > MAX_AUDIT_DETAIL_CHARS:
        diff = diff[:MAX_AUDIT_DETAIL_CHARS] + "\n[... cut]"
    return diff
