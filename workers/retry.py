"""The one place that says how a task survives a transient failure: `refinery_task`.

Every task of workers.tasks is declared with it, so each guarantee is written once:
- a transient error (RETRYABLE: the database or the broker unreachable, a soft time limit hit)
  is retried with exponential backoff from TASK_RETRY_BACKOFF_S, capped at
  TASK_RETRY_BACKOFF_MAX_S, with up to 25% jitter so that tasks failed by one outage do not all
  come back at once;
- retries are bounded by time, not by a count: once TASK_RETRY_BUDGET_S since the first failure
  would be exceeded, the task fails for good. The default budget (300 s: 1+2+4+8+16+32+60+60+60 s
  of waits) rides out a database or broker outage of a minute or more;
- a task that fails for good records its error against the items it carried (the failed-work
  table, refinery.reconcile), where the reconciler finds them still due, re-enqueues them and
  parks them after RECONCILE_MAX_ATTEMPTS with that error;
- each task has a soft and a hard time limit (workers.celery_app.TIME_LIMITS).

The first failure's time and the retry number travel in the message's headers, so the budget
counts wall time across workers, and retries that are not failures (a task waiting for an app's
lock sends itself again) do not spend it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError as DatabaseError

from refinery.ops.metrics import TASK_RETRIES, TASK_RETRY_BUDGET_EXHAUSTED
from refinery.settings import WorkerSettings, get_settings
from workers.celery_app import TIME_LIMITS, app

log = logging.getLogger(__name__)

# Transient errors worth a retry: the database or the broker was briefly unreachable, or the task
# ran past its soft time limit (a slow dependency; the next try may be quick).
RETRYABLE: tuple[type[BaseException], ...] = (
    DatabaseError,
    InterfaceError,
    BrokerError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    SoftTimeLimitExceeded,
)

FIRST_FAILURE = "refinery_first_failure"  # header: time.time() of the first transient failure
RETRY = "refinery_retry"  # header: transient retries so far

# What a task carried, for the failed-work table: (kind, item keys, app ids) from its arguments.
WorkOf = Callable[[tuple[Any, ...], dict[str, Any]], tuple[str, Sequence[str], Sequence[str]]]

# Tests move time by hand. Eager mode (no broker) retries in the calling process: it sleeps the
# countdown there.
clock: Callable[[], float] = time.time
sleep: Callable[[float], None] = time.sleep


def retry_countdown(
    retry: int, elapsed_s: float, settings: WorkerSettings, jitter: float | None = None
) -> float | None:
    """Seconds to wait before transient retry number `retry` (0 for the first), or None when the
    wait would end past TASK_RETRY_BUDGET_S after the first failure (`elapsed_s` ago)."""
    base = min(settings.task_retry_backoff_max_s, settings.task_retry_backoff_s * 2.0**retry)
    countdown = base * (1.0 + 0.25 * (random.random() if jitter is None else jitter))
    if elapsed_s + countdown > settings.task_retry_budget_s:
        return None
    return countdown


def _headers(task: Task) -> dict[str, Any]:
    return dict(task.request.headers or {})


def _give_up(
    name: str, work: WorkOf | None, args: tuple, kwargs: dict, error: BaseException
) -> None:  # type: ignore[type-arg]
    """Record `error` against the task's items (best effort: the database may be what failed)."""
    if work is None:
        return
    try:
        from refinery.reconcile.service import record_error
        from refinery.store.db import session_scope

        kind, keys, app_ids = work(args, kwargs)
        with session_scope(get_settings().database_url) as session:
            record_error(session, kind, error, keys=keys, app_ids=app_ids)
    except Exception as failure:  # noqa: BLE001 - the reconciler finds the items anyway
        log.warning("%s: could not record its error in failed_work: %s", name, failure)


def refinery_task(
    name: str,
    *,
    work: WorkOf | None = None,
    retry: bool = True,
    time_limits: tuple[float, float] | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], Task]:
    """Declare a Celery task named `name` with the guarantees of this module. The function takes
    the task (`self`) first. `work`: the items it carries, recorded when it fails for good.
    `retry=False`: a transient error fails the task at once (it has its own way back).
    `time_limits`: (soft, hard) seconds, else the task's row of TIME_LIMITS."""
    soft, hard = time_limits or TIME_LIMITS[name]

    def decorate(fn: Callable[..., Any]) -> Task:
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            headers = _headers(self)
            first: float | None = headers.get(FIRST_FAILURE)
            attempt = int(headers.get(RETRY) or 0)
            while True:
                try:
                    return fn(self, *args, **kwargs)
                except Retry:
                    raise
                except RETRYABLE as error:
                    if not retry:
                        _give_up(name, work, args, kwargs, error)
                        raise
                    settings = get_settings()
                    now = clock()
                    first = float(first or now)
                    countdown = retry_countdown(attempt, now - first, settings)
                    if countdown is None:
                        TASK_RETRY_BUDGET_EXHAUSTED.labels(task=name).inc()
                        log.error(
                            "%s failed for good after %.0f s of retries (TASK_RETRY_BUDGET_S=%g):"
                            " %s: %s", name, now - first, settings.task_retry_budget_s,
                            type(error).__name__, error,
                        )  # fmt: skip
                        _give_up(name, work, args, kwargs, error)
                        raise
                    TASK_RETRIES.labels(task=name).inc()
                    log.warning(
                        "%s: %s: %s; retry %d in %.1f s",
                        name, type(error).__name__, error, attempt + 1, countdown,
                    )  # fmt: skip
                    if not self.request.is_eager:
                        raise self.retry(
                            exc=error,
                            countdown=countdown,
                            max_retries=None,  # bounded by the time budget above
                            headers={FIRST_FAILURE: first, RETRY: attempt + 1},
                        ) from error
                    # Eager mode: no broker to come back through; wait here, try again.
                    sleep(countdown)
                    attempt += 1
                except Exception as error:
                    _give_up(name, work, args, kwargs, error)
                    raise

        run.__name__ = fn.__name__
        run.__qualname__ = fn.__qualname__
        run.__doc__ = fn.__doc__
        run.__module__ = fn.__module__
        task: Task = app.task(
            bind=True,
            name=name,
            soft_time_limit=soft,
            time_limit=hard,
            typing=False,
            **options,
        )(run)
        return task

    return decorate
