"""Store validated (and already redacted) events idempotently, then join feedback to interactions.

Owns the interactions, feedback and sessions tables and the failure verdict on each interaction.
Does not commit: the consumer (or the signal task) decides when a batch is durable.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import case, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from refinery.ingest.failure import FailureVerdict, judge_interaction
from refinery.settings import Settings
from refinery.store.models import Embedding, Feedback, Interaction, SessionState
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
SessionKey = tuple[str, str]  # (app_id, session_id)
Origin = tuple[str, int, int]  # (topic, partition, offset) the event was read at


@dataclass
class StoreResult:
    inserted: int = 0
    duplicates: int = 0
    touched: set[InteractionKey] = field(default_factory=set)
    # Sessions of the batch's interactions, new or redelivered (see sessions_due).
    sessions: set[SessionKey] = field(default_factory=set)


def _utc(moment: datetime) -> datetime:
    # SQLite keeps no offset: store every timestamp in UTC so that gaps between them are right.
    return moment.astimezone(UTC)


def _insert(session: Session, table: object) -> object:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def insert_new(session: Session, table: object, rows: list[dict]) -> int:  # type: ignore[type-arg]
    """INSERT ... ON CONFLICT DO NOTHING; returns the rows inserted, counted with RETURNING
    (a driver's rowcount of a multi-row insert is not reliable: psycopg reports 0 or -1)."""
    if not rows:
        return 0
    stmt = _insert(session, table).on_conflict_do_nothing()  # type: ignore[attr-defined]
    key = next(iter(table.primary_key.columns))  # type: ignore[attr-defined]
    return len(session.execute(stmt.returning(key), rows).all())


def store_events(
    session: Session,
    interactions: list[InteractionEvent],
    feedback: list[FeedbackEvent],
    *,
    origins: Mapping[str, Origin] | None = None,
    now: datetime | None = None,
) -> StoreResult:
    """Insert events, ignoring event_ids already stored. Re-delivery is a no-op. `origins`
    (event_id -> where it was read) is kept on feedback for the orphan sweep's dead letters."""
    result = StoreResult()
    now = now or datetime.now(UTC)
    origins = origins or {}
    interaction_rows = [
        {
            "event_id": e.event_id,
            "app_id": e.app_id,
            "interaction_id": e.interaction_id,
            "session_id": e.session_id,
            "turn_index": e.turn_index,
            "occurred_at": _utc(e.occurred_at),
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
            "failure_score": 0.0,
            "ingested_at": now,
        }
        for e in sorted(_unique_by_key(interactions), key=lambda e: (e.app_id, e.interaction_id))
    ]
    # Same interaction_id under a new event_id is a duplicate too (the unique key catches it).
    new_rows = []
    if interaction_rows:
        table = Interaction.__table__
        stmt = _insert(session, table).on_conflict_do_nothing()  # type: ignore[attr-defined]
        new_rows = session.execute(
            stmt.returning(table.c.app_id, table.c.session_id, table.c.occurred_at),
            interaction_rows,
        ).all()
    inserted = len(new_rows)
    _touch_sessions(session, new_rows, now)
    feedback_rows = [
        {
            "event_id": e.event_id,
            "app_id": e.app_id,
            "interaction_id": e.interaction_id,
            "session_id": e.session_id,
            "kind": e.kind.value,
            "value": e.value,
            "scale_max": e.scale_max,
            "text": e.text,
            "occurred_at": _utc(e.occurred_at),
            "ingested_at": now,
            "source": "app",
            "joined": False,
            "kafka_topic": origins.get(e.event_id, (None, None, None))[0],
            "kafka_partition": origins.get(e.event_id, (None, None, None))[1],
            "kafka_offset": origins.get(e.event_id, (None, None, None))[2],
        }
        for e in _unique_by_event_id(feedback)
    ]
    inserted += insert_new(session, Feedback.__table__, feedback_rows)
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
    result.sessions = {(e.app_id, e.session_id) for e in interactions}
    return result


def _touch_sessions(session: Session, new_rows: list, now: datetime) -> None:  # type: ignore[type-arg]
    """Upsert the sessions of newly stored interactions: later last turn, seen now, reopened
    (a session the abandon sweep closed has not ended after all), analysis due."""
    latest: dict[SessionKey, datetime] = {}
    for app_id, session_id, occurred_at in new_rows:
        occurred_at = _utc(occurred_at) if occurred_at.tzinfo else occurred_at.replace(tzinfo=UTC)
        key = (app_id, session_id)
        latest[key] = max(latest.get(key, occurred_at), occurred_at)
    if not latest:
        return
    table = SessionState.__table__
    stmt = _insert(session, table)
    excluded = stmt.excluded  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["app_id", "session_id"],
        set_={
            "last_occurred_at": case(
                (excluded.last_occurred_at > table.c.last_occurred_at, excluded.last_occurred_at),
                else_=table.c.last_occurred_at,
            ),
            "last_seen_at": excluded.last_seen_at,
            "closed_at": None,
        },
    )
    # Sorted: two consumers upserting overlapping sessions take row locks in the same order.
    session.execute(
        stmt,
        [
            {
                "app_id": a,
                "session_id": s,
                "last_occurred_at": at,
                "last_seen_at": now,
                "closed_at": None,
                "analyzed_at": None,
            }
            for (a, s), at in sorted(latest.items())
        ],
    )


def sessions_due(session: Session, keys: Iterable[SessionKey]) -> list[SessionKey]:
    """Of these sessions, those with turns that no rephrase analysis has covered yet. Asking
    for the batch's sessions, redelivered ones included, is what makes a crash between the
    database commit and the enqueue harmless: the analysis is still due, so it is enqueued."""
    due: list[SessionKey] = []
    for chunk in _chunks(sorted(set(keys)), 500):
        due += [
            (row.app_id, row.session_id)
            for row in session.execute(
                select(SessionState.app_id, SessionState.session_id).where(
                    tuple_(SessionState.app_id, SessionState.session_id).in_(chunk),
                    or_(
                        SessionState.analyzed_at.is_(None),
                        SessionState.analyzed_at < SessionState.last_seen_at,
                    ),
                )
            )
        ]
    return sorted(due)


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
            select(Interaction).where(
                tuple_(Interaction.app_id, Interaction.interaction_id).in_(chunk)
            )
        ).all()
        for fb in session.scalars(
            select(Feedback).where(tuple_(Feedback.app_id, Feedback.interaction_id).in_(chunk))
        ):
            feedback_by_key.setdefault((fb.app_id, fb.interaction_id), []).append(fb)
    failing: list[Interaction] = []
    unjoined: list[int] = []
    for row in interactions:
        signals = feedback_by_key.get((row.app_id, row.interaction_id), [])
        unjoined += [fb.id for fb in signals if not fb.joined]
        verdict: FailureVerdict = judge_interaction(row, signals, settings)
        if (
            row.failing != verdict.failing
            or row.failure_reasons != verdict.reasons
            or row.failure_score != verdict.score
        ):
            row.failing = verdict.failing
            row.failure_reasons = verdict.reasons
            row.failure_score = verdict.score
        if verdict.failing:
            failing.append(row)
    for chunk in _chunks(sorted(unjoined), 500):
        session.execute(update(Feedback).where(Feedback.id.in_(chunk)).values(joined=True))
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
