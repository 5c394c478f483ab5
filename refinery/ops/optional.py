"""Optional steps: enrichment that proposals do not need (region failure rates, LLM cluster
titles, and whatever enrichment comes later). One of them failing must never stop the drafting of
proposals: the failure is logged once with its app, counted in
`refinery_optional_step_failures_total{step}`, and the step is simply tried again on the app's next
refine (debounced or the periodic pass), so no retry loop of its own can pile up behind an
endpoint or a bug that is down for hours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from refinery.ops.metrics import OPTIONAL_STEP_FAILURES

log = logging.getLogger(__name__)

# The `step` label values: a closed set, so dashboards can list them.
REGION_RATES = "region_rates"
CLUSTER_TITLES = "cluster_titles"


def optional_step_failed(step: str, app_id: str, error: BaseException) -> None:
    """Record one failure of `step` for `app_id`: one log line (with the traceback) and the
    counter. Callers call it once per failed run of the step, not once per item."""
    log.error(
        "optional step %s failed for app %s; proposals go on without it, the next refine"
        " tries again: %s: %s",
        step,
        app_id,
        type(error).__name__,
        error,
        exc_info=error,
    )
    OPTIONAL_STEP_FAILURES.labels(step=step).inc()


@contextlib.contextmanager
def optional_step(step: str, app_id: str) -> Iterator[None]:
    """Run the block as an optional step: any exception is recorded and swallowed."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any failure of an optional step is contained
        optional_step_failed(step, app_id, error)
