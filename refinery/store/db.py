"""Engine, sessions and migrations. PostgreSQL via DATABASE_URL; a SQLite file by default."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


def _normalize_url(url: str) -> str:
    # Accept the libpq-style URL operators paste; we ship psycopg 3, not psycopg2.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    engine = _create_engine(_normalize_url(url))
    _ENGINES.add(engine)
    return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while ingest writes; busy_timeout rides out writer overlap.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def _new_pools_after_fork() -> None:
    """In a forked child (a Celery prefork pool process, started or replaced, e.g. after a
    time-limit kill, while the parent's readiness checks hold pooled connections): give every
    engine of this process a new, empty pool. The inherited connections are the parent's
    sockets (on PostgreSQL two processes would interleave their messages on one server session)
    or SQLite handles, and a pool lock that another thread held at the fork stays held in the
    child. close=False, and the old pools kept referenced: closing or collecting them here would
    end the parent's sessions (a driver's close says goodbye to the server on the shared socket)."""
    for engine in list(_ENGINES):
        _INHERITED_POOLS.append(engine.pool)
        engine.dispose(close=False)


# Every engine this process made, for the fork hook (weak: engines of tests may come and go).
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_INHERITED_POOLS: list[Any] = []  # in a child: the parent's pools, never used, never collected

# A fork must not split another thread's database call. SQLite's global mutexes (its allocator's,
# its table of open files) stay locked in the child when the fork lands inside a SQLite call, and
# the child's first SQLite call then waits forever: a Celery pool child that takes its first task
# and never answers. Measured beside a thread in a connect + SELECT 1 loop: 46 of 300 children
# hung. Threads of a process that forks (the worker's readiness checks) make their database calls
# inside no_fork_meanwhile(); a fork waits until none is in progress (up to FORK_GATE_WAIT_S, then
# goes ahead), and calls that come meanwhile wait for the fork, so that probes in a loop cannot
# starve it.
FORK_GATE_WAIT_S = 30.0


class _ForkGate:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.calls_in_progress = 0
        self.forks_in_progress = 0


_fork_gate = _ForkGate()


@contextmanager
def no_fork_meanwhile() -> Iterator[None]:
    """Around a database call made beside a thread that may fork (see _ForkGate)."""
    gate = _fork_gate
    with gate.changed:
        gate.changed.wait_for(lambda: gate.forks_in_progress == 0)
        gate.calls_in_progress += 1
    try:
        yield
    finally:
        with gate.changed:
            gate.calls_in_progress -= 1
            gate.changed.notify_all()


def _close_fork_gate() -> None:
    gate = _fork_gate
    with gate.changed:
        gate.forks_in_progress += 1
        if not gate.changed.wait_for(lambda: gate.calls_in_progress == 0, FORK_GATE_WAIT_S):
            log.warning("forking while a database call has run for over %.0f s", FORK_GATE_WAIT_S)


def _open_fork_gate_in_parent() -> None:
    gate = _fork_gate
    with gate.changed:
        gate.forks_in_progress -= 1
        gate.changed.notify_all()


def _after_fork_in_child() -> None:
    global _fork_gate
    # The child's only thread is the one that forked: the parent's waiting callers are not here,
    # and the old condition's lock may have been held by one of them at the fork.
    _fork_gate = _ForkGate()
    _new_pools_after_fork()


os.register_at_fork(
    before=_close_fork_gate,
    after_in_parent=_open_fork_gate_in_parent,
    after_in_child=_after_fork_in_child,
)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", _normalize_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the schema to the newest migration (alembic upgrade head)."""
    from alembic import command

    config = _alembic_config(url)
    with engine_for(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class SchemaNotCurrent(RuntimeError):
    """The database is not at the newest migration this code knows."""


def require_current_schema(url: str) -> None:
    """Raise SchemaNotCurrent unless the database is at the newest migration. For callers that
    only read: they must not change the schema, and on an older one their queries would fail
    with a less helpful error."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(_alembic_config(url)).get_heads())
    with engine_for(url).connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != heads:
        raise SchemaNotCurrent(
            f"the database schema is at {', '.join(sorted(current)) or 'no migration'}, this"
            f" refinery needs {', '.join(sorted(heads))}: run `refinery migrate` first"
        )


def insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on either dialect; returns rows actually inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = session.execute(insert(table).on_conflict_do_nothing(), rows)
    return max(getattr(result, "rowcount", 0) or 0, 0)  # a CursorResult for an INSERT
