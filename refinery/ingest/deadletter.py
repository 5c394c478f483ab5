"""The dead-letter topic: invalid records with their reason and where they came from.

The value is the original record (redacted of PII, see refinery.ingest.redaction); headers say
why and from where, so `refinery dlq` can show and re-drive them.
"""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from refinery.ingest.redaction import redact_bytes
from refinery.ingest.validate import InvalidEvent


class DeadLetterQueue:
    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._pending: list = []

    def send(self, record: ConsumerRecord, invalid: InvalidEvent) -> None:
        headers = [
            ("reason", invalid.reason.encode()),
            ("detail", invalid.detail.encode("utf-8", "replace")),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        self._pending.append(
            self.producer.send(
                self.topic, key=record.key, value=redact_bytes(record.value), headers=headers
            )
        )

    def flush(self) -> None:
        """Block until every dead letter is acknowledged; raises if one was not."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.get(timeout=30)
