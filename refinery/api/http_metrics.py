"""HTTP metrics of `refinery api`: requests by method, route template and status, and a latency
histogram (refinery.ops.metrics.HTTP_REQUESTS, HTTP_REQUEST_SECONDS), served on its /metrics.

Pure ASGI like refinery.api.middleware. The route template is read after the app ran: the router
leaves the matched route in the scope, so a proposal id never becomes a label value.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refinery.ops.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

# Any other method string a client sends is counted as OTHER: labels stay a bounded set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped the app

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - start)
