"""`refinery relay` survives a Kafka broker restart (issue 16): kafka-python's producer
(idempotent by default) fails every send once the broker restarted without its state
(UnknownProducerIdError, then KafkaError) until it is replaced. The relay, a process, publishes
approvals made before the restart, the broker (a Tansu of the test's own, memory storage) is
killed and started again on the same port, and approvals made after it are still published,
with the process up throughout."""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import func, select

from refinery.kafka.embedded import EmbeddedBroker, ensure_topics, free_port, start_embedded_broker
from refinery.review.decisions import approve
from refinery.store.db import migrate, session_factory
from refinery.store.models import OutboxRow
from tests.api.helpers import insert_proposal
from tests.integration.helpers import read_topic, start_role, wait_for

pytestmark = pytest.mark.integration


class Broker:
    """A Tansu broker that can be killed and started again on the same port (empty again)."""

    def __init__(self, topics: list[str]) -> None:
        self.port = free_port()
        self.topics = topics
        self.embedded: EmbeddedBroker | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.embedded = start_embedded_broker(self.port)
        # A memory broker comes back without topics: create them as an operator would.
        ensure_topics(self.bootstrap, dict.fromkeys(self.topics, 1))

    def kill(self) -> None:
        if self.embedded is not None and self.embedded.process.poll() is None:
            self.embedded.process.kill()
            self.embedded.process.wait(timeout=10)


@pytest.fixture
def broker(topics):
    broker = Broker([topics["topic_approved"]])
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def test_relay_publishes_approvals_made_after_a_broker_restart(
    broker, topics, sqlite_url, make_settings, tmp_path
) -> None:
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap, database_url=sqlite_url, **topics
    )
    migrate(sqlite_url)
    sessions = session_factory(sqlite_url)

    def approve_new(n: int) -> set[str]:
        outbox_ids: set[str] = set()
        for i in range(n):
            pid = insert_proposal(sessions, ["rag_source", "fine_tune_dataset"][i % 2])
            approve(sessions, pid, actor="reviewer", topic=settings.topic_approved)
            with sessions() as s:
                outbox_ids.update(
                    s.scalars(select(OutboxRow.id).where(OutboxRow.proposal_id == pid))
                )
        return outbox_ids

    def unsent() -> int:
        with sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.published_at.is_(None))
                )
                or 0
            )

    def published(expect: int) -> set[str]:
        records = read_topic(broker.bootstrap, settings.topic_approved, expect=expect)
        return {dict(r.headers)["outbox_id"].decode() for r in records}

    log = tmp_path / "relay.log"
    relay = start_role(settings, "relay", log_path=log, OUTBOX_POLL_INTERVAL_S="0.2")
    try:
        before = approve_new(2)
        wait_for(lambda: unsent() == 0, timeout_s=60, what="the first approvals published")
        assert published(2) == before

        broker.kill()
        broker.start()  # same port, empty
        after = approve_new(3)
        wait_for(
            lambda: unsent() == 0 or relay.poll() is not None,
            timeout_s=60,
            what="the approvals made after the restart published",
        )
        assert relay.poll() is None, log.read_text()[-3000:]
        assert unsent() == 0
        assert published(3) >= after, "every approval after the restart reached the topic"
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
