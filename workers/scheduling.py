"""When an app's refine (re-cluster, then propose) runs: the one place that guarantees it.

New failing queries of an app (embedded and placed by `embed_interactions`, or by the assignment
sweep) and the periodic pass both *request* a refine here; they never start one themselves.

- Debounce: a refine fires REFINE_DEBOUNCE_S after the app's last request, so a burst costs one
  run, not one per embed batch.
- No starvation: a burst that keeps arriving still gets a refine REFINE_MAX_DELAY_S after its
  first request; the periodic pass requests with no delay at all.
- A ceiling: two refines of one app start at least REFINE_MIN_INTERVAL_S apart.
- One at a time: the run holds the app's running flag, a Redis key with a short TTL
  (REFINE_LOCK_TTL_S) renewed by a heartbeat thread while the run lasts, so a killed worker
  frees the app within that TTL, not after minutes.
- Never blocking: a fired refine that finds the app busy or not yet due asks to be sent again
  after a countdown (the caller's `apply_async(countdown=...)`) and returns at once; no worker
  slot waits for a lock.

State per app, all under `refinery:refine:<app_id>:`: `pending` (hash: first and last request
time, server clock), `scheduled` (a fired task is on its way; expires, so a lost message only
delays the next request's task), `running` (the flag, a token), `started` (when the last run
started). Each decision is one Lua script, atomic against every other worker.

A lost fired task (its worker killed after taking it) leaves `scheduled` set until it expires
(REFINE_MAX_DELAY_S + 60 s): every request meanwhile is coalesced into the lost one. The
reconciler knows better (the app's refine did not progress), so its request is a `resend`: it
overwrites the marker and always sends a task. Two fired tasks at once are harmless: the first
runs and consumes the requests, the second finds nothing requested and goes idle.

Eager mode (no REDIS_URL) has no scheduler: nothing runs in the background there, and the demo
refines explicitly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from refinery.settings import Settings
from refinery.store.locks import Heartbeat

if TYPE_CHECKING:
    import redis

_PREFIX = "refinery:refine:"
# How long past its countdown a fired task may wait in a busy queue before another request may
# send a second one (harmless: the second finds nothing due and returns).
_SCHEDULED_GRACE_S = 60.0

# KEYS: pending, scheduled. ARGV: urgent (0/1), max_delay_s, scheduled_ttl_ms, token, resend (0/1).
# Returns 1 when the caller must send a fired task (none is on its way, or `resend`), else 0.
_REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('HSETNX', KEYS[1], 'first', now)
redis.call('HSET', KEYS[1], 'last', now)
if ARGV[1] == '1' then
  -- due at once: as if the burst had started max_delay ago
  local first = tonumber(redis.call('HGET', KEYS[1], 'first'))
  redis.call('HSET', KEYS[1], 'first', math.min(first, now - tonumber(ARGV[2])))
end
if ARGV[5] == '1' then
  -- the task marked as on its way did not progress (lost): replace it
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  return 1
end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""

# KEYS: pending, scheduled, running, started.
# ARGV: debounce_s, min_interval_s, max_delay_s, lock_ttl_ms, scheduled_ttl_ms, token.
# Returns {action, delay in ms}: 'run' (the caller now holds `running` with its token), 'wait'
# (send the task again after the delay), 'idle' (nothing requested).
_FIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local first = redis.call('HGET', KEYS[1], 'first')
if not first then
  redis.call('DEL', KEYS[2])
  return {'idle', 0}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local due = math.min(last + tonumber(ARGV[1]), tonumber(first) + tonumber(ARGV[3]))
local started = redis.call('GET', KEYS[4])
if started then due = math.max(due, tonumber(started) + tonumber(ARGV[2])) end
local busy = redis.call('EXISTS', KEYS[3]) == 1
if busy or now < due then
  local wait = due - now
  if busy then wait = math.max(wait, tonumber(ARGV[1]), 1) end
  redis.call('SET', KEYS[2], ARGV[6], 'PX', math.floor(wait * 1000) + tonumber(ARGV[5]))
  return {'wait', math.max(math.floor(wait * 1000), 1)}
end
redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[4])
redis.call('SET', KEYS[4], now, 'PX', math.floor(tonumber(ARGV[2]) * 1000) + 1000)
-- the run covers every request so far; a request from now on starts a new burst and sends a
-- new task, which waits for this run to finish
redis.call('DEL', KEYS[1], KEYS[2])
return {'run', 0}
"""

# KEYS: key. ARGV: token. Deletes the key while it still holds the token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Decision:
    action: Literal["run", "wait", "idle"]
    delay_s: float = 0.0
    token: str = ""


class RefineScheduler:
    """The per-app refine state machine (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._request = client.register_script(_REQUEST)
        self._fire = client.register_script(_FIRE)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _keys(app_id: str) -> list[str]:
        base = f"{_PREFIX}{app_id}:"
        return [base + "pending", base + "scheduled", base + "running", base + "started"]

    def _scheduled_ttl_ms(self) -> int:
        s = self._settings
        return int((max(s.refine_debounce_s, s.refine_max_delay_s) + _SCHEDULED_GRACE_S) * 1000)

    def request(self, app_id: str, *, urgent: bool = False, resend: bool = False) -> float | None:
        """Note new work for the app. Returns the countdown after which the caller must send the
        fired task, or None when one is already on its way (it will see this request).

        `resend`: the caller knows the task marked as on its way was lost (the reconciler: the
        app's refine did not progress); the marker is replaced and a countdown always returned."""
        s = self._settings
        keys = self._keys(app_id)
        send = self._request(
            keys=keys[:2],
            args=[
                int(urgent),
                s.refine_max_delay_s,
                self._scheduled_ttl_ms(),
                uuid.uuid4().hex,
                int(resend),
            ],
        )
        if not send:
            return None
        return 0.0 if urgent else s.refine_debounce_s

    def fire(self, app_id: str) -> Decision:
        """The fired task asks: run now (it then holds the app's running flag), wait (send the
        task again after `delay_s`), or idle (nothing to do)."""
        s = self._settings
        token = uuid.uuid4().hex
        action, delay_ms = self._fire(
            keys=self._keys(app_id),
            args=[
                s.refine_debounce_s,
                s.refine_min_interval_s,
                s.refine_max_delay_s,
                int(s.refine_lock_ttl_s * 1000),
                int(_SCHEDULED_GRACE_S * 1000),
                token,
            ],
        )
        action = action.decode() if isinstance(action, bytes) else action
        if action == "run":
            return Decision("run", token=token)
        if action == "wait":
            return Decision("wait", delay_s=int(delay_ms) / 1000)
        return Decision("idle")

    @contextlib.contextmanager
    def running(self, app_id: str, token: str) -> Iterator[None]:
        """Hold the running flag that `fire` granted for the block: renewed while it runs,
        released after it (or expired within REFINE_LOCK_TTL_S if the process dies)."""
        key = self._keys(app_id)[2]
        try:
            with Heartbeat(self._client, key, token, self._settings.refine_lock_ttl_s):
                yield
        finally:
            self._release(keys=[key], args=[token])
