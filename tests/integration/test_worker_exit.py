"""`refinery worker` exits non-zero when Celery gives up (issue 16): after a Redis kill a worker
once stopped with `Unrecoverable error: AttributeError('NoneType' object has no attribute
'hostname')` raised inside kombu. Celery's `app.start` returns its exit code (1) instead of
exiting, and `refinery worker` used to exit 0 anyway, so a supervisor restarting on failure left
it down. The error is injected here (the consumer's start raises it) in a real worker process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.integration.helpers import REPO, role_env

pytestmark = pytest.mark.integration

WORKER = textwrap.dedent(
    """
    import sys
    from celery.worker.consumer import consumer

    def broken(self):
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    consumer.Consumer.start = broken
    from refinery import cli

    sys.exit(cli.main(["worker", "--queues", "propose", "--pool", "solo"]))
    """
)


def test_worker_exits_non_zero_after_an_unrecoverable_error(
    redis_url, sqlite_url, make_settings, tmp_path
) -> None:
    settings = make_settings(redis_url=redis_url, database_url=sqlite_url)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.run(
            [sys.executable, "-c", WORKER],
            cwd=REPO,
            env=role_env(settings, HEALTH_PORT="0"),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    text = log.read_text()
    assert "Unrecoverable error" in text, text[-3000:]
    assert worker.returncode != 0, text[-3000:]
