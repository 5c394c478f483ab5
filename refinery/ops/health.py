"""Health and metrics endpoint of a long-running role (ingest, worker, beat, relay).

A stdlib HTTP server in a daemon thread, so that a role whose main loop blocks (a Kafka poll, a
Celery worker) still answers its probes. The API role serves the same paths from FastAPI and does
not use this.

- GET /livez   200 while the process serves HTTP at all (restart it when this fails).
- GET /readyz  200 when every check passes, else 503 naming the failed ones (JSON both ways).
- GET /metrics Prometheus text format of the given registry.

`python -m refinery.ops.health [PATH]` probes this process's own endpoint (HEALTH_PORT, or
API_PORT with --api) and exits 0 or 1: the image's HEALTHCHECK, needing no curl in the image.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], bool]


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, bool]]:
    """Run every check; one that raises counts as failed (and is logged), so that a broken
    dependency turns into a 503, never into a crashed endpoint."""
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:  # any error of a check means "not ready"
            log.warning("readiness check %r raised", name, exc_info=True)
            results[name] = False
    return all(results.values()), results


def _handler(
    checks: Mapping[str, Check], registry: CollectorRegistry
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "refinery-health"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._json(HTTPStatus.OK, {"status": "ok"})
            elif path == "/readyz":
                ok, results = run_checks(checks)
                body: dict[str, object] = {"status": "ok" if ok else "fail", "checks": results}
                if not ok:
                    body["failed"] = sorted(name for name, passed in results.items() if not passed)
                self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"status": "not found", "path": path})

        def _json(self, status: HTTPStatus, body: Mapping[str, object]) -> None:
            self._send(status, "application/json", json.dumps(body).encode())

        def _send(self, status: HTTPStatus, content_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit these paths every few seconds; an access log line each would drown the
            # role's own logs.
            pass

    return Handler


def serve_health(
    port: int,
    checks: dict[str, Callable[[], bool]],
    registry: CollectorRegistry,
    *,
    host: str = "0.0.0.0",  # probes come from the kubelet / docker, not from loopback
) -> ThreadingHTTPServer:
    """Serve /livez, /readyz and /metrics on `host:port` from a daemon thread and return the
    server (its `server_address` has the bound port; `shutdown()` stops it).

    `checks` maps a name to a quick, bounded callable (a DB ping with a timeout, say) returning
    True when that dependency is usable; they run on every /readyz request. Port 0 binds a free
    port (tests); roles skip calling this when settings.health_port is 0. Pass
    `refinery.ops.metrics.scrape_registry()` as `registry` so prefork workers are aggregated.
    """
    server = ThreadingHTTPServer((host, port), _handler(dict(checks), registry))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="refinery-health", daemon=True)
    thread.start()
    log.info("health endpoint on %s:%d", *server.server_address[:2])
    return server


def probe(url: str, timeout_s: float = 3.0) -> bool:
    """True when GET `url` answers 200 within `timeout_s`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == HTTPStatus.OK)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    from refinery.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m refinery.ops.health",
        description="Probe this container's own health endpoint; exit 0 if it answers 200.",
    )
    parser.add_argument("path", nargs="?", default="/livez", help="/livez (default) or /readyz")
    parser.add_argument("--api", action="store_true", help="probe API_PORT instead of HEALTH_PORT")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    settings = Settings()
    port = settings.api_port if args.api else settings.health_port
    if port == 0:
        print("health endpoint disabled (HEALTH_PORT=0): nothing to probe", file=sys.stderr)
        return 1
    ok = probe(f"http://127.0.0.1:{port}{args.path}", timeout_s=args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
