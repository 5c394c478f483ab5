"""Fixtures: real services. A Kafka-protocol broker (Tansu) started per session, PostgreSQL at
127.0.0.1:5432 with a fresh database per test, Redis at 127.0.0.1:6379, SQLite files in tmp_path.
A missing service fails the test; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import_kafka_quietly() -> None:
    """kafka-python reads its protocol schemas with importlib.resources.read_text (deprecated)
    while its modules import. `pytest -W error` puts its filter above pyproject's
    filterwarnings, so import every kafka module once here, with that one warning ignored."""
    import importlib
    import pkgutil
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
        import kafka

        for module in pkgutil.walk_packages(kafka.__path__, "kafka."):
            if module.name.endswith("__main__") or module.name.startswith(
                ("kafka.cli", "kafka.bench")
            ):
                continue  # command-line entry points: importing them runs them
            # optional extras (compression codecs, ...) may not be installed
            with contextlib.suppress(ImportError):
                importlib.import_module(module.name)


_import_kafka_quietly()

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from refinery.kafka.embedded import start_embedded_broker

    broker = start_embedded_broker()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/refinery.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"refinery_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a missing service is a failure, never a skip
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from refinery.store.db import engine_for

        engine_for(url).dispose()
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str:
    """Each test using it runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of the test's own, claimed among 1-12 (SET NX marker on an empty one), so
    that Celery workers of concurrent test sessions never take each other's messages; flushed
    after the test."""
    import random

    import redis

    base = TEST_REDIS_URL.rsplit("/", 1)[0]
    try:
        redis.Redis.from_url(TEST_REDIS_URL).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {TEST_REDIS_URL} is needed: {exc}")
    for db in random.sample(range(1, 13), 12):
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.dbsize() == 0 and client.set("refinery-test-claim", "1", nx=True, ex=1800):
                break
        finally:
            client.close()
    else:
        pytest.fail("no empty Redis database among 1-12 for this test")
    url = f"{base}/{db}"
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.fixture
def topics() -> dict[str, str]:
    """Unique topic names and consumer group per test, so tests never see each other's events."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "topic_interactions": f"t-{suffix}.interactions",
        "topic_feedback": f"t-{suffix}.feedback",
        "topic_dead_letter": f"t-{suffix}.dead-letter",
        "topic_approved": f"t-{suffix}.approved",
        "ingest_group_id": f"g-{suffix}",
    }


@pytest.fixture
def make_settings():
    from refinery.settings import Settings

    def build(**overrides):
        return Settings(_env_file=None, **overrides)

    return build


@pytest.fixture
def activate(monkeypatch):
    """Make `settings` the process's settings: env vars (as a deployment would set them), the
    cached settings object, and the Celery app's configuration."""

    def apply(settings):
        from refinery.settings import get_settings
        from workers.celery_app import app, configure

        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if value is None:
                monkeypatch.delenv(name.upper(), raising=False)
            elif name in settings.model_fields_set:
                monkeypatch.setenv(
                    name.upper(),
                    json.dumps(value) if isinstance(value, (dict, list)) else str(value),
                )
        get_settings.cache_clear()
        configure(app, get_settings())
        return get_settings()

    yield apply
    from refinery.settings import get_settings
    from workers.celery_app import app, configure

    monkeypatch.undo()
    get_settings.cache_clear()
    configure(app, get_settings())
