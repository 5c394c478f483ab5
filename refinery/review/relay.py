"""Outbox relay: publish approved refinements to Kafka, then mark them sent.

At-least-once by construction (publish, wait for the ack, then mark); a crash in between
republishes the same outbox row, and consumers drop duplicates by its `outbox_id`. A pass that
fails because the database or Kafka is unreachable is retried after `idle_sleep_s`: the relay
waits out an outage (its /readyz says 503 meanwhile) instead of exiting. `refinery relay` sends
through a `ReplacingProducer` (refinery/kafka/clients.py): a producer left failing by a broker
restart is replaced, so approvals made after the restart are still published.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from kafka.errors import KafkaError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from refinery.kafka.clients import ReplacingProducer
from refinery.ops.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED
from refinery.store.models import OutboxRow, utcnow

log = logging.getLogger(__name__)


def relay_once(sessions: sessionmaker[Session], producer, batch_size: int) -> int:  # type: ignore[no-untyped-def]
    """Publish up to `batch_size` unsent rows; returns how many were published. Sets the backlog
    gauge to the unsent rows seen at the start of the pass."""
    with sessions() as session:
        OUTBOX_BACKLOG.set(
            session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
            )
            or 0
        )
        query = (
            select(OutboxRow)
            .where(OutboxRow.published_at.is_(None))
            .order_by(OutboxRow.created_at, OutboxRow.id)
            .limit(batch_size)
        )
        if session.get_bind().dialect.name == "postgresql":
            # several relays never send one row twice at once
            query = query.with_for_update(skip_locked=True)
        rows = session.scalars(query).all()
        if not rows:
            return 0
        futures = [
            producer.send(
                row.topic,
                key=row.key.encode(),
                value=json.dumps(row.payload, sort_keys=True).encode(),
                headers=[("outbox_id", row.id.encode())],
            )
            for row in rows
        ]
        for future in futures:
            future.get(timeout=30)
        now = utcnow()
        for row in rows:
            row.published_at = now
        session.commit()
        OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)


def run_relay(
    sessions: sessionmaker[Session],
    producer,  # type: ignore[no-untyped-def]
    *,
    batch_size: int,
    idle_sleep_s: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    while not should_stop():
        try:
            sent = relay_once(sessions, producer, batch_size)
        except (OperationalError, KafkaError) as exc:
            if isinstance(exc, KafkaError) and isinstance(producer, ReplacingProducer):
                producer.failed()  # a future that timed out never failed: replace it too
            log.warning("relay pass failed, retrying in %.1f s: %s", idle_sleep_s, exc)
            time.sleep(idle_sleep_s)
            continue
        if sent:
            log.info("published %d approved refinements", sent)
        else:
            time.sleep(idle_sleep_s)
