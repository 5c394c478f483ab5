"""The test helper that gives each test its own Celery broker connections: a second test on the
same Redis database sends as well as the first (kombu keeps its pools process-wide, per URL)."""

from __future__ import annotations

import pytest
import redis

from tests.integration.test_signals_support import fresh_celery_connections, private_redis

pytestmark = pytest.mark.integration


def test_a_second_test_on_the_same_redis_database_can_send(redis_url, make_settings, activate):
    url = private_redis(redis_url)
    queue = redis.Redis.from_url(url)
    try:
        for attempt in ("first test", "second test"):
            with fresh_celery_connections():
                activate(make_settings(redis_url=url))
                from workers.celery_app import app

                app.send_task("refinery.reconcile", queue="propose", ignore_result=True)
                assert queue.llen("propose") == 1, attempt
            queue.delete("propose")
    finally:
        queue.flushdb()
        queue.close()
