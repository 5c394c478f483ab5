"""Store validated (and already redacted) events idempotently, then join feedback to interactions.

Owns the interactions and feedback tables and the failure verdict on each interaction. Does not
commit: the consumer decides when a batch is durable.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from refinery.ingest.failure import FailureVerdict, judge_interaction
from refinery.settings import Settings
from refinery.store.db import insert_ignoring_duplicates
from refinery.store.models import Embedding, Feedback, Interaction
from refinery.store.prompts import register_prompt_version
from schemas.events import FeedbackEvent, InteractionEvent

T = TypeVar("T")
EventT = TypeVar("EventT", InteractionEvent, FeedbackEvent)
_SPACE = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """The text that is embedded and hashed: NFKC, case-folded, single-spaced."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def query_hash(text: str) -> str:
    return hashlib.sha256(normalize_query(text).encode("utf-8", "surrogatepass")).hexdigest()


InteractionKey = tuple[str, str]  # (app_id, interaction_id)


@dataclass
class StoreResult:
    inserted: int = 0
    duplicates: int = 0
    touched: set[InteractionKey] = field(default_factory=set)


def store_events(
    session: Session,
    interactions: list[InteractionEvent],
    feedback: list[FeedbackEvent],
) -> StoreResult:
    """Insert events, ignoring event_ids already stored. Re-delivery is a no-op."""
    result = StoreResult()
    interaction_rows = [
        {
            "event_id": e.event_id,
            "app_id": e.app_id,
            "interaction_id": e.interaction_id,
            "session_id": e.session_id,
            "turn_index": e.turn_index,
            "occurred_at": e.occurred_at,
            "query": e.query,
            "response": e.response,
            "prompt_name": e.system_prompt.id if e.system_prompt else None,
            "prompt_version": e.system_prompt.version if e.system_prompt else None,
            "model": e.model,
            "sources": [s.model_dump(mode="json") for s in e.retrieved_sources],
            "latency_ms": e.latency_ms,
            "prompt_tokens": e.tokens.prompt if e.tokens else None,
            "completion_tokens": e.tokens.completion if e.tokens else None,
            "metadata": e.metadata,
            "query_hash": query_hash(e.query),
            "failing": False,
            "failure_reasons": [],
        }
        for e in _unique_by_key(interactions)
    ]
    # Same interaction_id under a new event_id is a duplicate too (the unique key catches it).
    inserted = insert_ignoring_duplicates(session, Interaction.__table__, interaction_rows)
    feedback_rows = [
        {
            "event_id": e.event_id,
            "app_id": e.app_id,
            "interaction_id": e.interaction_id,
            "kind": e.kind.value,
            "value": e.value,
            "scale_max": e.scale_max,
            "text": e.text,
            "occurred_at": e.occurred_at,
        }
        for e in _unique_by_event_id(feedback)
    ]
    inserted += insert_ignoring_duplicates(session, Feedback.__table__, feedback_rows)
    result.inserted = inserted
    result.duplicates = len(interactions) + len(feedback) - inserted
    for e in interactions:
        if e.system_prompt is not None and e.system_prompt.text:
            register_prompt_version(
                session,
                app_id=e.app_id,
                name=e.system_prompt.id,
                version=e.system_prompt.version,
                text=e.system_prompt.text,
                source="event",
            )
    result.touched = {(e.app_id, e.interaction_id) for e in (*interactions, *feedback)}
    return result


def _unique_by_event_id(events: Iterable[EventT]) -> list[EventT]:
    seen: dict[str, EventT] = {}
    for e in events:
        seen.setdefault(e.event_id, e)
    return list(seen.values())


def _unique_by_key(events: Iterable[InteractionEvent]) -> list[InteractionEvent]:
    seen: dict[tuple[str, str], InteractionEvent] = {}
    for e in _unique_by_event_id(events):
        seen.setdefault((e.app_id, e.interaction_id), e)
    return list(seen.values())


def judge_touched(
    session: Session, touched: set[InteractionKey], settings: Settings, embedding_model: str
) -> list[int]:
    """Re-judge every touched interaction from all its feedback (so order of arrival does not
    matter) and return ids of failing ones whose query has no embedding yet.

    Returning not-yet-embedded ids, rather than newly-failing ones, is what makes a crash between
    the database commit and the enqueue harmless: the redelivered batch enqueues them again.
    """
    if not touched:
        return []
    keys = sorted(touched)
    interactions = []
    feedback_by_key: dict[InteractionKey, list[Feedback]] = {}
    for chunk in _chunks(keys, 500):
        interactions += session.scalars(
            select(Interaction).where(tuple_(Interaction.app_id, Interaction.interaction_id).in_(chunk))
        ).all()
        for fb in session.scalars(
            select(Feedback).where(tuple_(Feedback.app_id, Feedback.interaction_id).in_(chunk))
        ):
            feedback_by_key.setdefault((fb.app_id, fb.interaction_id), []).append(fb)
    failing: list[Interaction] = []
    for row in interactions:
        verdict: FailureVerdict = judge_interaction(
            row, feedback_by_key.get((row.app_id, row.interaction_id), []), settings
        )
        if row.failing != verdict.failing or row.failure_reasons != verdict.reasons:
            row.failing = verdict.failing
            row.failure_reasons = verdict.reasons
        if verdict.failing:
            failing.append(row)
    if not failing:
        return []
    hashes = {row.query_hash for row in failing}
    embedded = set(
        session.scalars(
            select(Embedding.text_hash).where(
                Embedding.model == embedding_model, Embedding.text_hash.in_(hashes)
            )
        )
    )
    return sorted(row.id for row in failing if row.query_hash not in embedded)


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
