"""Every long-running role serves /livez, /readyz and /metrics on HEALTH_PORT, as deployed: the
real `refinery ingest / relay / worker / beat` processes against the test broker, Redis, SQLite and
PostgreSQL. /readyz turns 503 when the role's dependency is missing while /livez stays 200, and
/metrics shows the counters moving after real work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from refinery.store.db import migrate, session_factory
from tests.conftest import POSTGRES_ADMIN_URL
from tests.integration.helpers import REPO, produce, start_role, wait_for
from tests.integration.test_signals_support import interaction, private_redis

pytestmark = pytest.mark.integration

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""  # not listening (yet)


def readyz(port: int) -> tuple[int, dict]:
    status, body = get(port, "/readyz")
    return status, (json.loads(body) if status else {})


def sample(port: int, name: str, **labels: str) -> float | None:
    """One sample of /metrics (Prometheus text format), or None when absent."""
    _, body = get(port, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$", re.M)
    for match in pattern.finditer(body):
        got = ",".join(sorted((match.group("labels") or "").split(","))) if labels else ""
        if got == want:
            return float(match.group("value"))
    return None


@contextmanager
def running(process: subprocess.Popen, log: Path) -> Iterator[subprocess.Popen]:
    """Stop the role on the way out (SIGTERM, then kill); show its log when the test failed."""
    try:
        yield process
    except BaseException:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def ready(port: int, process: subprocess.Popen, *, timeout_s: float = 120) -> dict:
    def answered() -> dict | None:
        assert process.poll() is None, "the role exited"
        status, body = readyz(port)
        return body if status == 200 else None

    return wait_for(answered, timeout_s=timeout_s, what=f"/readyz 200 on {port}")


def not_ready(port: int, process: subprocess.Popen, *, timeout_s: float = 120) -> dict:
    def answered() -> dict | None:
        assert process.poll() is None, "the role exited"
        status, body = readyz(port)
        return body if status == 503 else None

    body = wait_for(answered, timeout_s=timeout_s, what=f"/readyz 503 on {port}")
    assert get(port, "/livez") == (200, '{"status": "ok"}'), "alive while not ready"
    return body


@pytest.fixture
def celery_redis(redis_url: str) -> Iterator[str]:
    """A Redis database of this test's own: a worker here must not take other tests' messages."""
    import redis

    url = private_redis(redis_url)
    yield url
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# --- ingest ---------------------------------------------------------------------------------------


def test_ingest_health_and_event_counters(
    kafka_bootstrap, topics, sqlite_url, celery_redis, tmp_path, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=sqlite_url,
        redis_url=celery_redis,  # enqueues go to Redis: this process never loads the model
        **topics,
    )
    port, log = free_port(), tmp_path / "ingest.log"
    process = start_role(settings, "ingest", log_path=log, HEALTH_PORT=str(port))
    with running(process, log):
        body = ready(port, process)
        assert body == {
            "status": "ok",
            "checks": {"kafka_poll": True, "kafka": True, "database": True, "dependencies": True},
        }

        valid = [
            interaction(f"ops-{n}", f"where is my parcel {n}", session=f"s{n}") for n in range(5)
        ]
        invalid = [b"{not json", b"\xff\xfe", json.dumps({"event_id": "x"}).encode()]
        produce(kafka_bootstrap, topics["topic_interactions"], [*valid, valid[0], *invalid])
        topic = topics["topic_interactions"]
        wait_for(
            lambda: sample(port, "refinery_events_consumed_total", topic=topic) == 9,
            timeout_s=60,
            what="9 records counted as consumed",
        )
        assert sample(port, "refinery_events_duplicate_total") == 1
        reasons = {
            reason: sample(port, "refinery_events_dead_lettered_total", reason=reason)
            for reason in ("malformed_json", "invalid_utf8", "schema_violation")
        }
        assert reasons == {"malformed_json": 1, "invalid_utf8": 1, "schema_violation": 1}
        assert sample(port, "refinery_ingest_batch_size_records_sum") == 9
        # After the commit every partition is consumed to its end. The producer's key ("app")
        # puts every record in one of the topic's partitions; all of them report a lag.
        lags = [
            sample(port, "refinery_consumer_lag_records", topic=topic, partition=str(p))
            for p in range(6)
        ]
        assert lags == [0.0] * 6
        assert readyz(port)[0] == 200
        # A healthy interaction is not failing: nothing went to the embed queue.
        assert sample(port, "refinery_enqueue_batches_total") == 0
    assert process.returncode == 0


# --- relay ----------------------------------------------------------------------------------------


def test_relay_waits_for_an_unreachable_database_alive_but_not_ready(
    kafka_bootstrap, topics, tmp_path, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=UNREACHABLE_POSTGRES, **topics
    )
    port, log = free_port(), tmp_path / "relay.log"
    process = start_role(settings, "relay", log_path=log, HEALTH_PORT=str(port))
    with running(process, log):
        body = not_ready(port, process, timeout_s=60)
        assert body["checks"] == {"database": False, "kafka_producer": False}
        assert body["failed"] == ["database", "kafka_producer"]
    assert process.returncode == 0, "SIGTERM while waiting is a clean stop"
    assert "waiting for the database" in log.read_text()


def test_relay_health_follows_its_database_and_counts_published_rows(
    kafka_bootstrap, topics, postgres_url, tmp_path, make_settings
):
    from tests.api.helpers import insert_proposal

    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url, **topics
    )
    migrate(postgres_url)
    sessions = session_factory(postgres_url)
    from refinery.review.decisions import approve

    for _ in range(3):
        approve(
            sessions,
            insert_proposal(sessions, "rag_source"),
            actor="ops",
            topic=topics["topic_approved"],
        )
    port, log = free_port(), tmp_path / "relay.log"
    process = start_role(settings, "relay", log_path=log, HEALTH_PORT=str(port))
    with running(process, log):
        assert ready(port, process)["checks"] == {"database": True, "kafka_producer": True}
        wait_for(
            lambda: sample(port, "refinery_outbox_published_total") == 3,
            timeout_s=60,
            what="3 outbox rows published",
        )
        wait_for(
            lambda: sample(port, "refinery_outbox_backlog_rows") == 0,
            timeout_s=30,
            what="the backlog gauge back to 0",
        )
        # The database goes away under the running relay: not ready, still alive, still running.
        sessions.kw["bind"].dispose()
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = postgres_url.rsplit("/", 1)[1]
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        body = not_ready(port, process, timeout_s=60)
        assert body["failed"] == ["database"] and body["checks"]["kafka_producer"] is True


# --- worker and beat ------------------------------------------------------------------------------


def celery_cli(redis: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`celery -A workers.celery_app:app ...` as an operator runs it, against this broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "HEALTH_"))}
    env["REDIS_URL"] = redis
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def test_worker_health_metrics_of_its_pool_children_and_inspect_ping(
    celery_redis, sqlite_url, tmp_path, make_settings
):
    from celery import Celery

    migrate(sqlite_url)
    settings = make_settings(redis_url=celery_redis, database_url=sqlite_url)
    prom = tmp_path / "prometheus"
    prom.mkdir()
    stale = prom / "counter_999999.db"  # an earlier run's file: would be summed into this run's
    stale.write_bytes(b"\0" * 16)
    port, log = free_port(), tmp_path / "worker.log"
    process = start_role(
        settings,
        "worker",
        "--queues",
        "cluster",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        log_path=log,
        HEALTH_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(prom),
    )
    with running(process, log):
        assert ready(port, process)["checks"] == {"broker": True, "database": True}
        assert not stale.exists()
        ping = wait_for(
            lambda: (
                (out := celery_cli(celery_redis, "inspect", "ping", "--timeout", "5")).returncode
                == 0
                and out
            ),
            timeout_s=90,
            what="celery inspect ping to answer",
        )
        assert "pong" in ping.stdout and "1 node online" in ping.stdout
        active = celery_cli(celery_redis, "inspect", "active", "--timeout", "5")
        assert active.returncode == 0 and "empty" in active.stdout

        # A task in the pool child moves a gauge; the parent's /metrics shows it (multiprocess).
        client = Celery(broker=celery_redis, backend=celery_redis)
        result = client.send_task("refinery.cluster_app", args=("ops-app",), queue="cluster")
        assert result.get(timeout=120)["clusters"] == 0
        client.close()
        wait_for(
            lambda: sample(port, "refinery_clusters", app_id="ops-app") == 0.0,
            timeout_s=30,
            what="the child's gauge in the parent's /metrics",
        )
    assert process.returncode == 0


def test_worker_with_a_dead_broker_is_alive_but_not_ready(tmp_path, sqlite_url, make_settings):
    settings = make_settings(redis_url=UNREACHABLE_REDIS, database_url=sqlite_url)
    port, log = free_port(), tmp_path / "worker.log"
    process = start_role(settings, "worker", "--pool", "solo", log_path=log, HEALTH_PORT=str(port))
    with running(process, log):
        body = not_ready(port, process, timeout_s=90)
        assert body == {
            "status": "fail",
            "checks": {"broker": False, "database": True},
            "failed": ["broker"],
        }
        assert sample(port, "refinery_outbox_published_total") is not None  # /metrics answers


def test_beat_health_follows_its_broker(celery_redis, tmp_path, sqlite_url, make_settings):
    for redis, expect in ((celery_redis, 200), (UNREACHABLE_REDIS, 503)):
        settings = make_settings(redis_url=redis, database_url=sqlite_url)
        port, log = free_port(), tmp_path / f"beat-{expect}.log"
        process = start_role(
            settings,
            "beat",
            "--schedule",
            str(tmp_path / f"schedule-{expect}"),
            log_path=log,
            HEALTH_PORT=str(port),
        )
        with running(process, log):
            if expect == 200:
                assert ready(port, process)["checks"] == {"broker": True}
            else:
                assert not_ready(port, process)["failed"] == ["broker"]
