"""What the database says is due, per kind of work. Pure queries, no writes.

| kind    | key                 | due while                                                      |
|---------|---------------------|----------------------------------------------------------------|
| embed   | interactions.id     | failing, and no embedding of its query (this model)            |
| assign  | interactions.id     | failing, embedded, cluster_id and cluster_checked_at NULL      |
| session | "app_id/session_id" | open, turns no rephrase analysis covered, quiet since `cutoff` |
| refine  | app_id              | a failing query placed before `cutoff` and after the app's     |
|         |                     | last finished re-cluster (its clusters are older than it)      |

Parked items (failed_work.parked_at set) are left out: they wait for a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, exists, func, or_, select, true, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from refinery.embed.service import has_query_vector
from refinery.store.models import ClusterRun, FailedWork, Interaction, SessionState

KINDS = ("embed", "assign", "session", "refine")


@dataclass(frozen=True)
class DueItem:
    kind: str
    key: str
    app_id: str


def _not_parked(kind: str, key: ColumnElement[str]) -> ColumnElement[bool]:
    return ~exists().where(
        FailedWork.kind == kind, FailedWork.item_key == key, FailedWork.parked_at.is_not(None)
    )


def _embedded(model: str) -> ColumnElement[bool]:
    return has_query_vector(model)


def _interaction_filter(kind: str, model: str) -> list[ColumnElement[bool]]:
    if kind == "embed":
        return [Interaction.failing == true(), ~_embedded(model)]
    return [
        Interaction.failing == true(),
        Interaction.cluster_id.is_(None),
        Interaction.cluster_checked_at.is_(None),
        _embedded(model),
    ]


def _session_filter(cutoff: datetime) -> list[ColumnElement[bool]]:
    return [
        SessionState.closed_at.is_(None),
        SessionState.last_seen_at <= cutoff,
        or_(
            SessionState.analyzed_at.is_(None),
            SessionState.analyzed_at < SessionState.last_seen_at,
        ),
    ]


def _refine_query(cutoff: datetime):  # type: ignore[no-untyped-def]
    last_run = (
        select(ClusterRun.app_id, func.max(ClusterRun.finished_at).label("finished"))
        .where(ClusterRun.finished_at.is_not(None))
        .group_by(ClusterRun.app_id)
        .subquery()
    )
    return (
        select(Interaction.app_id)
        .outerjoin(last_run, last_run.c.app_id == Interaction.app_id)
        .where(
            Interaction.failing == true(),
            Interaction.cluster_checked_at.is_not(None),
            Interaction.cluster_checked_at <= cutoff,
            or_(
                last_run.c.finished.is_(None),
                Interaction.cluster_checked_at > last_run.c.finished,
            ),
        )
        .distinct()
    )


def find_due(
    session: Session, kind: str, *, model: str, cutoff: datetime, limit: int
) -> list[DueItem]:
    """Up to `limit` due items of `kind`, oldest first, parked ones left out."""
    if kind in ("embed", "assign"):
        id_key: ColumnElement[str] = cast(Interaction.id, String)
        rows = session.execute(
            select(Interaction.id, Interaction.app_id)
            .where(*_interaction_filter(kind, model), _not_parked(kind, id_key))
            .order_by(Interaction.id)
            .limit(limit)
        ).all()
        return [DueItem(kind, str(r.id), r.app_id) for r in rows]
    if kind == "session":
        ref_key: ColumnElement[str] = SessionState.app_id + "/" + SessionState.session_id
        refs = session.execute(
            select(SessionState.app_id, SessionState.session_id)
            .where(*_session_filter(cutoff), _not_parked(kind, ref_key))
            .order_by(SessionState.last_seen_at)
            .limit(limit)
        ).all()
        return [DueItem(kind, f"{r.app_id}/{r.session_id}", r.app_id) for r in refs]
    if kind == "refine":
        apps = sorted(session.scalars(_refine_query(cutoff)))
        parked = set(
            session.scalars(
                select(FailedWork.item_key).where(
                    FailedWork.kind == kind, FailedWork.parked_at.is_not(None)
                )
            )
        )
        return [DueItem(kind, a, a) for a in apps if a not in parked][:limit]
    raise ValueError(f"unknown kind of work {kind!r}")


def still_due(
    session: Session, kind: str, keys: Iterable[str], *, model: str, cutoff: datetime
) -> set[str]:
    """Of these keys of `kind`, those still due (parked or not)."""
    keys = sorted(set(keys))
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        if kind in ("embed", "assign"):
            ids = [int(k) for k in chunk]
            found |= {
                str(i)
                for i in session.scalars(
                    select(Interaction.id).where(
                        Interaction.id.in_(ids), *_interaction_filter(kind, model)
                    )
                )
            }
        elif kind == "session":
            pairs = [tuple(k.split("/", 1)) for k in chunk]
            found |= {
                f"{r.app_id}/{r.session_id}"
                for r in session.execute(
                    select(SessionState.app_id, SessionState.session_id).where(
                        tuple_(SessionState.app_id, SessionState.session_id).in_(pairs),
                        *_session_filter(cutoff),
                    )
                )
            }
        elif kind == "refine":
            query = _refine_query(cutoff).where(Interaction.app_id.in_(chunk))
            found |= set(session.scalars(query))
        else:
            raise ValueError(f"unknown kind of work {kind!r}")
    return found


def interaction_apps(session: Session, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(ids))
    apps: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        for row in session.execute(
            select(Interaction.id, Interaction.app_id).where(
                Interaction.id.in_(ids[start : start + 500])
            )
        ):
            apps[row.id] = row.app_id
    return apps
