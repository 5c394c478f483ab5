"""Per-client limits on failed credentials: UI log-ins, bearer tokens, collector keys.

A client (by IP, as uvicorn reports it: behind a proxy listed in FORWARDED_ALLOW_IPS, the
X-Forwarded-For address) may fail AUTH_FAILURE_LIMIT times per AUTH_FAILURE_WINDOW_S and kind;
past that, every attempt of that kind, right or wrong, gets 429 with Retry-After until its
oldest failure leaves the window. Only failures count, so well-behaved clients never meet it.

In-process, on purpose: a sliding window of timestamps per (kind, client) costs no network hop
on the request path, and guessing a 32-byte token or a 24-character key is hopeless at any rate,
so the limit is there to stop noisy scanners and log floods, not to make guessing infeasible.
With N replicas behind a load balancer a client gets up to N times the limit (less with sticky
balancing); a deployment that needs one global limit puts it in the proxy, or in Redis.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from refinery.settings import ApiSettings

UI_LOGIN, BEARER, COLLECTOR_KEY = "ui_login", "bearer", "collector_key"


class FailureLimiter:
    """Sliding-window counts of failures per (kind, client). Thread-safe; bounded memory (past
    `max_clients` keys, the whole table is dropped: a flood of distinct addresses resets it
    rather than growing it)."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, kind: str, client: str) -> int | None:
        """Seconds until `client` may try `kind` again, or None when it may now."""
        if self.limit <= 0:
            return None
        with self._lock:
            times = self._failures.get((kind, client))
            if not times:
                return None
            self._expire(times)
            if len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window_s - self.clock()))

    def failed(self, kind: str, client: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            if len(self._failures) >= self.max_clients:
                self._failures.clear()
            times = self._failures.setdefault((kind, client), deque())
            self._expire(times)
            times.append(self.clock())
            while len(times) > self.limit:
                times.popleft()

    def _expire(self, times: deque[float]) -> None:
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()


_make_lock = threading.Lock()


def limiter_for(app: Any, settings: ApiSettings) -> FailureLimiter:
    """The app's limiter (one per process), made on first use."""
    state = app.state
    limiter = getattr(state, "auth_failure_limiter", None)
    if limiter is None:
        with _make_lock:
            limiter = getattr(state, "auth_failure_limiter", None)
            if limiter is None:
                limiter = FailureLimiter(
                    settings.auth_failure_limit, settings.auth_failure_window_s
                )
                state.auth_failure_limiter = limiter
    return limiter  # type: ignore[no-any-return]


def client_of(request: Any) -> str:
    client = getattr(request, "client", None)
    return client.host if client is not None and client.host else "unknown"
