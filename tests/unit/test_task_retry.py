"""Task retries bounded by time (workers/retry.py): a dependency down for a minute is ridden out,
one down for longer than TASK_RETRY_BUDGET_S fails the task and records the error against its
items; a soft time limit is retried like any transient error. Time is moved by hand: the backoff
is the real one, the clock is not."""

from __future__ import annotations

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from workers import retry
from workers.celery_app import TIME_LIMITS, visibility_timeout_s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(retry, "clock", fake)
    monkeypatch.setattr(retry, "sleep", fake.sleep)
    return fake


def _outage(clock: FakeClock, down_s: float, error: BaseException):  # type: ignore[no-untyped-def]
    """A dependency that fails every call until `down_s` after the first one."""
    calls: list[float] = []

    def dependency() -> str:
        calls.append(clock.now)
        if clock.now - calls[0] < down_s:
            raise error
        return "ok"

    return dependency, calls


DB_DOWN = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


@retry.refinery_task("test.flaky", time_limits=(1, 2))
def flaky(self, key: str) -> str:  # type: ignore[no-untyped-def]
    return STATE["dependency"]()


STATE: dict = {}
RECORDED: list = []


@retry.refinery_task(
    "test.flaky_with_work", time_limits=(1, 2), work=lambda args, kw: ("embed", [args[0]], [])
)
def flaky_with_work(self, key: str) -> str:  # type: ignore[no-untyped-def]
    return STATE["dependency"]()


def test_a_sixty_second_database_outage_is_ridden_out(clock, activate, make_settings) -> None:
    activate(make_settings())  # the defaults: 1 s doubling, capped at 60 s, 300 s budget
    STATE["dependency"], calls = _outage(clock, 60.0, DB_DOWN)
    assert flaky.apply(args=("k",)).get() == "ok"
    assert clock.now - calls[0] >= 60 and len(calls) == len(clock.sleeps) + 1
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:], strict=False)), "backs off"


def test_an_outage_past_the_budget_fails_and_records_the_items(
    clock, activate, make_settings, monkeypatch
) -> None:
    activate(make_settings(task_retry_budget_s=120))
    STATE["dependency"], calls = _outage(clock, 10_000.0, DB_DOWN)
    monkeypatch.setattr(retry, "_give_up", lambda *a: RECORDED.append(a))
    with pytest.raises(OperationalError):
        flaky_with_work.apply(args=("42",)).get()
    assert clock.now - calls[0] <= 120, "no retry past the budget"
    assert clock.now - calls[0] >= 120 - 60 * 1.25, "retried until the budget ran out"
    ((name, _work, args, _kwargs, error),) = RECORDED
    assert name == "test.flaky_with_work" and args == ("42",) and error is not None


def test_a_soft_time_limit_is_retried(clock, activate, make_settings) -> None:
    activate(make_settings())
    STATE["dependency"], calls = _outage(clock, 3.0, SoftTimeLimitExceeded())
    assert flaky.apply(args=("k",)).get() == "ok" and len(calls) > 1


def test_schedule_and_visibility_arithmetic(make_settings) -> None:
    settings = make_settings()
    waits, elapsed = [], 0.0
    while (
        countdown := retry.retry_countdown(len(waits), elapsed, settings, jitter=0.0)
    ) is not None:
        waits.append(countdown)
        elapsed += countdown
    assert waits[:7] == [1, 2, 4, 8, 16, 32, 60] and elapsed <= 300 < elapsed + 60
    assert sum(waits) >= 4 * 60, "a database outage of four minutes is inside the budget"
    longest_hard = max(hard for _, hard in TIME_LIMITS.values())
    assert all(soft < hard for soft, hard in TIME_LIMITS.values())
    assert visibility_timeout_s(settings) >= 2 * longest_hard + 60 * 1.25
    assert visibility_timeout_s(settings) < 3600, "a killed worker's messages come back sooner"
