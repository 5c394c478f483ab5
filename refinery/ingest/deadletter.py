"""The dead-letter topic: invalid records with their reason and where they came from.

The value is the original record redacted of PII (refinery.redact.events.redact_bytes), cut
at DEAD_LETTER_MAX_VALUE_BYTES; headers say why and from where, so `refinery dlq list` can show
them and `refinery dlq replay` can send them back to their source topic. Headers:
  reason, detail (redacted), source_topic, source_partition, source_offset,
  source ("kafka", "collector" or "sweep"), value_truncated (original size, when cut),
  principal_app (collector only: the app of the ingest key that sent the record).

`replay` sends a collector record back only while its `app_id` is its `principal_app`: the
tenant comes from the credential, never from the body.

A cap (`DeadLetterCap`) stops ingest when too much is invalid: a misconfigured producer or a
consumer pointed at the wrong topic must fail loudly, not dead-letter everything.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from refinery.ingest.validate import InvalidEvent
from refinery.ops.metrics import EVENTS_DEAD_LETTERED
from refinery.redact.events import redact_bytes


class DeadLetterCapExceeded(RuntimeError):
    """Fatal: ingest stops instead of dead-lettering on. Offsets of the batch are not committed,
    so nothing is lost; fix the cause and restart."""


class DeadLetterCap:
    """Counts valid and invalid records; raises when `max_consecutive` invalid ones come in a
    row, or when more than `max_ratio` of the last `window` records were invalid."""

    def __init__(self, *, max_consecutive: int, max_ratio: float, window: int) -> None:
        self.max_consecutive = max_consecutive
        self.max_ratio = max_ratio
        self.window: deque[bool] = deque(maxlen=max(window, 1))
        self.invalid_in_window = 0
        self.consecutive = 0

    def record(self, invalid: InvalidEvent | None, where: str = "") -> None:
        if len(self.window) == self.window.maxlen and self.window[0]:
            self.invalid_in_window -= 1
        self.window.append(invalid is not None)
        if invalid is None:
            self.consecutive = 0
            return
        self.invalid_in_window += 1
        self.consecutive += 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise DeadLetterCapExceeded(
                f"{self.consecutive} invalid records in a row (DEAD_LETTER_MAX_CONSECUTIVE="
                f"{self.max_consecutive}); the last: {invalid.reason} at {where}"
                f" ({invalid.detail})."
                " Is a producer misconfigured, or ingest reading the wrong topic? Stopping without"
                " committing; fix the cause and restart."
            )
        full = len(self.window) == self.window.maxlen
        ratio = self.invalid_in_window / len(self.window)
        if full and self.max_ratio < 1 and ratio > self.max_ratio:
            raise DeadLetterCapExceeded(
                f"{ratio:.0%} of the last {len(self.window)} records were invalid"
                f" (DEAD_LETTER_MAX_RATIO={self.max_ratio:g}); the last: {invalid.reason}"
                f" at {where}."
                " Stopping without committing; fix the cause and restart."
            )


class DeadLetterQueue:
    def __init__(
        self, producer: KafkaProducer, topic: str, *, max_value_bytes: int = 524_288
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.max_value_bytes = max_value_bytes
        self._pending: list = []
        self._reasons: list[str] = []

    def send(self, record: object, invalid: InvalidEvent) -> None:
        """Dead-letter a consumed record (anything with topic, partition, offset, key, value)."""
        self.send_raw(
            getattr(record, "value", None),
            invalid,
            key=getattr(record, "key", None),
            source_topic=getattr(record, "topic", ""),
            source_partition=getattr(record, "partition", -1),
            source_offset=getattr(record, "offset", -1),
        )

    def send_raw(
        self,
        value: bytes | None,
        invalid: InvalidEvent,
        *,
        key: bytes | None,
        source_topic: str,
        source_partition: int = -1,
        source_offset: int = -1,
        source: str = "kafka",
        principal_app: str | None = None,
    ) -> None:
        value = redact_bytes(value)
        headers = [
            ("reason", invalid.reason.encode()),
            ("detail", invalid.detail.encode("utf-8", "replace")),
            ("source_topic", source_topic.encode()),
            ("source_partition", str(source_partition).encode()),
            ("source_offset", str(source_offset).encode()),
            ("source", source.encode()),
        ]
        if principal_app is not None:
            headers.append(("principal_app", principal_app.encode()))
        if value is not None and len(value) > self.max_value_bytes:
            headers.append(("value_truncated", str(len(value)).encode()))
            value = value[: self.max_value_bytes]
        self._pending.append(
            self.producer.send(self.topic, key=redact_bytes(key), value=value, headers=headers)
        )
        self._reasons.append(invalid.reason)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every dead letter is acknowledged, `timeout_s` at most in all; raises if
        one was not."""
        pending, self._pending = self._pending, []
        reasons, self._reasons = self._reasons, []
        deadline = time.monotonic() + timeout_s
        for future in pending:
            future.get(timeout=max(deadline - time.monotonic(), 0.0))
        for reason in reasons:
            EVENTS_DEAD_LETTERED.labels(reason=reason).inc()


@dataclass
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.headers.get("reason", "")

    @property
    def source_topic(self) -> str:
        return self.headers.get("source_topic", "")


def read_dead_letters(
    consumer_config: dict,
    topic: str,
    *,
    reasons: Iterable[str] = (),
    offsets: Iterable[tuple[int, int]] = (),
    limit: int | None = None,
    timeout_s: float = 30.0,
) -> list[DeadLetter]:
    """Every record of the dead-letter topic (from the start, no consumer group, nothing
    committed), filtered by reason and by (partition, offset)."""
    wanted_reasons = set(reasons)
    wanted_offsets = set(offsets)
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **consumer_config)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    letter = DeadLetter(
                        partition=r.partition,
                        offset=r.offset,
                        timestamp_ms=r.timestamp,
                        key=r.key,
                        value=r.value,
                        headers={k: v.decode("utf-8", "replace") for k, v in (r.headers or [])},
                    )
                    if wanted_reasons and letter.reason not in wanted_reasons:
                        continue
                    if wanted_offsets and (r.partition, r.offset) not in wanted_offsets:
                        continue
                    found.append(letter)
        found.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
        return found[:limit] if limit else found
    finally:
        consumer.close()


@dataclass
class Replayed:
    """What `replay` did: how many records it sent back, and each one it refused, with why."""

    sent: int = 0
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)


def replay_refusal(letter: DeadLetter) -> str | None:
    """Why a dead letter must not go back to its source topic, or None when it may.

    A record the collector took in must still belong to the app of the key that sent it: its
    `app_id` must equal its `principal_app` header. A collector record without that header (dead-
    lettered before the header existed) has no tenant to check and is refused too. Records that
    came from Kafka or the orphan sweep were taken from the topics as they are and go back as is."""
    if not letter.source_topic:
        return "no source topic"
    if "value_truncated" in letter.headers:
        return "value truncated"
    if letter.headers.get("source") != "collector":
        return None
    principal = letter.headers.get("principal_app")
    if not principal:
        return "collector record without principal_app: the sending key is unknown"
    try:
        app_id = json.loads(letter.value or b"").get("app_id")
    except (ValueError, AttributeError):
        app_id = None
    if app_id != principal:
        return f"app_id {app_id!r} is not the sending key's app {principal!r}"
    return None


def replay(
    producer: KafkaProducer, letters: Iterable[DeadLetter], dead_letter_topic: str
) -> Replayed:
    """Send each dead letter's value back to its source topic, except those `replay_refusal`
    refuses (counted, left where they are). The replayed record goes through validation again, so
    one that is still invalid comes back here; ingest stores each event at most once, so
    replaying twice is harmless."""
    done = Replayed()
    futures = []
    for letter in letters:
        refusal = replay_refusal(letter)
        if refusal is not None:
            done.refused.append((letter, refusal))
            continue
        origin = f"{dead_letter_topic}:{letter.partition}:{letter.offset}".encode()
        futures.append(
            producer.send(
                letter.source_topic,
                key=letter.key,
                value=letter.value,
                headers=[("replayed_from", origin)],
            )
        )
    for future in futures:
        future.get(timeout=30)
    done.sent = len(futures)
    return done
