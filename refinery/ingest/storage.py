"""Store validated (and already redacted) events idempotently, then join feedback to interactions.

Owns the interactions, feedback and sessions tables and the failure verdict on each interaction.
Does not commit: the consumer (or the signal task) decides when a batch is durable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    String,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from refinery.embed.keys import query_hash
from refinery.ingest.failure import FailureVerdict, judge_interaction
from refinery.settings import Settings
from refinery.store.models import Embedding, Feedback, Interaction, SessionState
from refinery.store.prompts import register_prompt_version
from schemas.events import FeedbackEvent, InteractionEvent

T = TypeVar("T")
EventT = TypeVar("EventT", InteractionEvent, FeedbackEvent)
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


def insert_new(session: Session, table: object, rows: list[dict]) -> int:  # type: ignore[type-arg]
    """INSERT ... ON CONFLICT DO NOTHING; returns the rows inserted, counted with RETURNING
    (a driver's rowcount of a multi-row insert is not reliable: psycopg reports 0 or -1)."""
    key = next(iter(table.primary_key.columns))  # type: ignore[attr-defined]
    return len(_insert_returning(session, table, rows, [key]))


def _insert_returning(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    returning: list[Any],
) -> list[Row[Any]]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING `returning`, one statement per batch, the rows
    read from one JSON document (see _json_rows)."""
    if not rows:
        return []
    stmt = _insert_from_json(session, table, rows).on_conflict_do_nothing()
    return list(session.execute(stmt.returning(*returning)).all())


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert_from_json(session: Session, table: Any, rows: list[dict[str, Any]]) -> Any:
    """The dialect's INSERT INTO table (columns of rows[0]) SELECT FROM _json_rows(rows)."""
    names, rows_select = _json_rows(session, table, rows)
    insert = postgresql.insert if _postgres(session) else sqlite.insert
    return insert(table).from_select(names, rows_select)


def _json_rows(session: Session, table: Any, rows: list[dict[str, Any]]) -> tuple[list[str], Any]:
    """The columns of rows[0] and a SELECT of `rows` from one JSON document parameter: on
    PostgreSQL json_to_recordset, on SQLite json_each. One json.dumps (C) for the whole batch,
    and one statement text whatever the batch size, compiled once: an executemany or a
    multi-row VALUES makes SQLAlchemy and the driver process every value of every row in Python
    (on PostgreSQL ~10,000 placeholders per 500 rows, ~30 ms), and the server reads the document
    faster than it takes the same values bound one by one."""
    names = list(rows[0])
    if _postgres(session):
        document = json.dumps(rows, default=_iso_datetime)
        records = (
            func.json_to_recordset(cast(bindparam("rows", document, type_=Text()), postgresql.JSON))
            .table_valued(*(column(name, table.c[name].type) for name in names))
            .render_derived(with_types=True)
        )
        return names, select(*(records.c[n] for n in names))
    each = _json_each("rows", json.dumps(rows, default=_sqlite_datetime))
    fields = [_sqlite_field(each.c.value, name, table.c[name].type) for name in names]
    # WHERE true: without it SQLite reads the ON CONFLICT of the INSERT as a join's ON.
    return names, select(*fields).where(true())


def _json_each(name: str, document: str) -> Any:
    """SQLite's json_each over one JSON document parameter `name`: a row (`value`) per element."""
    return func.json_each(bindparam(name, document, type_=Text())).table_valued("value")


def _sqlite_field(value: Any, name: str, type_: Any) -> Any:
    field = func.json_extract(value, f'$."{name}"')
    if isinstance(type_, JSON):
        # Stored as JSON text, like SQLAlchemy's JSON type does (None as 'null'): json_extract
        # gives an object or array as its text but a string as the bare string.
        return func.json_quote(field)
    return field


def _iso_datetime(value: object) -> str:
    """Timestamps as ISO 8601 with their offset (every stored one is aware, see _utc)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def _sqlite_datetime(value: object) -> str:
    """Timestamps in the text form SQLAlchemy stores in SQLite, "2026-01-02 03:04:05.000006"
    (its DATETIME storage format; compared as text in queries), in UTC (see _utc)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    raise TypeError(f"{type(value).__name__} is not a column value")


_TEXT_ARRAY = postgresql.ARRAY(String())


def _where_keys(session: Session, columns: tuple[Any, Any], keys: list[tuple[str, str]]) -> Any:
    """`(a, b) IN keys`, the keys as one parameter (see _json_rows): on PostgreSQL two arrays,
    on SQLite a JSON document. An expanding IN would be compiled again for every batch size."""
    if not _postgres(session):
        each = _json_each("keys", json.dumps(keys))
        return tuple_(*columns).in_(
            select(func.json_extract(each.c.value, "$[0]"), func.json_extract(each.c.value, "$[1]"))
        )
    pairs = (
        func.unnest(
            bindparam("key_a", [k[0] for k in keys], type_=_TEXT_ARRAY),
            bindparam("key_b", [k[1] for k in keys], type_=_TEXT_ARRAY),
        )
        .table_valued("a", "b")
        .render_derived()
    )
    return tuple_(*columns).in_(select(pairs.c.a, pairs.c.b))


def _where_in(session: Session, column: Any, values: list[Any], array_type: Any) -> Any:
    """`column IN values`, one parameter: on PostgreSQL `= ANY(array)`, on SQLite json_each."""
    if not _postgres(session):
        return column.in_(select(_json_each("values", json.dumps(values)).c.value))
    return column == func.any(bindparam("values", values, type_=postgresql.ARRAY(array_type)))


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
    table = Interaction.__table__
    new_rows = _insert_returning(
        session,
        table,
        interaction_rows,
        [table.c.app_id, table.c.session_id, table.c.occurred_at],
    )
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
    prompts: dict[tuple[str, str, str], str] = {}  # one registration per version per batch
    for e in interactions:
        if e.system_prompt is not None and e.system_prompt.text:
            key = (e.app_id, e.system_prompt.id, e.system_prompt.version)
            prompts.setdefault(key, e.system_prompt.text)
    for (app_id, name, version), text in prompts.items():
        register_prompt_version(
            session, app_id=app_id, name=name, version=version, text=text, source="event"
        )
    result.touched = {(e.app_id, e.interaction_id) for e in interactions}
    result.touched |= {(e.app_id, e.interaction_id) for e in feedback}
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
    table: Any = SessionState.__table__
    # Sorted: two consumers upserting overlapping sessions take row locks in the same order.
    rows = [
        {
            "app_id": a,
            "session_id": s,
            "last_occurred_at": at,
            "last_seen_at": now,
            "closed_at": None,
            "analyzed_at": None,
        }
        for (a, s), at in sorted(latest.items())
    ]
    stmt = _insert_from_json(session, table, rows)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
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
    session.execute(stmt)


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
                    _where_keys(session, (SessionState.app_id, SessionState.session_id), chunk),
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


_JUDGED: Any = Interaction.__table__
_SIGNALS: Any = Feedback.__table__
_SIGNAL_COLUMNS = (
    _SIGNALS.c.id, _SIGNALS.c.app_id, _SIGNALS.c.interaction_id, _SIGNALS.c.event_id,
    _SIGNALS.c.kind, _SIGNALS.c.value, _SIGNALS.c.scale_max, _SIGNALS.c.text,
    _SIGNALS.c.occurred_at, _SIGNALS.c.source, _SIGNALS.c.detail, _SIGNALS.c.joined,
)  # fmt: skip
_VERDICT_UPDATE = (
    update(_JUDGED)
    .where(_JUDGED.c.id == bindparam("row_id"))
    .values(
        failing=bindparam("new_failing"),
        failure_reasons=bindparam("new_reasons"),
        failure_score=bindparam("new_score"),
    )
)


def judge_touched(
    session: Session, touched: set[InteractionKey], settings: Settings, embedding_model: str
) -> list[int]:
    """Re-judge every touched interaction from all its feedback (so order of arrival does not
    matter) and return ids of failing ones whose query has no embedding yet.

    Returning not-yet-embedded ids, rather than newly-failing ones, is what makes a crash between
    the database commit and the enqueue harmless: the redelivered batch enqueues them again.

    Plain rows, not ORM objects, and one statement per step for the whole batch (chunks of
    500 keys): a verdict that did not change is not written.
    """
    if not touched:
        return []
    keys = sorted(touched)
    interactions: list[Any] = []  # rows
    feedback_by_key: dict[InteractionKey, list[Any]] = {}
    for chunk in _chunks(keys, 500):
        interactions += session.execute(
            select(
                _JUDGED.c.id, _JUDGED.c.app_id, _JUDGED.c.interaction_id, _JUDGED.c.occurred_at,
                _JUDGED.c.failing, _JUDGED.c.failure_reasons, _JUDGED.c.failure_score,
                _JUDGED.c.query_hash,
            ).where(_where_keys(session, (_JUDGED.c.app_id, _JUDGED.c.interaction_id), chunk))
        ).all()  # fmt: skip
        for fb in session.execute(
            select(*_SIGNAL_COLUMNS).where(
                _where_keys(session, (_SIGNALS.c.app_id, _SIGNALS.c.interaction_id), chunk)
            )
        ):
            feedback_by_key.setdefault((fb.app_id, fb.interaction_id), []).append(fb)
    failing: list[Any] = []
    unjoined: list[int] = []
    changed: list[dict[str, Any]] = []
    for row in interactions:
        signals = feedback_by_key.get((row.app_id, row.interaction_id), [])
        unjoined += [fb.id for fb in signals if not fb.joined]
        verdict: FailureVerdict = judge_interaction(row, signals, settings)
        if (
            row.failing != verdict.failing
            or row.failure_reasons != verdict.reasons
            or row.failure_score != verdict.score
        ):
            changed.append(
                {
                    "row_id": row.id,
                    "new_failing": verdict.failing,
                    "new_reasons": verdict.reasons,
                    "new_score": verdict.score,
                }
            )
        if verdict.failing:
            failing.append(row)
    if changed:
        # Core executemany; the ORM's bulk-update-by-primary-key path would want mapped names.
        session.connection().execute(_VERDICT_UPDATE, changed)
    for ids in _chunks(sorted(unjoined), 500):
        session.execute(
            update(_SIGNALS)
            .where(_where_in(session, _SIGNALS.c.id, ids, _SIGNALS.c.id.type))
            .values(joined=True)
        )
    if not failing:
        return []
    hashes = sorted({row.query_hash for row in failing})
    embedded = set(
        session.scalars(
            select(Embedding.text_hash).where(
                Embedding.model == embedding_model,
                _where_in(session, Embedding.text_hash, hashes, String()),
            )
        )
    )
    return sorted(row.id for row in failing if row.query_hash not in embedded)


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
