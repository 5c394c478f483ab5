"""The core's `refinery.dispatch.Dispatcher`, on Celery: `send_task` by name on Redis, or, in
eager mode (no REDIS_URL), the task run in the calling process. refinery.dispatch names it.

`send_task` keeps ingest from importing the task modules (and their ML imports); the tasks
module is imported only in eager mode and by `run`. Sends that nobody reads set
`ignore_result`: subscribing to a result would tie the sender to the result store's pub/sub,
which gives up for good after a Redis restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refinery.settings import ServiceSettings

if TYPE_CHECKING:
    from refinery.ingest.storage import SessionKey
    from refinery.reconcile.service import Enqueuers


class CeleryDispatcher:
    """refinery.dispatch.Dispatcher on Celery."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.eager = settings.celery_eager

    def embed_interactions(self, interaction_ids: list[int]) -> None:
        self._send("embed_interactions", interaction_ids, queue="embed")

    def detect_session_signals(self, keys: list[SessionKey]) -> None:
        from refinery.signals.enqueue import session_ref

        self._send("detect_session_signals", [session_ref(k) for k in keys], queue="signals")

    def run(self, task: str, *args: object, timeout_s: float = 600) -> None:
        from workers import tasks

        job = getattr(tasks, task)
        if self.eager:
            job.apply(args=args).get()
        else:
            job.apply_async(args=args).get(timeout=timeout_s)

    def enqueuers(self) -> Enqueuers:
        from workers.tasks import reconcile_enqueuers

        return reconcile_enqueuers()

    def main(self, argv: list[str]) -> int:
        from celery.signals import worker_init

        from workers.celery_app import app

        # A worker that stops on "Unrecoverable error" sets its exitcode to 1, but `app.start`
        # returns None all the same (click, non-standalone): read the worker's own code, so that
        # a supervisor restarting on failure sees one.
        workers: list = []

        def remember(sender: object = None, **_: object) -> None:
            workers.append(sender)

        worker_init.connect(remember, weak=False)
        try:
            code = app.start(argv)
        finally:
            worker_init.disconnect(remember)
        if not code and workers:
            code = getattr(workers[0], "exitcode", None)
        return int(code or 0)

    def _send(self, task: str, *args: object, queue: str) -> None:
        if self.eager:
            from workers import tasks

            getattr(tasks, task).apply(args=args).get()
            return
        from workers.celery_app import app

        app.send_task(f"refinery.{task}", args=args, queue=queue, ignore_result=True)


if TYPE_CHECKING:
    from refinery.dispatch import Factory

    _CHECKED: Factory = CeleryDispatcher  # mypy: it is a refinery.dispatch.Dispatcher
