"""`refinery ingest`, a process, rides out each of its dependencies going away (issue 16): a Redis
of the test's own is killed mid-stream and restarted empty; ingest keeps running, reports not
ready (/readyz 503) meanwhile, and once Redis is back every event is stored and every failing
interaction that arrived during the outage is enqueued, resumed from the last committed offset.
Likewise a Kafka broker killed and restarted on the same port, and PostgreSQL refusing every
connection for 30 s."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from refinery.store.db import migrate, session_factory
from refinery.store.models import Feedback, Interaction
from tests.conftest import POSTGRES_ADMIN_URL
from tests.integration.helpers import produce, read_topic, start_role, wait_for
from tests.integration.test_relay_broker_restart import Broker

pytestmark = pytest.mark.integration

NOW = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), timeout_s=10, what=f"redis-server on {port}")
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def _events(prefix: str, n: int) -> tuple[list[dict], list[dict]]:
    interactions = [
        {"event_id": f"{prefix}-i{i}", "app_id": "shop", "session_id": f"{prefix}{i}",
         "interaction_id": f"{prefix}{i}", "occurred_at": NOW,
         "query": f"{prefix} question {i}", "response": "Sorry."}
        for i in range(n)
    ]  # fmt: skip
    feedback = [
        {"event_id": f"{prefix}-f{i}", "app_id": "shop", "interaction_id": f"{prefix}{i}",
         "occurred_at": NOW, "kind": "thumbs_down"}
        for i in range(0, n, 2)
    ]  # fmt: skip
    return interactions, feedback


def _enqueued(client: redis.Redis) -> set[int]:
    ids: set[int] = set()
    for raw in client.lrange("embed", 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.update(args[0])
    return ids


def _ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def test_ingest_rides_out_a_redis_outage(
    kafka_bootstrap, topics, postgres_url, make_settings, tmp_path
) -> None:
    port, health_port = _free_port(), _free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url, redis_url=redis_url,
        **topics,
    )  # fmt: skip
    migrate(postgres_url)
    sessions = session_factory(postgres_url)

    def failing_ids(prefix: str) -> set[int]:
        with sessions() as session:
            return set(
                session.scalars(
                    select(Interaction.id).where(
                        Interaction.failing.is_(True), Interaction.interaction_id.like(f"{prefix}%")
                    )
                )
            )

    server = _redis_server(port)
    client = redis.Redis(port=port)
    log = tmp_path / "ingest.log"
    env = {"HEALTH_PORT": str(health_port), "INGEST_BACKOFF_MAX_S": "1",
           "REPHRASE_DETECTION_ENABLED": "false"}  # fmt: skip
    ingest = start_role(settings, "ingest", log_path=log, **env)
    try:
        before = _events("a", 20)
        produce(kafka_bootstrap, settings.topic_interactions, before[0])
        produce(kafka_bootstrap, settings.topic_feedback, before[1])
        wait_for(lambda: len(failing_ids("a")) == 10 and failing_ids("a") <= _enqueued(client),
                 timeout_s=60, what="the first events enqueued")  # fmt: skip
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ingest ready")

        server.send_signal(signal.SIGKILL)  # Redis gone, with its queue
        server.wait(timeout=10)
        during = _events("b", 20)
        produce(kafka_bootstrap, settings.topic_interactions, during[0])
        produce(kafka_bootstrap, settings.topic_feedback, during[1])
        wait_for(lambda: len(failing_ids("b")) == 10, timeout_s=60, what="events stored")
        wait_for(lambda: _ready(health_port) == 503, timeout_s=30, what="/readyz 503")
        wait_for(lambda: log.read_text().count("ingest paused: broker unreachable") >= 3,
                 timeout_s=60, what="three interrupted tries")  # fmt: skip
        assert ingest.poll() is None, log.read_text()[-3000:]

        server = _redis_server(port)  # back, empty
        wait_for(lambda: failing_ids("b") <= _enqueued(client), timeout_s=60,
                 what="the outage's failing interactions enqueued")  # fmt: skip
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ready again")
        assert ingest.poll() is None
        with sessions() as session:
            assert session.scalar(select(func.count(Interaction.id))) == 40
            assert session.scalar(select(func.count(Feedback.id))) == 20
        text = log.read_text()
        assert "ingest paused: broker unreachable" in text and "ingest resumed" in text
    finally:
        ingest.send_signal(signal.SIGTERM)
        code = ingest.wait(timeout=30)
        server.kill()
        server.wait(timeout=10)
        client.close()
    assert code == 0, log.read_text()[-3000:]


def _interactions(prefix: str, n: int) -> list[dict | bytes]:
    return [
        {"event_id": f"{prefix}-i{i}", "app_id": "shop", "session_id": f"{prefix}{i}",
         "interaction_id": f"{prefix}{i}", "occurred_at": NOW,
         "query": f"{prefix} question {i}", "response": "Sorry."}
        for i in range(n)
    ]  # fmt: skip


def _count(url: str, prefix: str) -> int:
    """Stored interactions of `prefix`, on a connection of its own (an outage terminates pooled
    ones); 0 while the database is unreachable."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count(Interaction.id)).where(
                        Interaction.interaction_id.like(f"{prefix}%")
                    )
                )
                or 0
            )
    except OperationalError:
        return 0
    finally:
        engine.dispose()


def _dead_letters(bootstrap: str, topic: str, marker: bytes) -> int:
    return sum(1 for r in read_topic(bootstrap, topic, expect=1, timeout_s=3) if r.value == marker)


def test_ingest_rides_out_a_kafka_broker_restart(
    topics, sqlite_url, redis_url, make_settings, tmp_path
) -> None:
    """The broker (a Tansu of the test's own, memory storage: it comes back empty) is killed and
    started again on the same port. Ingest stays up, is not ready while Kafka is gone, and
    stores and dead-letters what is produced after the restart: its consumer rejoins, and its
    dead-letter producer, made before the restart, is replaced (refinery.kafka.clients)."""
    broker = Broker([topics["topic_interactions"], topics["topic_feedback"],
                     topics["topic_dead_letter"]])  # fmt: skip
    broker.start()
    health_port = _free_port()
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap, database_url=sqlite_url, redis_url=redis_url,
        **topics,
    )  # fmt: skip
    migrate(sqlite_url)
    log = tmp_path / "ingest.log"
    env = {"HEALTH_PORT": str(health_port), "INGEST_BACKOFF_MAX_S": "1",
           "REPHRASE_DETECTION_ENABLED": "false"}  # fmt: skip
    ingest = start_role(settings, "ingest", log_path=log, **env)
    try:
        produce(broker.bootstrap, settings.topic_interactions, [*_interactions("a", 10), b"bad a"])
        wait_for(lambda: _count(sqlite_url, "a") == 10, timeout_s=60, what="the first events")
        wait_for(lambda: _dead_letters(broker.bootstrap, settings.topic_dead_letter, b"bad a"),
                 timeout_s=30, what="the first dead letter")  # fmt: skip
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ingest ready")

        broker.kill()
        wait_for(lambda: _ready(health_port) == 503, timeout_s=30, what="/readyz 503")
        assert ingest.poll() is None, log.read_text()[-3000:]

        broker.start()  # same port, empty
        produce(broker.bootstrap, settings.topic_interactions, [*_interactions("b", 10), b"bad b"])
        wait_for(lambda: _count(sqlite_url, "b") == 10, timeout_s=60,
                 what="the events produced after the restart stored")  # fmt: skip
        wait_for(lambda: _dead_letters(broker.bootstrap, settings.topic_dead_letter, b"bad b"),
                 timeout_s=30, what="a dead letter after the restart")  # fmt: skip
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ready again")
        assert ingest.poll() is None, log.read_text()[-3000:]
    finally:
        ingest.send_signal(signal.SIGTERM)
        code = ingest.wait(timeout=30)
        broker.kill()
    assert code == 0, log.read_text()[-3000:]


def _allow_connections(url: str, allow: bool) -> None:
    """PostgreSQL unavailable to every client of the database (new connections refused, open
    ones terminated), or available again. ALLOW_CONNECTIONS rather than CONNECTION LIMIT 0: the
    roles connect as a superuser, whom a connection limit does not stop."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = :d"), {"d": name},
                )  # fmt: skip
    finally:
        admin.dispose()


OUTAGE_S = 30


def test_ingest_rides_out_a_postgres_outage(
    kafka_bootstrap, topics, postgres_url, redis_url, make_settings, tmp_path
) -> None:
    """PostgreSQL (a database of the test's own) refuses every connection for OUTAGE_S while
    events keep coming: ingest stays up, is not ready meanwhile, and stores every event after."""
    health_port = _free_port()
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url, redis_url=redis_url,
        **topics,
    )  # fmt: skip
    migrate(postgres_url)
    log = tmp_path / "ingest.log"
    env = {"HEALTH_PORT": str(health_port), "INGEST_BACKOFF_MAX_S": "1",
           "REPHRASE_DETECTION_ENABLED": "false"}  # fmt: skip
    ingest = start_role(settings, "ingest", log_path=log, **env)
    try:
        produce(kafka_bootstrap, settings.topic_interactions, _interactions("a", 10))
        wait_for(lambda: _count(postgres_url, "a") == 10, timeout_s=60, what="the first events")
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ingest ready")

        _allow_connections(postgres_url, False)
        blocked = time.monotonic()
        try:
            produce(kafka_bootstrap, settings.topic_interactions, _interactions("b", 10))
            wait_for(lambda: _ready(health_port) == 503, timeout_s=30, what="/readyz 503")
            wait_for(lambda: log.read_text().count("ingest paused: database unreachable") >= 3,
                     timeout_s=30, what="three interrupted tries")  # fmt: skip
            time.sleep(max(OUTAGE_S - (time.monotonic() - blocked), 0))  # the outage lasts
            assert ingest.poll() is None, log.read_text()[-3000:]
        finally:
            _allow_connections(postgres_url, True)

        wait_for(lambda: _count(postgres_url, "b") == 10, timeout_s=60,
                 what="the events of the outage stored")  # fmt: skip
        wait_for(lambda: _ready(health_port) == 200, timeout_s=30, what="ready again")
        assert ingest.poll() is None, log.read_text()[-3000:]
        assert "ingest resumed" in log.read_text()
    finally:
        ingest.send_signal(signal.SIGTERM)
        code = ingest.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
