"""The debounced refine on a real Redis (workers/scheduling.py through the real tasks): a burst of
new failing queries costs one refine per app, a request during a run gets exactly one more run
after it, a continuous stream is not starved, and a killed holder frees the app within the short
TTL of its flag and locks.

Celery itself is replaced by a small dispatcher that runs each sent `refine_app` when its
countdown is up, and the refine's work by a recorder: what is under test is when runs happen."""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
import redis

from refinery.store.locks import renewing_lock
from workers import tasks
from workers.scheduling import RefineScheduler

pytestmark = pytest.mark.integration

TIMING = {
    "refine_debounce_s": 0.3,
    "refine_min_interval_s": 0.6,
    "refine_max_delay_s": 1.2,
    "refine_lock_ttl_s": 1.0,
    "region_sample_size": 0,
}


class Dispatcher:
    """Stands in for Celery: `refine_app.apply_async(countdown=...)` lands in a timer heap;
    `drain` runs each task when due, until nothing is left. Runs are recorded per app."""

    def __init__(self, monkeypatch, run_s: float = 0.0) -> None:
        self.heap: list[tuple[float, int, str]] = []
        self.sent = 0
        self.runs: list[tuple[str, float, float]] = []  # (app, start, end)
        self.during_run: Callable[[], None] | None = None
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._run_s = run_s
        monkeypatch.setattr(tasks.refine_app, "apply_async", self.send)
        monkeypatch.setattr(tasks, "_recluster", self.recluster)
        monkeypatch.setattr(tasks, "_propose", lambda app_id: {"app_id": app_id})

    def send(self, args, countdown: float = 0.0, **options) -> None:
        with self._lock:
            self.sent += 1
            heapq.heappush(self.heap, (time.monotonic() + countdown, next(self._order), args[0]))

    def recluster(self, app_id: str) -> dict:
        start = time.monotonic()
        if self.during_run is not None:
            hook, self.during_run = self.during_run, None
            hook()
        time.sleep(self._run_s)
        self.runs.append((app_id, start, time.monotonic()))
        return {"app_id": app_id}

    def drain(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self.heap:
                    return
                due, _, app_id = heapq.heappop(self.heap)
            assert time.monotonic() < deadline, "the refine never settled"
            time.sleep(max(0.0, due - time.monotonic()))
            tasks.refine_app.run(app_id)

    def count(self, app_id: str) -> int:
        return sum(1 for app, _, _ in self.runs if app == app_id)


@pytest.fixture
def scheduled(redis_url, sqlite_url, make_settings, activate):
    return activate(make_settings(redis_url=redis_url, database_url=sqlite_url, **TIMING))


def test_a_burst_costs_one_refine_per_app(scheduled, monkeypatch) -> None:
    dispatcher = Dispatcher(monkeypatch)
    last_request = time.monotonic()
    for _ in range(40):  # 40 embed batches of two apps within half a second
        tasks.request_refine(["shop", "bank"])
        last_request = time.monotonic()
        time.sleep(0.01)
    assert dispatcher.sent == 2, "one fired task per app, not one per request"
    dispatcher.drain()
    assert (dispatcher.count("shop"), dispatcher.count("bank")) == (1, 1)
    first_start = min(start for _, start, _ in dispatcher.runs)
    assert first_start >= last_request + scheduled.refine_debounce_s - 0.05, "after the quiet"


def test_a_request_during_a_run_gets_one_more_run_after_it(scheduled, monkeypatch) -> None:
    dispatcher = Dispatcher(monkeypatch, run_s=0.5)

    # New failing queries of the app arrive (three embed batches) while its refine runs.
    def three_embed_batches() -> None:
        for _ in range(3):
            tasks.request_refine(["shop"])

    dispatcher.during_run = three_embed_batches
    tasks.request_refine(["shop"])
    dispatcher.drain()
    assert dispatcher.count("shop") == 2
    (_, _, first_end), (_, second_start, _) = dispatcher.runs
    assert second_start >= first_end, "never two runs of one app at once"


def test_a_run_in_progress_makes_the_fired_task_wait_not_block(scheduled) -> None:
    scheduler = RefineScheduler(redis.Redis.from_url(scheduled.redis_url), scheduled)
    scheduler.request("shop", urgent=True)
    holder = scheduler.fire("shop")
    assert holder.action == "run"
    with scheduler.running("shop", holder.token):
        scheduler.request("shop", urgent=True)
        asked = time.monotonic()
        busy = scheduler.fire("shop")
        assert time.monotonic() - asked < 0.5, "answered at once"
        assert busy.action == "wait" and busy.delay_s >= 0.3
    time.sleep(scheduled.refine_min_interval_s)
    assert scheduler.fire("shop").action == "run"
    assert scheduler.fire("shop").action == "idle", "every request was covered"


def test_a_continuous_stream_still_gets_a_refine_every_max_delay(scheduled, monkeypatch) -> None:
    dispatcher = Dispatcher(monkeypatch)
    began = time.monotonic()
    stop = began + 3.0
    feeder_error: list[BaseException] = []

    def feed() -> None:  # a request every 0.1 s: never quiet for the 0.3 s debounce
        try:
            while time.monotonic() < stop:
                tasks.request_refine(["shop"])
                time.sleep(0.1)
        except BaseException as error:  # surfaced below
            feeder_error.append(error)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.05)
    dispatcher.drain()
    feeder.join()
    dispatcher.drain()
    assert not feeder_error
    starts = [start for _, start, _ in dispatcher.runs]
    # 3 s of stream, max delay 1.2 s, at least 0.6 s apart: 2-5 runs, the first within max delay.
    assert 2 <= len(starts) <= 5, starts
    assert starts[0] - began <= scheduled.refine_max_delay_s + 0.3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= scheduled.refine_min_interval_s - 0.05, gaps


HOLDER = textwrap.dedent(
    """
    import sys, time
    import redis
    from refinery.settings import Settings
    from refinery.store.locks import renewing_lock
    from workers.scheduling import RefineScheduler

    settings = Settings(_env_file=None, redis_url=sys.argv[1], refine_debounce_s=0,
                        refine_min_interval_s=0, refine_lock_ttl_s=1.0)
    client = redis.Redis.from_url(sys.argv[1])
    scheduler = RefineScheduler(client, settings)
    scheduler.request("shop", urgent=True)
    decision = scheduler.fire("shop")
    assert decision.action == "run", decision
    with scheduler.running("shop", decision.token), renewing_lock(
        client, "refinery:app-lock:shop", ttl_s=1.0, wait_s=0
    ) as held:
        assert held
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_a_killed_holder_frees_the_app_within_the_lock_ttl(
    redis_url, make_settings, activate
) -> None:
    settings = activate(
        make_settings(redis_url=redis_url, refine_debounce_s=0, refine_min_interval_s=0,
                      refine_lock_ttl_s=1.0)
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    scheduler = RefineScheduler(client, settings)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        time.sleep(2.5)  # 2.5 TTLs: alive, its heartbeat keeps the app busy
        scheduler.request("shop")
        assert scheduler.fire("shop").action == "wait"
        with renewing_lock(client, "refinery:app-lock:shop", ttl_s=1.0, wait_s=0) as held:
            assert not held
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed = time.monotonic()
        while scheduler.fire("shop").action != "run":
            assert time.monotonic() - killed < settings.refine_lock_ttl_s + 0.5, "flag not freed"
            time.sleep(0.05)
        with renewing_lock(client, "refinery:app-lock:shop", ttl_s=1.0, wait_s=1.5) as held:
            assert held, "the app lock of the killed holder expired"
        assert time.monotonic() - killed < settings.refine_lock_ttl_s + 0.5
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
        client.close()
