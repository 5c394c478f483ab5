"""The queue's count (refinery.review.service.count_matches): exact on a small queue, kept at
most COUNT_CACHE_TTL_S on a large one, per database and filter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, insert

from refinery.review import service
from refinery.review.service import COUNT_CACHE_MIN, ProposalFilter, count_matches
from refinery.store.db import engine_for, migrate, session_factory
from refinery.store.models import ProposalRow


def _add(url: str, n: int, *, start: int = 0, kind: str = "rag_source") -> None:
    rows = [
        {
            "id": f"p{start + i}",
            "app_id": "app",
            "cluster_id": f"c{start + i}",
            "kind": kind,
            "status": "pending",
            "version": 1,
            "title": "t",
            "payload": {},
            "fingerprint": "f",
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
        }
        for i in range(n)
    ]
    with session_factory(url).begin() as session:
        session.execute(insert(ProposalRow), rows)


@pytest.fixture
def counted(sqlite_url, monkeypatch):
    """(url, a list of the count statements run, the fake clock's [now])."""
    migrate(sqlite_url)
    statements: list[str] = []

    def remember(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if "count(" in statement.lower():
            statements.append(statement)

    engine = engine_for(sqlite_url)
    event.listen(engine, "before_cursor_execute", remember)
    clock = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(service, "_counts", {})
    yield sqlite_url, statements, clock
    event.remove(engine, "before_cursor_execute", remember)


def _count(url: str, filters: ProposalFilter | None = None) -> int:
    with session_factory(url)() as session:
        return count_matches(session, filters or ProposalFilter())


def test_a_small_queue_is_counted_exactly_on_every_page(counted):
    url, statements, _ = counted
    _add(url, 10)
    assert _count(url) == 10
    _add(url, 1, start=10)
    assert _count(url) == 11  # at once, no waiting for a cache
    assert len(statements) == 2


def test_a_large_queue_count_is_reused_until_it_is_too_old(counted):
    url, statements, clock = counted
    _add(url, COUNT_CACHE_MIN)
    assert _count(url) == COUNT_CACHE_MIN
    _add(url, 5, start=COUNT_CACHE_MIN)
    clock[0] += service.COUNT_CACHE_TTL_S / 2
    assert _count(url) == COUNT_CACHE_MIN  # the kept figure, no query
    assert len(statements) == 1
    clock[0] += service.COUNT_CACHE_TTL_S
    assert _count(url) == COUNT_CACHE_MIN + 5
    assert len(statements) == 2


def test_each_filter_has_its_own_count(counted):
    url, _, _ = counted
    _add(url, COUNT_CACHE_MIN)
    _add(url, 3, start=COUNT_CACHE_MIN, kind="prompt_edit")
    assert _count(url) == COUNT_CACHE_MIN + 3
    assert _count(url, ProposalFilter(kind="prompt_edit")) == 3
    assert _count(url, ProposalFilter(kind="rag_source")) == COUNT_CACHE_MIN


def test_each_database_has_its_own_count(counted, tmp_path):
    url, _, _ = counted
    other = f"sqlite:///{tmp_path}/other.db"
    migrate(other)
    _add(url, COUNT_CACHE_MIN)
    _add(other, COUNT_CACHE_MIN + 7)
    assert _count(url) == COUNT_CACHE_MIN
    assert _count(other) == COUNT_CACHE_MIN + 7
