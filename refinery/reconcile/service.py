"""One reconciler pass, the failed-work table, and what `refinery failed` does with it.

A pass, per kind (refinery.reconcile.due):
  1. forget tracked items that progressed (no longer due): their rows are deleted;
  2. track newly due items (a row: attempts 0, first seen now);
  3. for each tracked item left alone for RECONCILE_STALE_S (since first seen, or since its
     last re-enqueue): park it when it had RECONCILE_MAX_ATTEMPTS re-enqueues already, else
     re-enqueue it and count the attempt.
The caller sends what `Enqueuers` are given and commits afterwards: an attempt is counted only
when its message was sent, and a message sent twice is harmless (every task is idempotent). One
pass at a time: the caller holds `pass_lock`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from refinery.ingest.storage import SessionKey, insert_new
from refinery.ops.metrics import FAILED_WORK, FAILED_WORK_PARKED, RECONCILE_REENQUEUED, after_commit
from refinery.reconcile.due import KINDS, DueItem, find_due, interaction_apps, still_due
from refinery.settings import Settings, WorkerSettings
from refinery.store.locks import lease
from refinery.store.models import FailedWork

log = logging.getLogger(__name__)

# Longest last_error kept: a traceback's last line is what a person needs, not pages of it.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Enqueuers:
    """How each kind of work is sent again (workers.tasks.reconcile_enqueuers)."""

    embed: Callable[[list[int]], None]  # interaction ids, one embed task per batch
    assign: Callable[[list[str]], None]  # app ids: the assignment of their due queries
    session: Callable[[list[SessionKey]], None]  # sessions whose rephrase analysis is due
    # app ids: a refine requested as due now, sent even while one is marked as on its way (the
    # app did not progress, so that one was lost: workers.scheduling `resend`)
    refine: Callable[[list[str]], None]


@dataclass
class ReconcileResult:
    forgotten: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tracked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reenqueued: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    parked: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "forgotten": dict(self.forgotten),
            "tracked": dict(self.tracked),
            "reenqueued": dict(self.reenqueued),
            "parked": dict(self.parked),
        }


def pass_lock(settings: Settings) -> contextlib.AbstractContextManager[bool]:
    """One reconciler pass at a time across workers: yields whether this one may run. Never
    waits: a pass that finds it taken has nothing to add to the one running."""
    return lease(settings, "refinery:reconcile", wait_s=0)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def send(enqueue: Enqueuers, items: Sequence[DueItem], batch_size: int) -> None:
    """Send these items of one kind (the same kind) through `enqueue`."""
    if not items:
        return
    kind = items[0].kind
    if kind == "embed":
        ids = sorted(int(i.key) for i in items)
        for start in range(0, len(ids), batch_size):
            enqueue.embed(ids[start : start + batch_size])
    elif kind == "assign":
        enqueue.assign(sorted({i.app_id for i in items}))
    elif kind == "session":
        keys = sorted(tuple(i.key.split("/", 1)) for i in items)
        for start in range(0, len(keys), batch_size):
            enqueue.session([(a, s) for a, s in keys[start : start + batch_size]])
    elif kind == "refine":
        enqueue.refine(sorted({i.app_id for i in items}))
    else:
        raise ValueError(f"unknown kind of work {kind!r}")


def reconcile(
    session: Session,
    settings: Settings,
    model: str,
    enqueue: Enqueuers,
    *,
    now: datetime | None = None,
    kinds: Iterable[str] = KINDS,
) -> ReconcileResult:
    """One pass (module docstring). Does not commit."""
    now = now or datetime.now(UTC)
    stale = timedelta(seconds=settings.reconcile_stale_s)
    cutoff = now - stale
    result = ReconcileResult()
    for kind in kinds:
        if kind == "session" and not settings.rephrase_detection_enabled:
            continue
        rows = {
            r.item_key: r
            for r in session.scalars(select(FailedWork).where(FailedWork.kind == kind))
        }
        due_now = still_due(session, kind, rows, model=model, cutoff=cutoff)
        gone = [r.id for k, r in rows.items() if k not in due_now]
        for start in range(0, len(gone), 500):
            session.execute(delete(FailedWork).where(FailedWork.id.in_(gone[start : start + 500])))
        result.forgotten[kind] = len(gone)
        rows = {k: r for k, r in rows.items() if k in due_now}

        found = find_due(session, kind, model=model, cutoff=cutoff, limit=settings.reconcile_batch)
        new = [i for i in found if i.key not in rows]
        insert_new(
            session,
            FailedWork.__table__,
            [
                {"kind": kind, "item_key": i.key, "app_id": i.app_id, "attempts": 0,
                 "first_seen_at": now}
                for i in new
            ],
        )  # fmt: skip
        result.tracked[kind] = len(new)
        session.flush()
        if new:
            rows.update(
                {
                    r.item_key: r
                    for r in session.scalars(
                        select(FailedWork).where(
                            FailedWork.kind == kind,
                            FailedWork.item_key.in_([i.key for i in new]),
                        )
                    )
                }
            )

        ready = [
            r
            for r in rows.values()
            if r.parked_at is None and _utc(r.last_attempt_at or r.first_seen_at) <= cutoff
        ]
        ready.sort(key=lambda r: r.id)
        ready = ready[: settings.reconcile_batch]
        to_park = [r for r in ready if r.attempts >= settings.reconcile_max_attempts]
        to_send = [r for r in ready if r.attempts < settings.reconcile_max_attempts]
        for row in to_park:
            row.parked_at = now
            row.last_error = row.last_error or (
                f"still due after {row.attempts} re-enqueue(s), each given"
                f" {settings.reconcile_stale_s:g} s"
            )
            log.error(
                "parked %s %s of app %s after %d attempt(s): %s",
                kind, row.item_key, row.app_id, row.attempts, row.last_error,
            )  # fmt: skip
        send(enqueue, [DueItem(kind, r.item_key, r.app_id) for r in to_send],
             settings.enqueue_batch_size)  # fmt: skip
        for row in to_send:
            row.attempts += 1
            row.last_attempt_at = now
        result.reenqueued[kind] = len(to_send)
        result.parked[kind] = len(to_park)
        if to_send:
            log.warning("re-enqueued %d due %s item(s) that had not progressed", len(to_send), kind)
    session.flush()
    parked_counts: dict[str, int] = {
        kind: int(n)
        for kind, n in session.execute(
            select(FailedWork.kind, func.count(FailedWork.id))
            .where(FailedWork.parked_at.is_not(None))
            .group_by(FailedWork.kind)
        ).all()
    }

    def count() -> None:
        for kind in KINDS:
            RECONCILE_REENQUEUED.labels(kind=kind).inc(result.reenqueued.get(kind, 0))
            FAILED_WORK_PARKED.labels(kind=kind).inc(result.parked.get(kind, 0))
            FAILED_WORK.labels(kind=kind).set(parked_counts.get(kind, 0))

    after_commit(session, count)
    return result


def record_error(
    session: Session,
    kind: str,
    error: BaseException | str,
    *,
    keys: Sequence[str] = (),
    app_ids: Sequence[str] = (),
    now: datetime | None = None,
) -> None:
    """Remember `error` as the last error of these items (a task gave up on them): rows are
    created for `keys` that have none; `app_ids` updates the rows of those apps (assignment works
    per app). Does not commit."""
    now = now or datetime.now(UTC)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = text[:MAX_ERROR_CHARS]
    if keys:
        if kind in ("embed", "assign"):
            apps = {str(i): a for i, a in interaction_apps(session, [int(k) for k in keys]).items()}
        elif kind == "session":
            apps = {k: k.split("/", 1)[0] for k in keys}
        else:
            apps = {k: k for k in keys}
        insert_new(
            session,
            FailedWork.__table__,
            [
                {"kind": kind, "item_key": k, "app_id": a, "attempts": 0, "first_seen_at": now}
                for k, a in sorted(apps.items())
            ],
        )
        session.execute(
            update(FailedWork)
            .where(FailedWork.kind == kind, FailedWork.item_key.in_(sorted(apps)))
            .values(last_error=text)
        )
    if app_ids:
        session.execute(
            update(FailedWork)
            .where(FailedWork.kind == kind, FailedWork.app_id.in_(sorted(set(app_ids))))
            .values(last_error=text)
        )


def list_failed(session: Session, *, parked_only: bool = True) -> list[FailedWork]:
    query = select(FailedWork).order_by(FailedWork.id)
    if parked_only:
        query = query.where(FailedWork.parked_at.is_not(None))
    return list(session.scalars(query))


def retry_failed(
    session: Session,
    enqueue: Enqueuers,
    settings: WorkerSettings,
    *,
    ids: Sequence[int] | None = None,
    now: datetime | None = None,
) -> list[FailedWork]:
    """Send parked items (these ids, or all with None) again now, with a fresh attempt count
    (this send is attempt 1). Returns the rows sent. Does not commit."""
    now = now or datetime.now(UTC)
    query = select(FailedWork).where(FailedWork.parked_at.is_not(None)).order_by(FailedWork.id)
    if ids is not None:
        query = query.where(FailedWork.id.in_(list(ids)))
    rows = list(session.scalars(query))
    by_kind: dict[str, list[FailedWork]] = defaultdict(list)
    for row in rows:
        by_kind[row.kind].append(row)
    for kind, kind_rows in by_kind.items():
        send(enqueue, [DueItem(kind, r.item_key, r.app_id) for r in kind_rows],
             settings.enqueue_batch_size)  # fmt: skip
        for row in kind_rows:
            row.parked_at = None
            row.attempts = 1
            row.last_attempt_at = now
    session.flush()
    return rows
