"""Package boundaries: the contracts in pyproject.toml's [tool.importlinter] hold (the core never
imports the Celery edge; no cycles between top-level packages), and the core reaches the task
queue only through refinery.dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

from refinery import dispatch
from refinery.runtime import celery_enqueue
from refinery.settings import Settings
from refinery.signals.enqueue import session_enqueue

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert lint_imports(no_cache=True, no_logo=True) == 0, "see the broken contract above"


def test_the_core_loads_without_celery() -> None:
    code = (
        "import sys, refinery.runtime, refinery.signals.enqueue, refinery.ingest.consumer\n"
        "leaked = sorted(m for m in ('workers', 'celery') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


class Recorder:
    def __init__(self, settings: Settings) -> None:
        self.sent: list[tuple[str, object]] = []

    def embed_interactions(self, interaction_ids: list[int]) -> None:
        self.sent.append(("embed", interaction_ids))

    def detect_session_signals(self, keys: list[tuple[str, str]]) -> None:
        self.sent.append(("sessions", keys))


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def factory(settings: Settings) -> Recorder:
        made.append(Recorder(settings))
        return made[-1]

    dispatch.install(factory)  # type: ignore[arg-type]
    yield made
    dispatch.install(None)


def test_ingest_hands_work_to_the_installed_dispatcher(recorder, make_settings) -> None:
    settings = make_settings(rephrase_detection_enabled=True)
    celery_enqueue(settings)([1, 2])
    enqueue_sessions = session_enqueue(settings)
    assert enqueue_sessions is not None
    enqueue_sessions([("shop", "s1")])
    assert [r.sent for r in recorder] == [[("embed", [1, 2])], [("sessions", [("shop", "s1")])]]
    assert session_enqueue(make_settings(rephrase_detection_enabled=False)) is None


def test_the_default_dispatcher_is_celery_from_workers(make_settings) -> None:
    dispatch.install(None)
    try:
        chosen = dispatch.dispatcher(make_settings())
    finally:
        dispatch.install(None)
    assert type(chosen).__module__ == "workers.dispatch"
