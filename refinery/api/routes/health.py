"""/livez, /readyz, /metrics of `refinery api` (other roles serve them from refinery.ops.health).
No token needed: probes and Prometheus call these."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from refinery.api.deps import SessionsDep
from refinery.collector.router import kafka_ready
from refinery.ops.metrics import scrape_registry

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/livez")
async def livez() -> dict[str, str]:
    """200 while the process serves HTTP at all."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database does not answer, or (collector) Kafka."}},
)
def readyz(request: Request, sessions: SessionsDep) -> JSONResponse:
    """200 when the database answers a query and, where the collector is on (COLLECTOR_KEYS),
    Kafka is reachable (refinery.collector.router.kafka_ready); else 503."""
    try:
        with sessions() as session:
            db_ok = session.execute(text("SELECT 1")).scalar() == 1
    except Exception:  # any database error means "not ready", never a 500
        log.warning("readiness: database check failed", exc_info=True)
        db_ok = False
    checks = {"database": db_ok}
    if request.app.state.settings.collector_keys:
        checks["kafka"] = kafka_ready(request.app)
    ok = all(checks.values())
    body = {"status": "ok" if ok else "fail", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus text format (refinery.ops.metrics)."""
    return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)
