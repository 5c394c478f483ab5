"""Health of the long-running roles: what "ready" means for each, and how `refinery` serves it.

| role   | /readyz passes when                                                         |
|--------|-----------------------------------------------------------------------------|
| ingest | it polled Kafka within KAFKA_MAX_POLL_INTERVAL_MS, its consumer holds a      |
|        | broker connection, the database answers, and its last batch was not          |
|        | interrupted by an unreachable dependency                                     |
| worker | its broker answers a Redis PING (REDIS_URL), and the database answers        |
| beat   | its broker answers a Redis PING                                              |
| relay  | the database answers, and its Kafka producer holds a broker connection       |

/livez is 200 while the process serves HTTP at all; /metrics is `scrape_registry()`. Nothing is
served when HEALTH_PORT is 0. Every check is bounded (`CHECK_TIMEOUT_S`): a dependency that
black-holes packets makes /readyz a 503 within a probe's timeout instead of a hung request.

Celery workers (prefork): `install_worker_hooks` starts the endpoint from `worker_init`, in the
main process, before the pool forks and before the broker connection (so a dead broker is a 503,
not a silent port), and marks each pool child's metric files dead when it exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from refinery.ops.health import Check, serve_health
from refinery.settings import OperationsSettings, ServiceSettings, Settings

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0

# refinery.ops.metrics.MULTIPROC_ENV, spelled out: importing that module creates this process's
# metric files, which must not happen before the directory is cleared.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Polls(Protocol):
    consumer: Any  # its KafkaConsumer
    last_poll_at: float  # time.monotonic() of the last poll; 0.0 before the first
    # Why the last batch was interrupted (a dependency unreachable), None when it went through.
    unavailable: str | None


def bounded(check: Check, name: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """`check` run in a daemon thread and given up after `timeout_s` (False). While an earlier
    call still hangs, answers False at once: at most one stuck thread per check."""
    busy = threading.Lock()

    def run() -> bool:
        if not busy.acquire(blocking=False):
            return False
        done = threading.Event()
        answer: list[bool] = []

        def target() -> None:
            try:
                answer.append(bool(check()))
            except Exception:  # any error of a dependency means "not ready"
                log.warning("readiness check %r raised", name, exc_info=True)
            finally:
                busy.release()
                done.set()

        threading.Thread(target=target, name=f"readyz-{name}", daemon=True).start()
        if not done.wait(timeout_s):
            log.warning("readiness check %r gave no answer within %.1f s", name, timeout_s)
            return False
        return bool(answer and answer[0])

    return run


def database_check(database_url: str) -> Check:
    """The database answers SELECT 1 (the role's own engine and pool)."""
    from sqlalchemy import text

    from refinery.store.db import engine_for, no_fork_meanwhile

    def check() -> bool:
        # Runs in a thread of a worker whose pool forks children (refinery.store.db._ForkGate).
        with no_fork_meanwhile(), engine_for(database_url).connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1

    return check


def redis_check(redis_url: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """The Celery broker answers PING."""
    import redis

    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    return lambda: bool(client.ping())


def polled_within(consumer: _Polls, max_age_s: float) -> Check:
    """The consumer loop polled within `max_age_s`: the group would evict it after that long
    (max.poll.interval.ms), so a loop stuck longer is as good as gone."""
    return lambda: time.monotonic() - consumer.last_poll_at <= max_age_s


def producer_connected(producer: Callable[[], Any]) -> Check:
    """The Kafka producer returned by `producer()` (None while starting) holds at least one broker
    connection. kafka-python's own `connection-count` metric: 0 once every broker is gone. Its
    periodic metadata refresh (5 min) keeps a connection from idling out (9 min) when idle."""

    def check() -> bool:
        current = producer()
        if current is None:
            return False
        return float(current.metrics()["producer-metrics"]["connection-count"]) > 0

    return check


def consumer_connected(consumer: Callable[[], Any]) -> Check:
    """The same for a consumer: a poll does not fail while every broker is gone, it returns
    nothing, so this is what says Kafka is down. Its fetches keep a connection busy."""

    def check() -> bool:
        return float(consumer().metrics()["consumer-metrics"]["connection-count"]) > 0

    return check


def start_health(
    settings: OperationsSettings, checks: Mapping[str, Check]
) -> ThreadingHTTPServer | None:
    """Serve /livez, /readyz (the bounded `checks`) and /metrics on HEALTH_PORT, or nothing when
    it is 0. Returns the server for `stop_health`."""
    if settings.health_port == 0:
        return None
    from refinery.ops.metrics import scrape_registry

    return serve_health(
        settings.health_port,
        {name: bounded(check, name) for name, check in checks.items()},
        scrape_registry(),
    )


def stop_health(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def ingest_checks(settings: Settings, consumer: _Polls) -> dict[str, Check]:
    return {
        "kafka_poll": polled_within(consumer, settings.kafka_max_poll_interval_ms / 1000),
        "kafka": consumer_connected(lambda: consumer.consumer),
        "database": database_check(settings.database_url),
        # Kafka, the Celery broker or the database failed the last batch: it backs off and
        # resumes from the committed offsets (refinery.ingest.consumer), not ready meanwhile.
        "dependencies": lambda: consumer.unavailable is None,
    }


def broker_checks(settings: ServiceSettings) -> dict[str, Check]:
    """Worker and beat: the Celery broker. Both refuse to start without REDIS_URL."""
    assert settings.redis_url is not None
    return {"broker": redis_check(settings.redis_url)}


def worker_checks(settings: ServiceSettings) -> dict[str, Check]:
    """Worker: the broker, and the database every task reads and writes."""
    return broker_checks(settings) | {"database": database_check(settings.database_url)}


def relay_checks(settings: ServiceSettings, producer: Callable[[], Any]) -> dict[str, Check]:
    return {
        "database": database_check(settings.database_url),
        "kafka_producer": producer_connected(producer),
    }


def wait_until(
    check: Check, what: str, should_stop: Callable[[], bool], interval_s: float = 2.0
) -> bool:
    """Block until `check()` passes (True) or `should_stop()` (False), saying so every minute:
    a role waiting for its database serves /livez and a 503 meanwhile instead of crash-looping."""
    started = time.monotonic()
    next_note = started
    while not should_stop():
        if check():
            return True
        if time.monotonic() >= next_note:
            log.warning("waiting for %s (%.0f s so far)", what, time.monotonic() - started)
            next_note = time.monotonic() + 60
        time.sleep(interval_s)
    return False


def wait_for_database(settings: ServiceSettings, should_stop: Callable[[], bool]) -> bool:
    return wait_until(
        bounded(database_check(settings.database_url), "database"), "the database", should_stop
    )


# --- Celery worker (prefork) -------------------------------------------------------------------


def clear_multiprocess_dir() -> Path | None:
    """Empty PROMETHEUS_MULTIPROC_DIR (when set) before any metric of this process exists: files
    of an earlier run's pids would otherwise be summed into this run's counters. Call it before
    importing refinery.ops.metrics. Keeps the directory itself (often a mounted emptyDir)."""
    value = os.environ.get(MULTIPROC_ENV)
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return path


def install_worker_hooks(settings: Settings) -> None:
    """Connect the Celery signals that give `refinery worker` its health endpoint and clean
    per-child metric files. Idempotent per process."""
    from celery import signals

    servers: list[ThreadingHTTPServer] = []

    def on_worker_init(**_: object) -> None:
        if not servers:
            server = start_health(settings, worker_checks(settings))
            if server is not None:
                servers.append(server)

    def on_worker_shutdown(**_: object) -> None:
        while servers:
            stop_health(servers.pop())

    def on_process_shutdown(pid: int | None = None, **_: object) -> None:
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid or os.getpid())

    # weak=False: the receivers are closures that nothing else keeps alive.
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="refinery-health-init")
    signals.worker_shutdown.connect(
        on_worker_shutdown, weak=False, dispatch_uid="refinery-health-shutdown"
    )
    signals.worker_process_shutdown.connect(
        on_process_shutdown, weak=False, dispatch_uid="refinery-metrics-process-shutdown"
    )
