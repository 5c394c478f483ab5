"""Leases in Redis: a lock with a short TTL that a heartbeat renews while its holder runs, so a
killed holder frees what it held within the TTL, not after minutes.

Used by the stages' single writers (refinery.cluster.lock), the reconciler's one pass at a time
(refinery.reconcile.service) and the refine scheduler's running flag (workers.scheduling).
Eager mode (no REDIS_URL) runs everything in one process and needs none: `lease` grants at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from refinery.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

# KEYS: key. ARGV: token, ttl_ms. Extends the key's TTL while it still holds the token.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@functools.lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    """One client (and connection pool) per Redis URL in this process."""
    import redis

    return redis.Redis.from_url(url)


class Heartbeat:
    """Keeps `key` (holding `token`) alive: renews its TTL every third of it from a daemon
    thread until stopped. A process that dies stops renewing, and the key expires."""

    def __init__(self, client: redis.Redis, key: str, token: str, ttl_s: float) -> None:
        self._renew = client.register_script(_RENEW)
        self._key, self._token, self._ttl_ms = key, token, max(int(ttl_s * 1000), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {key}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            try:
                if not self._renew(keys=[self._key], args=[self._token, self._ttl_ms]):
                    log.warning("%s expired before its heartbeat renewed it", self._key)
                    return
            except Exception as error:  # noqa: BLE001 - Redis unreachable: retry next beat
                log.warning("heartbeat of %s failed: %s", self._key, error)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def renewing_lock(
    client: redis.Redis, name: str, *, ttl_s: float, wait_s: float | None
) -> Iterator[bool]:
    """A Redis lock with a short TTL kept alive by a heartbeat while held. Yields whether it was
    acquired within `wait_s` (None: wait as long as it takes)."""
    import redis as redis_module

    lock = client.lock(name, timeout=ttl_s, blocking_timeout=wait_s)
    if not lock.acquire():
        yield False
        return
    token = lock.local.token
    token = token.decode() if isinstance(token, bytes) else str(token)
    try:
        with Heartbeat(client, name, token, ttl_s):
            yield True
    finally:
        with contextlib.suppress(redis_module.exceptions.LockError):  # expired meanwhile
            lock.release()


@contextlib.contextmanager
def lease(settings: Settings, name: str, *, wait_s: float | None) -> Iterator[bool]:
    """`renewing_lock` on REDIS_URL with the TTL REFINE_LOCK_TTL_S; yields whether it is held
    (within `wait_s`; None: however long it takes). Eager mode: held at once."""
    if settings.redis_url is None:
        yield True
        return
    with renewing_lock(
        redis_client(settings.redis_url), name, ttl_s=settings.refine_lock_ttl_s, wait_s=wait_s
    ) as acquired:
        yield acquired
