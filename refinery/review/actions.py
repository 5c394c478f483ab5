"""Reviewers' operations beyond approve/reject: edit a pending proposal's artifact, mark an
approved one applied when a downstream system acknowledges it, and decide many at once (each
through the single-decision path). Shared by the CLI and the API.

Same rules as `refinery.review.service`: a change is a conditional UPDATE on (id, version, status)
that bumps the version, so of two concurrent writers exactly one wins and the other gets
`DecisionConflict`; every attempt, won or refused, is audited, refusals in their own transaction.
An edit keeps the proposal's fingerprint, so a proposer re-run with unchanged evidence leaves the
reviewer's edit alone (changed evidence refreshes the proposal, audited as "refresh").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from refinery.ops.metrics import PROPOSALS, REVIEW_DECISIONS
from refinery.review import service
from refinery.review.service import (
    PROPOSAL_ADAPTER,
    DecisionConflict,
    InvalidEdit,
    ProposalNotFound,
    check_stored,
    conditional_transition,
)
from refinery.review.transitions import TransitionRefused, record_audit
from refinery.store.models import ProposalRow, utcnow
from schemas.artifacts import (
    ArtifactInvalid,
    added_instruction,
    check_artifact,
    prompt_diff,
    proposal_title,
)
from schemas.proposals import Evidence, ProposalKind, ProposalStatus

__all__ = ["InvalidEdit", "prompt_diff", "check_stored"]

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


def _artifact_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
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


def edit_proposal(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    edit: ArtifactEdit,
    expected_version: int,
    comment: str | None = None,
) -> ProposalRow:
    """Change a pending proposal's artifact; bumps the version and audits the change (its
    comment, then a diff of the artifact). Raises ProposalNotFound, InvalidEdit (nothing audited:
    a malformed request is not an attempt on the proposal), TransitionRefused when it is not
    pending, DecisionConflict when it is not at `expected_version` or changed under us."""
    refusal: tuple[str, Exception] | None = None
    with sessions() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        current, version = row.status, row.version
        try:
            if current != ProposalStatus.PENDING:
                raise TransitionRefused(
                    f"only a pending proposal can be edited; this one is {current}"
                )
            if expected_version != version:
                raise DecisionConflict(
                    f"proposal {proposal_id} is at version {version}, not {expected_version}; "
                    "reload it"
                )
            new_payload = apply_edit(row.kind, row.payload, edit)
            now = utcnow()
            won = session.execute(
                update(ProposalRow)
                .where(
                    ProposalRow.id == proposal_id,
                    ProposalRow.version == version,
                    ProposalRow.status == current,
                )
                .values(
                    payload=new_payload,
                    title=new_payload["title"],
                    version=version + 1,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if won != 1:
                raise DecisionConflict(f"proposal {proposal_id} was changed by someone else first")
            detail = (comment + "\n" if comment else "") + _artifact_diff(
                row.payload["artifact"], new_payload["artifact"]
            )
            record_audit(session, proposal_id, actor, "edit", current, current, "ok", detail)
            session.commit()
        except (TransitionRefused, DecisionConflict) as exc:
            session.rollback()
            refusal = (current, exc)
        if refusal is None:
            session.refresh(row)
            REVIEW_DECISIONS.labels("edit", "applied").inc()
            return row
    _audit_refusal(sessions, proposal_id, actor, "edit", refusal[0], refusal[0], refusal[1])
    REVIEW_DECISIONS.labels("edit", service.outcome(refusal[1])).inc()
    raise refusal[1]


def mark_applied(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    comment: str | None = None,
    expected_version: int | None = None,
) -> ProposalRow:
    """approved -> applied, when a downstream system acknowledges the refinement. Raises
    ProposalNotFound, TransitionRefused (not approved), DecisionConflict (lost a race)."""
    target = ProposalStatus.APPLIED
    refusal: tuple[str, Exception] | None = None
    with sessions() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id!r}")
        current = row.status
        try:
            conditional_transition(session, row, target, expected_version=expected_version)
            record_audit(session, proposal_id, actor, "applied", current, target, "ok", comment)
            session.commit()
        except (TransitionRefused, DecisionConflict) as exc:
            session.rollback()
            refusal = (current, exc)
        if refusal is None:
            session.refresh(row)
            # Not a review decision (a downstream system's acknowledgement): a status change only.
            PROPOSALS.labels(row.kind, target).inc()
            return row
    _audit_refusal(sessions, proposal_id, actor, "applied", refusal[0], target, refusal[1])
    raise refusal[1]


def approve(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
    expected_version: int | None = None,
    attempts: int = 3,
) -> ProposalRow:
    """`service.approve`, retried when its transaction hit a unique constraint: two system prompt
    edits of the same prompt approved at the same moment both take the registry's next version
    (PostgreSQL, read committed), and one transaction fails whole. Nothing of it was written, so
    running it again is safe; it then sees the other's version and builds on it."""
    for attempt in range(1, attempts + 1):
        try:
            return service.approve(
                sessions,
                proposal_id,
                actor=actor,
                topic=topic,
                comment=comment,
                expected_version=expected_version,
            )
        except IntegrityError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def audit_forbidden(
    sessions: sessionmaker[Session],
    proposal_id: str,
    *,
    actor: str,
    action: str,
    target: str | None,
    reason: str,
) -> None:
    """Record an attempt refused for lack of a role, when the proposal exists."""
    with sessions.begin() as session:
        row = session.get(ProposalRow, proposal_id)
        if row is not None:
            record_audit(session, proposal_id, actor, action, row.status, target, "refused", reason)


def _audit_refusal(
    sessions: sessionmaker[Session],
    proposal_id: str,
    actor: str,
    action: str,
    from_status: str,
    to_status: str,
    error: Exception,
) -> None:
    with sessions.begin() as session:
        record_audit(
            session, proposal_id, actor, action, from_status, to_status, "refused", str(error)
        )


# Most proposals one bulk decision may name: one queue page at its largest.
BULK_MAX_ITEMS = 200


@dataclass(frozen=True)
class BulkOutcome:
    """What one proposal of a bulk decision came to. `error`: None (decided), "not_found",
    "conflict" (its status does not allow it, or another writer won), or "invalid" (approval
    found the stored artifact invalid; `loc` names the field)."""

    proposal_id: str
    error: str | None = None
    detail: str | None = None
    status: str | None = None
    version: int | None = None
    loc: tuple[str | int, ...] = ()


def bulk_decide(
    sessions: sessionmaker[Session],
    decision: Literal["approve", "reject"],
    items: Sequence[tuple[str, int | None]],
    *,
    actor: str,
    topic: str,
    comment: str | None = None,
) -> list[BulkOutcome]:
    """Approve or reject each (proposal id, expected version) in turn, through the very function
    a single decision uses (`approve` / `service.reject`): each is its own transaction, version
    check and audit entry, so one refusal leaves the others decided. Outcomes in input order."""
    outcomes: list[BulkOutcome] = []
    for proposal_id, expected_version in items:
        try:
            if decision == "approve":
                row = approve(
                    sessions,
                    proposal_id,
                    actor=actor,
                    topic=topic,
                    comment=comment,
                    expected_version=expected_version,
                )
            else:
                row = service.reject(
                    sessions,
                    proposal_id,
                    actor=actor,
                    comment=comment,
                    expected_version=expected_version,
                )
        except ProposalNotFound as exc:
            outcomes.append(BulkOutcome(proposal_id, "not_found", str(exc.args[0])))
            continue
        except (DecisionConflict, TransitionRefused, InvalidEdit) as exc:
            with sessions() as session:
                now = service.get_proposal(session, proposal_id)
                state, status, version = service.describe_state(now), now.status, now.version
            error = "invalid" if isinstance(exc, InvalidEdit) else "conflict"
            loc = exc.loc if isinstance(exc, InvalidEdit) else ()
            outcomes.append(
                BulkOutcome(proposal_id, error, f"{exc}. {state}", status, version, loc)
            )
            continue
        outcomes.append(BulkOutcome(proposal_id, None, None, row.status, row.version))
    return outcomes
