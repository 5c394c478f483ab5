"""Wiring shared by the roles: which services are real, which are embedded, said at start-up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from refinery.dispatch import dispatcher
from refinery.kafka.clients import security_config
from refinery.kafka.embedded import EmbeddedBroker, ensure_topics, start_embedded_broker
from refinery.settings import Settings
from refinery.store.db import migrate, session_factory

log = logging.getLogger("refinery")

# Ingest topics are keyed by app_id, so more partitions spread apps over more consumers.
TOPIC_PARTITIONS = {"ingest": 6, "other": 1}


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    broker: EmbeddedBroker | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def start_runtime(
    settings: Settings, *, need_kafka: bool = True, create_topics: bool = True
) -> Runtime:
    broker = None
    notes = []
    if need_kafka:
        if settings.kafka_bootstrap_servers is None:
            broker = start_embedded_broker(settings.embedded_kafka_port or None)
            settings = settings.model_copy(
                update={"kafka_bootstrap_servers": broker.bootstrap_servers}
            )
            notes.append(
                f"Kafka: embedded Tansu broker (memory only) at {broker.bootstrap_servers}"
            )
        else:
            notes.append(f"Kafka: {settings.kafka_bootstrap_servers}")
        if create_topics:
            assert settings.kafka_bootstrap_servers is not None
            ensure_topics(
                settings.kafka_bootstrap_servers,
                {
                    settings.topic_interactions: TOPIC_PARTITIONS["ingest"],
                    settings.topic_feedback: TOPIC_PARTITIONS["ingest"],
                    settings.topic_dead_letter: TOPIC_PARTITIONS["other"],
                    settings.topic_approved: TOPIC_PARTITIONS["other"],
                },
                **security_config(settings),
            )
    notes.append(
        "Celery: eager mode, tasks run in this process (REDIS_URL unset)"
        if settings.celery_eager
        else f"Celery: Redis broker at {_redact_url(settings.redis_url or '')}"
    )
    notes.append(f"Database: {_redact_url(settings.database_url)}")
    migrate(settings.database_url)
    for note in notes:
        log.info(note)
    return Runtime(
        settings=settings,
        sessions=session_factory(settings.database_url),
        broker=broker,
        notes=notes,
    )


def celery_enqueue(settings: Settings) -> Callable[[list[int]], None]:
    """The ingest consumer's enqueue: the installed dispatcher's (refinery.dispatch; Celery
    send_task, or a direct run in eager mode)."""
    return dispatcher(settings).embed_interactions
