"""How the core hands work to the task queue, without knowing which one: the `Dispatcher`
protocol. `workers/` implements it with Celery (`workers/dispatch.py`); the core never imports
`workers` (an import-linter contract in pyproject.toml, checked by
tests/unit/test_import_contracts.py) and names that implementation only as the string
`DEFAULT_IMPLEMENTATION`, loaded at first use, so a role started by `refinery ...` needs no
wiring of its own. Tests and embedders put their own in place with `install()`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from refinery.settings import Settings

if TYPE_CHECKING:
    from refinery.ingest.storage import SessionKey
    from refinery.reconcile.service import Enqueuers

# "module:factory" of the production dispatcher (Celery on Redis, or eager without REDIS_URL).
DEFAULT_IMPLEMENTATION = "workers.dispatch:CeleryDispatcher"


class Dispatcher(Protocol):
    """Sends work to the task queue. Each send is fire-and-forget unless it says otherwise (in
    eager mode, without REDIS_URL, the work runs in the calling process before it returns)."""

    def embed_interactions(self, interaction_ids: list[int]) -> None:
        """Embed these interactions' queries (then place them in clusters)."""

    def detect_session_signals(self, keys: list[SessionKey]) -> None:
        """Look for rephrases in these (app_id, session_id) sessions."""

    def run(self, task: str, *args: object, timeout_s: float = 600) -> None:
        """Run one task by its short name (cluster_app, propose_for_app, ...) and wait for it."""

    def enqueuers(self) -> Enqueuers:
        """The reconciler's senders, one per kind of due work."""

    def main(self, argv: list[str]) -> int:
        """Run a queue role in this process ("worker ..." or "beat ..."), until it stops; returns
        its exit status (non-zero when it failed, so that a supervisor restarts it)."""


Factory = Callable[[Settings], Dispatcher]
_factory: Factory | None = None


def install(factory: Factory | None) -> None:
    """Make `factory` the dispatcher's maker (None: DEFAULT_IMPLEMENTATION again)."""
    global _factory
    _factory = factory


def dispatcher(settings: Settings) -> Dispatcher:
    """The installed dispatcher for `settings` (DEFAULT_IMPLEMENTATION unless one is installed)."""
    factory = _factory
    if factory is None:
        module, _, name = DEFAULT_IMPLEMENTATION.partition(":")
        factory = getattr(importlib.import_module(module), name)
    return factory(settings)
