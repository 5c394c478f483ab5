"""The quick part of the fault-injection suite (tests/chaos/suite.py, `make chaos` runs it all):
under load, a worker's main process is SIGKILLed and Redis is killed and restarted empty at the
same time. The roles run as processes against a Redis and a Tansu broker of the test's own and a
fresh PostgreSQL database. Once recovered, plus one reconciler period: no acknowledged event is
missing, no effect is duplicated, and every failing interaction is placed or parked."""

from __future__ import annotations

import pytest

from tests.chaos.suite import BY_NAME, run

pytestmark = pytest.mark.integration


def test_worker_killed_and_redis_restarted_empty_lose_and_duplicate_nothing(tmp_path) -> None:
    result = run(BY_NAME["worker+redis"], per_mode=20, workdir=tmp_path)
    detail = f"{result}; logs in {tmp_path}"
    assert result.acked > 0 and result.failing > 0, detail
    assert result.lost == 0, detail
    assert (result.dup_rows, result.dup_pending, result.dup_outbox) == (0, 0, 0), detail
    assert result.stuck == 0, detail
