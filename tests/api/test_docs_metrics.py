"""Deployment: /docs and /redoc load their assets from this server (no CDN), and /metrics counts
requests by route template and status with a latency histogram, in the one registry."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import insert_proposal


def _samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples, route: str, status: str, method: str = "GET") -> float:
    key = (
        "refinery_http_requests_total",
        (("method", method), ("route", route), ("status", status)),
    )
    return samples.get(key, 0.0)


def test_docs_and_redoc_are_served_from_package_assets(client):
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/") for s in sources), sources
        csp = page.headers["content-security-policy"]
        assert "http" not in csp and "script-src 'self'" in csp and "unsafe-eval" not in csp
        if path == "/docs":  # its one inline script, allowed by hash
            assert "script-src 'self' 'sha256-" in csp
        for source in sources:
            if source.startswith("/docs-assets/"):
                asset = client.get(source)
                assert asset.status_code == 200 and len(asset.content) > 1000, source


def test_metrics_count_requests_by_route_template_and_status(api_env, client):
    pid = insert_proposal(api_env.sessions, "rag_source")
    before = _samples(client)
    h = api_env.auth("viewer")
    assert client.get(f"/v1/proposals/{pid}", headers=h).status_code == 200
    assert client.get("/v1/proposals/p_nope", headers=h).status_code == 404
    assert client.get(f"/v1/proposals/{pid}").status_code == 401
    assert client.get("/no/such/path").status_code == 404
    after = _samples(client)
    route = "/v1/proposals/{proposal_id}"
    assert _count(after, route, "200") - _count(before, route, "200") == 1
    assert _count(after, route, "404") - _count(before, route, "404") == 1
    assert _count(after, route, "401") - _count(before, route, "401") == 1
    assert _count(after, "<unmatched>", "404") - _count(before, "<unmatched>", "404") == 1
    # No raw path, hence no id, becomes a label value.
    assert not any(pid in str(labels) for _, labels in after)
    histogram = (
        "refinery_http_request_duration_seconds_count",
        (("method", "GET"), ("route", route)),
    )
    assert after[histogram] - before.get(histogram, 0.0) == 3
