"""A forked child (a Celery prefork pool process) never uses a connection its parent pooled, and
is never forked in the middle of a parent thread's database call.

The parent's readiness checks keep a pooled connection to the database; a pool child forked
after that (at start, or replacing one killed at its time limit) would otherwise be handed the
same connection: on PostgreSQL the same socket, two processes writing to one server session.
A fork landing inside a check's SQLite call leaves SQLite's global mutexes locked in the child.
"""

from __future__ import annotations

import os
import signal
import threading

from sqlalchemy import text

from refinery.ops.roles import database_check
from refinery.store.db import engine_for, no_fork_meanwhile


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


def test_children_forked_beside_a_thread_checking_sqlite_all_use_sqlite(tmp_path):
    """Without the fork gate about one child in seven waited forever in its first SQLite call."""
    url = f"sqlite:///{tmp_path}/refinery.db"
    check = database_check(url)
    stop = threading.Event()

    def readiness_probes() -> None:  # the worker's health thread, probed in a loop
        while not stop.is_set():
            assert check()
            with no_fork_meanwhile():  # the next check opens a new connection (open, PRAGMAs)
                engine_for(url).dispose()

    prober = threading.Thread(target=readiness_probes, daemon=True)
    prober.start()
    hung = 0
    try:
        for _ in range(100):
            child = os.fork()
            if child == 0:  # pragma: no cover - runs in the child
                # A hung child dies of SIGALRM instead of hanging the test (pytest-timeout's
                # handler would never run: the child waits inside SQLite, in C).
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(5)
                try:
                    with engine_for(url).connect() as connection:
                        connection.execute(text("SELECT 1"))
                finally:
                    os._exit(0)
            if os.WIFSIGNALED(os.waitpid(child, 0)[1]):
                hung += 1
                break  # one is enough: each costs the alarm's 5 s
    finally:
        stop.set()
        prober.join()
    assert hung == 0
    engine_for(url).dispose()
