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

A dependency that blips (Kafka, the Celery broker, the database: `dependency_of`) interrupts the
batch, not the process: the loop logs one line, backs off (doubling, up to INGEST_BACKOFF_MAX_S),
seeks back to the last committed offsets and processes again from there (every step above is
idempotent), reporting not ready (`unavailable`) meanwhile. Only what a restart cannot fix
(credentials refused, access denied: `IngestFatal`) or an unknown error ends `run`.
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

from refinery.embed import embedding_model_name
from refinery.ingest.deadletter import DeadLetterCap, DeadLetterQueue
from refinery.ingest.storage import Origin, SessionKey, judge_touched, sessions_due, store_events
from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.kafka.clients import make_consumer
from refinery.ops.metrics import (
    CONSUMER_LAG,
    ENQUEUE_BATCHES,
    EVENTS_CONSUMED,
    EVENTS_DUPLICATE,
    INGEST_BATCH_SIZE,
    INGEST_DEPENDENCY_ERRORS,
)
from refinery.redact.events import redact_event
from refinery.settings import Settings
from schemas.events import FeedbackEvent, InteractionEvent

log = logging.getLogger(__name__)

# Errors no restart fixes: refused credentials or access, an unknown database. Matched in the
# message too, since drivers report them as their generic operational error.
_FATAL_TEXT = (
    "authentication failed",
    "password authentication",
    "invalid password",
    "wrongpass",
    "noauth",
    "permission denied",
    "does not exist",
)

_BACKOFF_FIRST_S = 0.5


class IngestFatal(RuntimeError):
    """A dependency refused this consumer in a way a restart cannot fix (bad config, auth)."""


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def dependency_of(error: BaseException) -> str | None:
    """ "kafka", "broker" (Celery's Redis) or "database" when `error` says that dependency is
    unreachable or briefly refusing (retry later); None for anything else (a bug: let it crash).
    Raises IngestFatal when the dependency refused us for good."""
    from kafka import errors as kafka_errors
    from kombu.exceptions import OperationalError as BrokerError
    from redis import exceptions as redis_errors
    from sqlalchemy import exc as db_errors

    chain = _chain(error)
    text = " ".join(str(e).lower() for e in chain)
    refused = (
        kafka_errors.AuthorizationError,
        kafka_errors.SaslAuthenticationFailedError,
        redis_errors.AuthenticationError,
        redis_errors.AuthenticationWrongNumberOfArgsError,
    )
    if any(isinstance(e, refused) for e in chain):
        raise IngestFatal(f"{type(error).__name__}: {error}") from error
    if isinstance(error, kafka_errors.KafkaError):
        kind = "kafka"
    elif isinstance(error, (BrokerError, redis_errors.ConnectionError, redis_errors.TimeoutError)):
        kind = "broker"
    elif isinstance(error, (db_errors.OperationalError, db_errors.InterfaceError)) or (
        isinstance(error, db_errors.DBAPIError) and error.connection_invalidated
    ):
        kind = "database"
    else:
        return None
    if kind != "kafka" and any(marker in text for marker in _FATAL_TEXT):
        raise IngestFatal(f"{kind}: {type(error).__name__}: {error}") from error
    return kind


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
        # Why the last batch was interrupted ("broker: ..."), None once one went through: the
        # readiness check (refinery.ops.roles.ingest_checks).
        self.unavailable: str | None = None
        self._rewind = False
        self._lag_partitions: set[tuple[str, int]] = set()
        self._expected_type = {
            settings.topic_interactions: "interaction",
            settings.topic_feedback: "feedback",
        }

    @classmethod
    def on_event_topics(
        cls,
        settings: Settings,
        *,
        producer: KafkaProducer,
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        group_id: str | None = None,
        enqueue_sessions: EnqueueSessions | None = None,
    ) -> IngestConsumer:
        """The consumer of the interactions and feedback topics, in consumer group `group_id`
        (INGEST_GROUP_ID by default), caching vectors under the configured model's name.
        `producer` sends the dead letters."""
        return cls(
            settings,
            consumer=make_consumer(
                settings,
                settings.topic_interactions,
                settings.topic_feedback,
                group_id=group_id or settings.ingest_group_id,
            ),
            producer=producer,
            sessions=sessions,
            enqueue=enqueue,
            embedding_model=embedding_model_name(settings),
            enqueue_sessions=enqueue_sessions,
        )

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
            if isinstance(event, InteractionEvent):
                interactions.append(event)
            else:
                feedback.append(event)
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
        failures = 0
        while not should_stop():
            try:
                if self._rewind:
                    self.rewind()
                handled = self.poll_once()
            except Exception as error:
                dependency = dependency_of(error)  # IngestFatal: the caller exits non-zero
                if dependency is None:
                    raise
                failures += 1
                delay = min(
                    _BACKOFF_FIRST_S * 2 ** (failures - 1), self.settings.ingest_backoff_max_s
                )
                self.unavailable = f"{dependency}: {type(error).__name__}: {error}"
                self._rewind = True
                INGEST_DEPENDENCY_ERRORS.labels(dependency=dependency).inc()
                log.warning(
                    "ingest paused: %s unreachable (%s: %s); try %d in %.1f s, from the last"
                    " committed offset", dependency, type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "", failures + 1, delay,
                )  # fmt: skip
                self._sleep(delay, should_stop)
                continue
            if failures:
                log.info("ingest resumed after %d interrupted tr%s", failures,
                         "y" if failures == 1 else "ies")  # fmt: skip
            failures = 0
            self.unavailable = None
            if tick is not None:
                tick()
            if until_caught_up:
                idle_polls = 0 if handled else idle_polls + 1
                # Two empty polls at the end of every partition: nothing more is coming for now.
                if idle_polls >= 2 and self.caught_up():
                    break
        return self.stats

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (the start, when none was
        ever committed: auto_offset_reset is earliest), dropping what the interrupted batch
        fetched beyond it. Dead letters it sent and did not flush are waited for first."""
        self.dead_letters.flush()
        for tp in self.consumer.assignment():
            offset = self.consumer.committed(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        self._rewind = False

    @staticmethod
    def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def close(self) -> None:
        self.dead_letters.flush()
        self.consumer.close(autocommit=False)
