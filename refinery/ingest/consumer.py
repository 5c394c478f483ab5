"""`refinery ingest`: the consumer group on the interactions and feedback topics.

Per poll batch, in this order (the commit order; a crash anywhere before step 5 redelivers the
batch, and every step is idempotent):
  1. validate each record; invalid ones are sent to the dead-letter topic with the reason
     (a cap on how many may be stops the consumer with an error instead, see DeadLetterCap)
  2. redact and store valid events (unique on event_id; sessions upserted), re-judge touched
     interactions
  3. commit the database transaction
  4. enqueue failing interactions that have no embedding yet, and the batch's sessions whose
     rephrase analysis is due (Celery), then wait for the dead-letter producer's
     acknowledgements
  5. commit the Kafka offsets of the batch
Never auto-commits. Embedding and rephrase detection happen in Celery tasks, never here: this
loop does not load the model.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy.orm import Session, sessionmaker

from refinery.ingest.deadletter import DeadLetterCap, DeadLetterQueue
from refinery.ingest.redaction import redact_event
from refinery.ingest.storage import Origin, SessionKey, judge_touched, sessions_due, store_events
from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.ops.metrics import (
    CONSUMER_LAG,
    ENQUEUE_BATCHES,
    EVENTS_CONSUMED,
    EVENTS_DUPLICATE,
    INGEST_BATCH_SIZE,
)
from refinery.settings import Settings
from schemas.events import FeedbackEvent, InteractionEvent

log = logging.getLogger(__name__)

Enqueue = Callable[[list[int]], None]
EnqueueSessions = Callable[[list[SessionKey]], None]
Clock = Callable[[], datetime]


@dataclass
class IngestStats:
    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
    sessions_enqueued: int = 0
    batches: int = 0


class IngestConsumer:
    def __init__(
        self,
        settings: Settings,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        embedding_model: str,
        enqueue_sessions: EnqueueSessions | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        """`enqueue_sessions`: hands sessions to rephrase detection (refinery.signals); None
        turns session signals off for this consumer. `clock`: what timestamps are checked
        against and stored as arrival time."""
        self.settings = settings
        self.consumer = consumer
        self.sessions = sessions
        self.enqueue = enqueue
        self.enqueue_sessions = enqueue_sessions
        self.embedding_model = embedding_model
        self.clock = clock
        self.dead_letters = DeadLetterQueue(
            producer,
            settings.topic_dead_letter,
            max_value_bytes=settings.dead_letter_max_value_bytes,
        )
        self.cap = DeadLetterCap(
            max_consecutive=settings.dead_letter_max_consecutive,
            max_ratio=settings.dead_letter_max_ratio,
            window=settings.dead_letter_ratio_window,
        )
        self.stats = IngestStats()
        self.last_poll_at = 0.0
        self._lag_partitions: set[tuple[str, int]] = set()
        self._expected_type = {
            settings.topic_interactions: "interaction",
            settings.topic_feedback: "feedback",
        }

    def poll_once(self) -> int:
        """Poll one batch and carry it through to committed offsets; returns records handled."""
        batch = self.consumer.poll(
            timeout_ms=self.settings.ingest_poll_timeout_ms,
            max_records=self.settings.ingest_batch_max_records,
        )
        self.last_poll_at = time.monotonic()
        records = [r for partition_records in batch.values() for r in partition_records]
        if not records:
            self._refresh_lag()  # local figures only: keeps the gauge moving while idle
            return 0
        self.process(records)
        self.consumer.commit()
        self._refresh_lag()
        return len(records)

    def process(self, records: Iterable[ConsumerRecord]) -> None:
        interactions: list[InteractionEvent] = []
        feedback: list[FeedbackEvent] = []
        origins: dict[str, Origin] = {}
        now = self.clock()
        consumed: Counter[str] = Counter()  # per topic; the metric is updated once per batch
        for record in records:
            consumed[record.topic] += 1
            event = parse_event(
                record.value,
                self.settings,
                expected_type=self._expected_type.get(record.topic),
                now=now,
            )
            if isinstance(event, InvalidEvent):
                self.cap.record(event, f"{record.topic}/{record.partition}@{record.offset}")
                self.dead_letters.send(record, event)
                self.stats.dead_lettered[event.reason] += 1
                continue
            self.cap.record(None)
            event = redact_event(event)
            origins[event.event_id] = (record.topic, record.partition, record.offset)
            (interactions if isinstance(event, InteractionEvent) else feedback).append(event)
        with self.sessions() as session:
            stored = store_events(session, interactions, feedback, origins=origins, now=now)
            to_embed = judge_touched(session, stored.touched, self.settings, self.embedding_model)
            due = sessions_due(session, stored.sessions) if self.enqueue_sessions else []
            session.commit()
        size = self.settings.enqueue_batch_size
        for start in range(0, len(to_embed), size):
            self.enqueue(to_embed[start : start + size])
            ENQUEUE_BATCHES.inc()
        if self.enqueue_sessions is not None:
            for start in range(0, len(due), size):
                self.enqueue_sessions(due[start : start + size])
        self.dead_letters.flush()
        count = consumed.total()
        for topic, handled in consumed.items():
            EVENTS_CONSUMED.labels(topic=topic).inc(handled)
        EVENTS_DUPLICATE.inc(stored.duplicates)
        INGEST_BATCH_SIZE.observe(count)
        self.stats.consumed += count
        self.stats.stored += stored.inserted
        self.stats.duplicates += stored.duplicates
        self.stats.enqueued += len(to_embed)
        self.stats.sessions_enqueued += len(due)
        self.stats.batches += 1

    def _refresh_lag(self) -> None:
        """Lag of every assigned partition: the high watermark of the last fetch minus our
        position (after the commit, the committed offset). Both are known locally, so this costs
        no request; a partition not fetched yet has no high watermark and is left out. Partitions
        no longer assigned lose their series, so that sum() over consumers counts each once."""
        current: set[tuple[str, int]] = set()
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is None:
                continue
            current.add((tp.topic, tp.partition))
            CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(end - self.consumer.position(tp), 0)
            )
        for topic, partition in self._lag_partitions - current:
            CONSUMER_LAG.remove(topic, str(partition))
        self._lag_partitions = current

    def caught_up(self) -> bool:
        """True when every assigned partition has been consumed to its end."""
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        ends = self.consumer.end_offsets(list(assignment))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assignment)

    def run(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        until_caught_up: bool = False,
        tick: Callable[[], None] | None = None,
    ) -> IngestStats:
        """Poll until `should_stop()`; `tick` runs after every poll (periodic work of a
        deployment without Celery beat, see refinery.signals.inline)."""
        idle_polls = 0
        while not should_stop():
            handled = self.poll_once()
            if tick is not None:
                tick()
            if until_caught_up:
                idle_polls = 0 if handled else idle_polls + 1
                # Two empty polls at the end of every partition: nothing more is coming for now.
                if idle_polls >= 2 and self.caught_up():
                    break
        return self.stats

    def close(self) -> None:
        self.dead_letters.flush()
        self.consumer.close(autocommit=False)
