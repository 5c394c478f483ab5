"""`refinery ingest`: the consumer group on the interactions and feedback topics.

Per poll batch, in this order (the commit order; a crash anywhere before step 5 redelivers the
batch, and every step is idempotent):
  1. validate each record; invalid ones are sent to the dead-letter topic with the reason
  2. redact and store valid events (unique on event_id), re-judge touched interactions
  3. commit the database transaction
  4. enqueue failing interactions that have no embedding yet (Celery), and wait for the
     dead-letter producer's acknowledgements
  5. commit the Kafka offsets of the batch
Never auto-commits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy.orm import Session, sessionmaker

from refinery.ingest.deadletter import DeadLetterQueue
from refinery.ingest.redaction import redact_event
from refinery.ingest.storage import judge_touched, store_events
from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.settings import Settings
from schemas.events import FeedbackEvent, InteractionEvent

log = logging.getLogger(__name__)

Enqueue = Callable[[list[int]], None]


@dataclass
class IngestStats:
    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
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
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.sessions = sessions
        self.enqueue = enqueue
        self.embedding_model = embedding_model
        self.dead_letters = DeadLetterQueue(producer, settings.topic_dead_letter)
        self.stats = IngestStats()
        self.last_poll_at = 0.0
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
            return 0
        self.process(records)
        self.consumer.commit()
        return len(records)

    def process(self, records: Iterable[ConsumerRecord]) -> None:
        interactions: list[InteractionEvent] = []
        feedback: list[FeedbackEvent] = []
        count = 0
        for record in records:
            count += 1
            event = parse_event(record.value, self.settings, expected_type=self._expected_type.get(record.topic))
            if isinstance(event, InvalidEvent):
                self.dead_letters.send(record, event)
                self.stats.dead_lettered[event.reason] += 1
                continue
            event = redact_event(event)
            (interactions if isinstance(event, InteractionEvent) else feedback).append(event)
        with self.sessions() as session:
            stored = store_events(session, interactions, feedback)
            to_embed = judge_touched(session, stored.touched, self.settings, self.embedding_model)
            session.commit()
        size = self.settings.enqueue_batch_size
        for start in range(0, len(to_embed), size):
            self.enqueue(to_embed[start : start + size])
        self.dead_letters.flush()
        self.stats.consumed += count
        self.stats.stored += stored.inserted
        self.stats.duplicates += stored.duplicates
        self.stats.enqueued += len(to_embed)
        self.stats.batches += 1

    def caught_up(self) -> bool:
        """True when every assigned partition has been consumed to its end."""
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        ends = self.consumer.end_offsets(list(assignment))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assignment)

    def run(self, should_stop: Callable[[], bool] = lambda: False, until_caught_up: bool = False) -> IngestStats:
        idle_polls = 0
        while not should_stop():
            handled = self.poll_once()
            if until_caught_up:
                idle_polls = 0 if handled else idle_polls + 1
                # Two empty polls at the end of every partition: nothing more is coming for now.
                if idle_polls >= 2 and self.caught_up():
                    break
        return self.stats

    def close(self) -> None:
        self.dead_letters.flush()
        self.consumer.close(autocommit=False)
