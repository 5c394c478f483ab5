"""Orphan feedback: feedback whose interaction never arrived within FEEDBACK_JOIN_WINDOW_S of the
feedback's arrival is dead-lettered (reason orphan_feedback) and removed from the store.

`refinery dlq replay --reason orphan_feedback` sends it back to the feedback topic, where it
waits for its interaction once more. The dead letter is acknowledged before the row is
deleted, so a crash in between dead-letters it twice rather than losing it. `sweep_to_dead_letters`
is the beat's sweep: a producer of its own, one transaction.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from refinery.ingest.deadletter import DeadLetterQueue
from refinery.ingest.failure import as_utc
from refinery.ingest.validate import InvalidEvent
from refinery.kafka.clients import make_producer
from refinery.settings import Settings
from refinery.store.db import session_scope
from refinery.store.models import Feedback, Interaction
from schemas.events import CURRENT_SCHEMA_VERSION

log = logging.getLogger(__name__)


def feedback_event_json(fb: Feedback) -> bytes:
    """The stored (already redacted) feedback row as the event it came from."""
    event = {
        "event_id": fb.event_id,
        "schema_version": CURRENT_SCHEMA_VERSION,
        "event_type": "feedback",
        "app_id": fb.app_id,
        "interaction_id": fb.interaction_id,
        "occurred_at": as_utc(fb.occurred_at).isoformat(),
        "kind": fb.kind,
        "scale_max": fb.scale_max,
    }
    for name in ("session_id", "value", "text"):
        if getattr(fb, name) is not None:
            event[name] = getattr(fb, name)
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def sweep_orphans(
    session: Session,
    dead_letters: DeadLetterQueue,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> int:
    """Dead-letter and delete up to SIGNALS_SWEEP_BATCH orphans; returns how many."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.feedback_join_window_s)
    rows = session.scalars(
        select(Feedback)
        .where(Feedback.joined.is_(False), Feedback.ingested_at <= cutoff, Feedback.source == "app")
        .order_by(Feedback.id)
        .limit(settings.signals_sweep_batch)
    ).all()
    if not rows:
        return 0
    keys = sorted({(fb.app_id, fb.interaction_id) for fb in rows})
    present: set[tuple[str, str]] = set()
    for start in range(0, len(keys), 500):
        present |= {
            (r.app_id, r.interaction_id)
            for r in session.execute(
                select(Interaction.app_id, Interaction.interaction_id).where(
                    tuple_(Interaction.app_id, Interaction.interaction_id).in_(
                        keys[start : start + 500]
                    )
                )
            )
        }
    joined = [fb.id for fb in rows if (fb.app_id, fb.interaction_id) in present]
    orphans = [fb for fb in rows if (fb.app_id, fb.interaction_id) not in present]
    if joined:  # joined after all (rows older than the joined flag); not orphans
        session.execute(update(Feedback).where(Feedback.id.in_(joined)).values(joined=True))
    for fb in orphans:
        dead_letters.send_raw(
            feedback_event_json(fb),
            InvalidEvent(
                "orphan_feedback",
                f"no interaction {fb.interaction_id!r} of app {fb.app_id!r} arrived within"
                f" FEEDBACK_JOIN_WINDOW_S={settings.feedback_join_window_s:g} of this feedback",
            ),
            key=fb.app_id.encode(),
            source_topic=fb.kafka_topic or settings.topic_feedback,
            source_partition=fb.kafka_partition if fb.kafka_partition is not None else -1,
            source_offset=fb.kafka_offset if fb.kafka_offset is not None else -1,
            source="sweep",
        )
    dead_letters.flush()
    if orphans:
        session.execute(delete(Feedback).where(Feedback.id.in_([fb.id for fb in orphans])))
    return len(orphans)


def sweep_to_dead_letters(settings: Settings) -> int:
    """`sweep_orphans` with a producer of its own to TOPIC_DEAD_LETTER, in one transaction;
    returns how many were dead-lettered. Without KAFKA_BOOTSTRAP_SERVERS there is nowhere to
    send them: skipped (logged), 0."""
    if settings.kafka_bootstrap_servers is None:
        log.warning("orphan feedback sweep skipped: KAFKA_BOOTSTRAP_SERVERS is unset")
        return 0
    producer = make_producer(settings)
    try:
        dead_letters = DeadLetterQueue(
            producer,
            settings.topic_dead_letter,
            max_value_bytes=settings.dead_letter_max_value_bytes,
        )
        with session_scope(settings.database_url) as session:
            return sweep_orphans(session, dead_letters, settings)
    finally:
        producer.close()
