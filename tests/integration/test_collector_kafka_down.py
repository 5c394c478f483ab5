"""The collector when Kafka is unreachable: 503 with Retry-After (never a 500, never a hang past
COLLECTOR_PRODUCE_TIMEOUT_S), /readyz 503 meanwhile, and 202 again once the broker is back. Each
test runs its own Tansu broker (or none) so that it can stop it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from refinery.api.app import create_app
from refinery.kafka.embedded import EmbeddedBroker, free_port, start_embedded_broker
from refinery.store.db import migrate
from tests.integration.test_signals_support import interaction

# The sockets kafka-python leaves behind refused connects are ignored suite-wide (pyproject).
pytestmark = pytest.mark.integration

KEY = "shop-ingest-key-0123456789abcdef"


@pytest.fixture
def client_for(sqlite_url, topics, make_settings):  # type: ignore[no-untyped-def]
    migrate(sqlite_url)
    clients: list[TestClient] = []

    def build(bootstrap: str) -> TestClient:
        settings = make_settings(
            kafka_bootstrap_servers=bootstrap, database_url=sqlite_url,
            collector_keys={"shop": KEY}, collector_produce_timeout_s=2.0, **topics,
        )  # fmt: skip
        # A server error must show as its status, not as an exception in the test.
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def post(client: TestClient, iid: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/events",
        content=json.dumps(interaction(iid, "where is my order?")).encode(),
        headers={"Content-Type": "application/json", "X-Refinery-Key": KEY},
    )


def assert_unavailable(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "retry" in response.json()["detail"]


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    started = start_embedded_broker()
    yield started
    started.stop()


def test_broker_stopped_then_back(client_for, broker):
    client = client_for(broker.bootstrap_servers)
    assert post(client, "up1").status_code == 202
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["kafka"] is True

    broker.process.kill()
    broker.process.wait()
    assert_unavailable(post(client, "down1"))
    assert_unavailable(post(client, "down2"))  # answered at once while Kafka is known down
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"] == {"database": True, "kafka": False}

    port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    back = start_embedded_broker(port=port)
    try:
        deadline = time.monotonic() + 90
        while (status := post(client, "back1").status_code) != 202:
            assert status == 503 and time.monotonic() < deadline
            time.sleep(1)
        assert client.get("/readyz").status_code == 200
    finally:
        back.stop()


@pytest.mark.parametrize("broker_kind", ["nothing listening", "listening but silent"])
def test_broker_never_reachable(client_for, broker_kind):
    with socket.socket() as silent:
        if broker_kind == "nothing listening":
            bootstrap = f"127.0.0.1:{free_port()}"
        else:  # accepts connections (the kernel's backlog) and never answers a request
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            bootstrap = f"127.0.0.1:{silent.getsockname()[1]}"
        client = client_for(bootstrap)
        assert_unavailable(post(client, "n1"))
        assert client.get("/readyz").status_code == 503
