"""The review API and web UI: `create_app(settings) -> FastAPI`, served by `refinery api`.

One router per resource under refinery/api/routes/; another stage adds its own with one
`app.include_router(...)` line (the HTTP event collector, say). Errors: unknown ids 404, invalid
transitions and lost races 409, bad input 422 naming the field, bodies over API_MAX_BODY_BYTES
413; a database error caused by input the validators let through is a 422, not a 500.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from refinery.api.http_metrics import HttpMetrics
from refinery.api.middleware import BodySizeLimit, SecurityHeaders
from refinery.api.routes import health, prompts, proposals, refinements, tokens, ui
from refinery.api.routes.apps import router as apps_router
from refinery.api.tokens import PrincipalCache
from refinery.collector.otlp import router as otlp_router
from refinery.collector.router import router as collector_router
from refinery.review.errors import InvalidEdit, ProposalNotFound
from refinery.settings import Settings
from refinery.store.db import session_factory

log = logging.getLogger(__name__)

API_VERSION = "1.0"

# Swagger UI and ReDoc as installed files (the fastapi-offline package ships both bundles), so
# /docs and /redoc work without reaching a CDN: air-gapped deployments, and a CSP of 'self'.
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs-assets"


def create_app(settings: Settings, *, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """The ASGI app. The schema must be migrated already (`refinery api` does it at start)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Every route touching the database is a plain `def`, run in this pool; bounding it by
        # the connection pool keeps threads from queueing for connections (and the GIL).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_worker_threads
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="llm-refinery review API",
        version=API_VERSION,
        description=(
            "The reviewers' queue: proposals with their evidence, edit, approve, reject, mark "
            "applied; the prompt registry; API tokens. Authenticate with `Authorization: Bearer "
            "<token>` (roles viewer < reviewer < admin). The web UI is at /ui/."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = sessions or session_factory(settings.database_url)
    app.state.principal_cache = PrincipalCache(settings.api_token_cache_s)

    app.include_router(health.router)
    app.include_router(proposals.router)
    app.include_router(prompts.router)
    app.include_router(tokens.router)
    app.include_router(ui.router)
    app.include_router(refinements.router)  # /v1/apps/{app_id}/corpus, /v1/proposals/{id}/export
    app.include_router(apps_router)  # /v1/apps/{app_id}/impact, /ui/apps/{app_id}
    app.include_router(collector_router)  # POST /v1/events (refinery.collector)
    app.include_router(otlp_router)  # POST /v1/traces (refinery.collector.otlp)

    app.add_exception_handler(ProposalNotFound, proposals.not_found_handler)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidEdit, proposals.invalid_edit_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ui.LoginRequired, ui.login_required_handler)  # type: ignore[arg-type]
    app.add_exception_handler(DataError, _data_error)  # type: ignore[arg-type]
    app.add_exception_handler(IntegrityError, _integrity_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=app.title,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )
        return _with_hashed_scripts(page)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=app.title,
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _with_hashed_scripts(page)

    # Outermost last: security headers wrap everything, the 413 included.
    # The collector enforces its own limit (COLLECTOR_MAX_BODY_BYTES); do not cut below it.
    collector_limit = getattr(settings, "collector_max_body_bytes", settings.api_max_body_bytes)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api_max_body_bytes,
        per_path={
            path: max(collector_limit, settings.api_max_body_bytes)
            for path in ("/v1/events", "/v1/traces")
        },
    )
    app.add_middleware(SecurityHeaders)
    # Outermost: every response is counted, the 413s and security-header ones included.
    app.add_middleware(HttpMetrics)
    return app


def _with_hashed_scripts(page: HTMLResponse) -> HTMLResponse:
    """Swagger UI and ReDoc load their bundles from this server and run one inline script each:
    allow exactly those (the inline one by hash). Both inject style elements (ReDoc's
    styled-components), hence inline styles; ReDoc's search runs in a blob: worker."""
    body = bytes(page.body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", body, flags=re.S)
    )
    page.headers["content-security-policy"] = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return page


def _data_error(_request: Request, exc: DataError) -> JSONResponse:
    log.info("database refused a value: %s", exc.orig)
    return JSONResponse(
        {"detail": "a value is out of range or malformed for the database"}, status_code=422
    )


def _integrity_error(_request: Request, exc: IntegrityError) -> JSONResponse:
    # Concurrent writers that both passed their checks; the loser's transaction wrote nothing.
    log.warning("write refused by a constraint: %s", exc.orig)
    body = {"detail": "a concurrent change conflicted with this one; retry"}
    return JSONResponse(body, status_code=409)


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body, minus the echo of the input (bounded output for unbounded input)."""
    if request.url.path.startswith("/ui/"):
        return ui.validation_error_page(request, exc)
    errors = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def app_from_env() -> FastAPI:
    """For `uvicorn --factory refinery.api.app:app_from_env` (several worker processes, say): the
    app configured from the environment, as `refinery api` configures it."""
    from refinery.settings import get_settings

    return create_app(get_settings())
