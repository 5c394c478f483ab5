"""A forked child (a Celery prefork pool process) never uses a connection its parent pooled.

The parent's readiness checks keep a pooled connection to the database; a pool child forked
after that (at start, or replacing one killed at its time limit) would otherwise be handed the
same connection: on PostgreSQL the same socket, two processes writing to one server session.
"""

from __future__ import annotations

import os

from sqlalchemy import text

from refinery.store.db import engine_for


def _backend_pid(url: str) -> int:
    with engine_for(url).connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_forked_child_opens_its_own_postgres_session_and_the_parent_keeps_its_own(postgres_url):
    parent_pid = _backend_pid(postgres_url)  # now pooled in the parent
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, str(_backend_pid(postgres_url)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_pid = int(pipe.read() or -1)
    assert os.waitpid(child, 0)[1] == 0
    assert child_pid not in (-1, parent_pid)
    # The parent's pooled session survived the child: same server process, still answering.
    assert _backend_pid(postgres_url) == parent_pid
    engine_for(postgres_url).dispose()


def test_a_forked_child_opens_its_own_sqlite_connection(sqlite_url):
    engine = engine_for(sqlite_url)
    with engine.connect() as connection:
        parent_handle = id(connection.connection.dbapi_connection)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            with engine_for(sqlite_url).begin() as connection:
                connection.execute(text("CREATE TABLE from_child (a INTEGER)"))
                handle = id(connection.connection.dbapi_connection)
            os.write(write_end, b"new" if handle != parent_handle else b"inherited")
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    assert os.waitpid(child, 0)[1] == 0
    assert answer == "new"
    with engine.connect() as connection:  # the child's write is there; the parent's handle works
        assert connection.execute(text("SELECT count(*) FROM from_child")).scalar_one() == 0
    engine.dispose()
