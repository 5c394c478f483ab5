"""Session signals: rephrase (consecutive turns asking the same thing) and abandon (the session
ended after a response with no positive signal).

Turn order: `turn_index` when every turn of the session has one, else `occurred_at`. Both
detectors re-derive their rows from the stored session, so a turn that arrives late (between
two turns already analysed, or after the session was closed) moves the signals to where they
belong. Neither commits: the Celery task does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from refinery.embed.embedder import Embedder
from refinery.embed.service import embed_interactions, vectors_from_rows
from refinery.ingest.failure import as_utc, signal_weight
from refinery.ingest.storage import InteractionKey, SessionKey, insert_new, judge_touched
from refinery.settings import Settings
from refinery.store.models import Embedding, Feedback, Interaction, SessionState

SYSTEM = "system"


@dataclass
class Turn:
    id: int
    app_id: str
    session_id: str
    interaction_id: str
    turn_index: int | None
    occurred_at: datetime
    query_hash: str


@dataclass
class SignalResult:
    sessions: int = 0
    rephrases: int = 0  # rephrase rows in effect on the analysed sessions
    abandoned: int = 0  # abandon rows written by a sweep
    changed: set[InteractionKey] = field(default_factory=set)
    to_embed: list[int] = field(default_factory=list)  # failing, not yet embedded


def system_event_id(kind: str, app_id: str, interaction_id: str) -> str:
    """One row per kind and interaction: re-detection rewrites it, never adds another."""
    digest = hashlib.sha256(f"{app_id}\x1f{interaction_id}".encode("utf-8", "surrogatepass"))
    return f"sys-{kind}-{digest.hexdigest()[:40]}"


def order_turns(turns: Sequence[Turn]) -> list[Turn]:
    if turns and all(t.turn_index is not None for t in turns):
        return sorted(turns, key=lambda t: (t.turn_index, as_utc(t.occurred_at), t.interaction_id))
    return sorted(
        turns, key=lambda t: (as_utc(t.occurred_at), t.turn_index or -1, t.interaction_id)
    )


def _load_turns(
    session: Session, keys: Sequence[SessionKey], max_turns: int
) -> dict[SessionKey, list[Turn]]:
    by_session: dict[SessionKey, list[Turn]] = {}
    for start in range(0, len(keys), 200):
        chunk = list(keys[start : start + 200])
        for row in session.execute(
            select(
                Interaction.id,
                Interaction.app_id,
                Interaction.session_id,
                Interaction.interaction_id,
                Interaction.turn_index,
                Interaction.occurred_at,
                Interaction.query_hash,
            ).where(tuple_(Interaction.app_id, Interaction.session_id).in_(chunk))
        ):
            by_session.setdefault((row.app_id, row.session_id), []).append(Turn(*row))
    return {k: order_turns(v)[-max_turns:] for k, v in by_session.items()}


def _vectors(session: Session, turns: Iterable[Turn], embedder: Embedder) -> dict[str, np.ndarray]:
    """Query vectors by query hash, through the embedding cache (misses are embedded, stored)."""
    turns = list(turns)
    if not turns:
        return {}
    embed_interactions(session, [t.id for t in turns], embedder)
    hashes = sorted({t.query_hash for t in turns})
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(hashes), 500):
        rows = session.execute(
            select(Embedding.text_hash, Embedding.vector, Embedding.dim).where(
                Embedding.model == embedder.name,
                Embedding.text_hash.in_(hashes[start : start + 500]),
            )
        ).all()
        if rows:
            vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim)
            found.update({r.text_hash: vectors[i] for i, r in enumerate(rows)})
    return found


def _lock_sessions(session: Session, keys: Sequence[SessionKey]) -> dict[SessionKey, SessionState]:
    """Row locks on the sessions (PostgreSQL; SQLite has one writer anyway), in key order, so
    that two analyses of one session run one after the other and the later sees every turn."""
    states: dict[SessionKey, SessionState] = {}
    for start in range(0, len(keys), 200):
        chunk = list(keys[start : start + 200])
        for state in session.scalars(
            select(SessionState)
            .where(tuple_(SessionState.app_id, SessionState.session_id).in_(chunk))
            .order_by(SessionState.app_id, SessionState.session_id)
            .with_for_update()
        ):
            states[(state.app_id, state.session_id)] = state
    return states


def _system_rows(
    session: Session, turns: Iterable[Turn]
) -> dict[tuple[str, InteractionKey], Feedback]:
    keys = sorted({(t.app_id, t.interaction_id) for t in turns})
    rows: dict[tuple[str, InteractionKey], Feedback] = {}
    for start in range(0, len(keys), 500):
        for fb in session.scalars(
            select(Feedback).where(
                Feedback.source == SYSTEM,
                tuple_(Feedback.app_id, Feedback.interaction_id).in_(keys[start : start + 500]),
            )
        ):
            rows[(fb.kind, (fb.app_id, fb.interaction_id))] = fb
    return rows


def _system_row(
    kind: str, turn: Turn, occurred_at: datetime, detail: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "event_id": system_event_id(kind, turn.app_id, turn.interaction_id),
        "app_id": turn.app_id,
        "interaction_id": turn.interaction_id,
        "session_id": turn.session_id,
        "kind": kind,
        "value": None,
        "scale_max": 5.0,
        "text": None,
        "occurred_at": as_utc(occurred_at),
        "ingested_at": now,
        "source": SYSTEM,
        "detail": detail,
        "joined": True,
    }


def analyze_sessions(
    session: Session,
    keys: Iterable[SessionKey],
    settings: Settings,
    embedder: Embedder,
    *,
    now: datetime | None = None,
) -> SignalResult:
    """Re-derive the rephrase rows of these sessions (and the after-rephrase flag of their
    abandon rows), re-judge the interactions whose signals changed, mark the sessions analysed."""
    now = now or datetime.now(UTC)
    keys = sorted(set(keys))
    result = SignalResult()
    states = _lock_sessions(session, keys)
    turns_by_session = _load_turns(session, keys, settings.session_max_turns)
    all_turns = [t for turns in turns_by_session.values() for t in turns]
    vectors = _vectors(session, all_turns, embedder)
    existing = _system_rows(session, all_turns)

    wanted: dict[
        InteractionKey, tuple[Turn, Turn, float, float]
    ] = {}  # prev -> (prev, next, gap, sim)
    last_after_rephrase: dict[InteractionKey, bool] = {}
    for turns in turns_by_session.values():
        for prev, nxt in zip(turns, turns[1:], strict=False):
            gap = (as_utc(nxt.occurred_at) - as_utc(prev.occurred_at)).total_seconds()
            if abs(gap) > settings.rephrase_window_s:
                continue
            a, b = vectors.get(prev.query_hash), vectors.get(nxt.query_hash)
            if a is None or b is None:
                continue
            similarity = float(a @ b)
            if similarity >= settings.rephrase_similarity_threshold:
                wanted[(prev.app_id, prev.interaction_id)] = (prev, nxt, max(gap, 0.0), similarity)
        if turns:
            last = turns[-1]
            before = turns[-2] if len(turns) > 1 else None
            last_after_rephrase[(last.app_id, last.interaction_id)] = (
                before is not None and (before.app_id, before.interaction_id) in wanted
            )

    inserts = []
    for key, (prev, nxt, gap, similarity) in sorted(wanted.items()):
        detail = {
            "after_s": round(gap, 1),
            "similarity": round(similarity, 3),
            "next": nxt.interaction_id,
        }
        row = existing.get(("rephrase", key))
        if row is None:
            inserts.append(_system_row("rephrase", prev, nxt.occurred_at, detail, now))
            result.changed.add(key)
        elif row.detail != detail:
            row.detail = detail
            row.occurred_at = as_utc(nxt.occurred_at)
            result.changed.add(key)
    insert_new(session, Feedback.__table__, inserts)
    stale: list[int] = []
    for (kind, key), row in existing.items():
        if kind == "rephrase" and key not in wanted:
            stale.append(row.id)
            result.changed.add(key)
        elif kind == "abandon":
            if key not in last_after_rephrase:  # no longer the last turn: the session went on
                stale.append(row.id)
                result.changed.add(key)
            elif bool((row.detail or {}).get("after_rephrase")) != last_after_rephrase[key]:
                row.detail = {**(row.detail or {}), "after_rephrase": last_after_rephrase[key]}
                result.changed.add(key)
    if stale:
        session.execute(delete(Feedback).where(Feedback.id.in_(stale)))
    for state in states.values():
        # Covered up to what was seen when the lock was taken; later turns make it due again.
        state.analyzed_at = state.last_seen_at
    session.flush()
    result.sessions = len(turns_by_session)
    result.rephrases = len(wanted)
    result.to_embed = judge_touched(session, result.changed, settings, embedder.name)
    return result


def sweep_abandoned(
    session: Session,
    settings: Settings,
    *,
    now: datetime | None = None,
    on_pending: Callable[[list[SessionKey]], None] | None = None,
) -> SignalResult:
    """Close the sessions quiet for ABANDON_QUIET_S (no turn by event time nor by arrival) and
    mark each one's last interaction abandoned unless it has a positive signal.

    A quiet session whose rephrase analysis is still due (its task was lost, or is late) is left
    open this round and handed to `on_pending` to be analysed: whether its end follows a
    rephrase is not known yet. The sweep itself never embeds."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.abandon_quiet_s)
    states = session.scalars(
        select(SessionState)
        .where(
            SessionState.closed_at.is_(None),
            SessionState.last_seen_at <= cutoff,
            SessionState.last_occurred_at <= cutoff,
        )
        .order_by(SessionState.last_seen_at)
        .limit(settings.signals_sweep_batch)
    ).all()
    result = SignalResult()
    if not states:
        return result
    pending = [
        s for s in states if s.analyzed_at is None or as_utc(s.analyzed_at) < as_utc(s.last_seen_at)
    ]
    if pending and on_pending is not None:
        on_pending(sorted((s.app_id, s.session_id) for s in pending))
    states = [s for s in states if s not in pending]
    keys = sorted((s.app_id, s.session_id) for s in states)
    if not keys:
        return result
    turns_by_session = _load_turns(session, keys, settings.session_max_turns)
    lasts = {k: turns[-1] for k, turns in turns_by_session.items() if turns}
    # The after-rephrase flag: is the last turn's predecessor marked rephrased by it?
    system = _system_rows(session, [t for turns in turns_by_session.values() for t in turns])
    signals_on_last: dict[InteractionKey, list[Feedback]] = {}
    last_keys = sorted((t.app_id, t.interaction_id) for t in lasts.values())
    for start in range(0, len(last_keys), 500):
        for fb in session.scalars(
            select(Feedback).where(
                tuple_(Feedback.app_id, Feedback.interaction_id).in_(last_keys[start : start + 500])
            )
        ):
            signals_on_last.setdefault((fb.app_id, fb.interaction_id), []).append(fb)
    inserts = []
    for key, last in sorted(lasts.items()):
        last_key = (last.app_id, last.interaction_id)
        feedback = signals_on_last.get(last_key, [])
        positive = any(signal_weight(fb, settings)[0] < 0 for fb in feedback)
        already = any(fb.source == SYSTEM and fb.kind == "abandon" for fb in feedback)
        if positive or already:
            continue
        turns = turns_by_session[key]
        before = turns[-2] if len(turns) > 1 else None
        after_rephrase = False
        if before is not None:
            row = system.get(("rephrase", (before.app_id, before.interaction_id)))
            after_rephrase = (
                row is not None and (row.detail or {}).get("next") == last.interaction_id
            )
        ended = min(as_utc(last.occurred_at) + timedelta(seconds=settings.abandon_quiet_s), now)
        detail = {"quiet_s": settings.abandon_quiet_s, "after_rephrase": after_rephrase}
        inserts.append(_system_row("abandon", last, ended, detail, now))
        result.changed.add(last_key)
    result.abandoned = insert_new(session, Feedback.__table__, inserts)
    for state in states:
        state.closed_at = now
    session.flush()
    result.sessions = len(states)
    result.to_embed = judge_touched(session, result.changed, settings, _model_name(settings))
    return result


def _model_name(settings: Settings) -> str:
    from refinery.embed import embedding_model_name

    return embedding_model_name(settings)
