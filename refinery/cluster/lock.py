"""The single writers of an app's clusters: Redis leases (refinery.store.locks) with a short TTL
(REFINE_LOCK_TTL_S) renewed while held, so a killed holder frees the app within it. Eager mode
(no REDIS_URL) needs none: each is held at once.

- `cluster_lock`: the one writer of the app's clusters and interactions.cluster_id, taken by the
  re-cluster (refinery.cluster.service) and streaming assignment (refinery.cluster.assign).
- `app_lock`: one refine of the app at a time, re-cluster and then proposing from its clusters
  (refinery.propose), whoever sent it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from refinery.settings import Settings
from refinery.store.locks import lease


def app_lock(
    app_id: str, settings: Settings, *, wait_s: float | None = None
) -> contextlib.AbstractContextManager[bool]:
    """Single writer per app for clustering and proposing. Yields whether it was acquired within
    `wait_s` (None: however long it takes)."""
    return lease(settings, f"refinery:app-lock:{app_id}", wait_s=wait_s)


def cluster_lock(
    app_id: str, settings: Settings, *, wait_s: float | None = None
) -> contextlib.AbstractContextManager[bool]:
    """Single writer of an app's clusters and interactions.cluster_id: the re-cluster and
    streaming assignment. Yields whether it was acquired: with `wait_s` set, gives up after that
    long (assignment then leaves its queries due, for the sweep)."""
    return lease(settings, f"refinery:cluster-lock:{app_id}", wait_s=wait_s)


@contextlib.contextmanager
def refine_locks(app_id: str, settings: Settings, *, cluster: bool) -> Iterator[bool]:
    """The app lock (and, for a re-cluster, the cluster lock), each waited for
    CLUSTER_REFINE_LOCK_WAIT_S at most. Yields whether all of them are held."""
    wait_s = settings.cluster_refine_lock_wait_s
    with app_lock(app_id, settings, wait_s=wait_s) as app_held:
        if not app_held or not cluster:
            yield app_held
            return
        with cluster_lock(app_id, settings, wait_s=wait_s) as cluster_held:
            yield cluster_held
