"""The periodic sweeps (abandon, orphan feedback) run inside `refinery ingest` when there is no
Celery beat (eager mode, no REDIS_URL): at most once per SIGNALS_SWEEP_INTERVAL_S, between polls,
after the batch before was committed. With beat, the tasks in workers.tasks run them instead."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaProducer
from sqlalchemy.orm import Session, sessionmaker

from refinery.ingest.deadletter import DeadLetterQueue
from refinery.settings import Settings

log = logging.getLogger(__name__)


def inline_sweeps(
    settings: Settings,
    sessions: sessionmaker[Session],
    producer: KafkaProducer,
    enqueue: Callable[[list[int]], None],
) -> Callable[[], None] | None:
    if not settings.rephrase_detection_enabled:
        return None
    last = [time.monotonic()]

    def tick() -> None:
        if time.monotonic() - last[0] < settings.signals_sweep_interval_s:
            return
        last[0] = time.monotonic()
        run_sweeps(settings, sessions, producer, enqueue)

    return tick


def run_sweeps(
    settings: Settings,
    sessions: sessionmaker[Session],
    producer: KafkaProducer,
    enqueue: Callable[[list[int]], None],
) -> tuple[int, int]:
    """One abandon sweep and one orphan sweep; returns (abandoned, orphans dead-lettered)."""
    from refinery.embed.embedder import get_embedder
    from refinery.signals.orphans import sweep_orphans
    from refinery.signals.sessions import analyze_sessions, sweep_abandoned

    pending: list = []
    with sessions.begin() as session:
        result = sweep_abandoned(session, settings, on_pending=pending.extend)
    if pending:  # closed at the next sweep, once analysed
        with sessions.begin() as session:
            analysed = analyze_sessions(session, pending, settings, get_embedder(settings))
        result.to_embed += analysed.to_embed
    for start in range(0, len(result.to_embed), settings.enqueue_batch_size):
        enqueue(result.to_embed[start : start + settings.enqueue_batch_size])
    dead_letters = DeadLetterQueue(
        producer, settings.topic_dead_letter, max_value_bytes=settings.dead_letter_max_value_bytes
    )
    with sessions.begin() as session:
        orphans = sweep_orphans(session, dead_letters, settings)
    if result.abandoned or orphans:
        log.info(
            "signal sweeps: %d abandoned session(s), %d orphan feedback dead-lettered",
            result.abandoned,
            orphans,
        )
    return result.abandoned, orphans
