"""An app instrumented with OpenTelemetry, end to end: the demo's traffic (healthy conversations,
noise and three planted failure modes) recorded as GenAI spans with the real SDK, exported with
the real OTLPSpanExporter (HTTP, protobuf, gzip) to the collector's /v1/traces, consumed by
ingest, embedded with the real model, clustered and proposed. The review queue holds one
proposal per planted mode, of the right kind, and none for healthy traffic, as it does when the
same traffic arrives as JSON events (tests/integration/test_pipeline_e2e.py)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest
from sqlalchemy import select

from refinery.demo.workload import APP_ID, generate
from refinery.store.db import session_factory
from refinery.store.models import Interaction, ProposalRow
from tests.integration.test_otlp import export, recorded
from tests.integration.test_signals_support import ingest

pytestmark = pytest.mark.integration

BATCH = 60  # interactions per export: one BatchSpanProcessor flush, under the body limit


def _ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


def test_otel_instrumented_app_fills_the_review_queue(
    kafka_bootstrap, topics, sqlite_url, make_settings, activate
):
    import socket
    import threading

    import uvicorn

    from refinery.api.app import create_app
    from refinery.store.db import migrate
    from tests.integration.helpers import wait_for

    key = "nimbus-ingest-key-0123456789"
    common = dict(kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics)
    settings = activate(make_settings(**common))  # the pipeline's (Celery eager, no Redis)
    collector = make_settings(
        **common, collector_keys={APP_ID: key}, collector_max_body_bytes=4_000_000
    )
    migrate(sqlite_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(collector), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, timeout_s=30, what="uvicorn")
        work = generate()
        feedback_of: dict[str, list[dict]] = {}
        for fb in work.feedback:
            feedback_of.setdefault(fb["interaction_id"], []).append(fb)
        for start in range(0, len(work.interactions), BATCH):
            provider, memory = recorded("nimbus-support")
            tracer = provider.get_tracer("nimbus")
            for item in work.interactions[start : start + BATCH]:
                _record(tracer, item, feedback_of.get(item["interaction_id"], []))
            assert export(base, memory.get_finished_spans(), key=key).name == "SUCCESS"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()

    run = ingest(settings, analyze=False)
    assert run.stats.stored == len(work.interactions) + len(work.feedback)
    assert not run.stats.dead_lettered

    from workers.tasks import cluster_app, embed_interactions, propose_for_app

    embed_interactions.apply(args=(sorted(set(run.enqueued)),)).get()
    cluster_app.apply(args=(APP_ID,)).get()
    propose_for_app.apply(args=(APP_ID,)).get()

    with session_factory(sqlite_url)() as session:
        modes: dict[str, Counter[str]] = {}
        for cluster_id, metadata in session.execute(
            select(Interaction.cluster_id, Interaction.metadata_).where(
                Interaction.app_id == APP_ID, Interaction.cluster_id.is_not(None)
            )
        ):
            modes.setdefault(cluster_id, Counter())[metadata["mode"]] += 1
        proposals = session.scalars(select(ProposalRow).where(ProposalRow.app_id == APP_ID)).all()
        by_mode: dict[str, str] = {}
        for row in proposals:
            mode, count = modes[row.cluster_id].most_common(1)[0]
            assert count / sum(modes[row.cluster_id].values()) >= 0.8, row.title
            assert mode != "healthy" and mode not in by_mode, row.title
            by_mode[mode] = row.kind
    assert by_mode == work.planted


def _record(tracer, item: dict, feedback: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """One request of the app as its instrumentation records it: a server span, a retriever
    span (OpenInference) and a chat span (GenAI), then the user's feedback on their own spans
    naming the chat span by trace and span id."""
    start = _ns(item["occurred_at"])
    end = start + int(item["latency_ms"] * 1e6)
    root = tracer.start_span("POST /chat", start_time=start)
    from opentelemetry import trace

    context = trace.set_span_in_context(root)
    sources = item.get("retrieved_sources") or []
    retrieve = tracer.start_span("retrieve", context=context, start_time=start)
    retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
    for n, source in enumerate(sources):
        retrieve.set_attribute(f"retrieval.documents.{n}.document.id", source["source_id"])
        retrieve.set_attribute(f"retrieval.documents.{n}.document.score", source["score"])
    retrieve.end(end_time=start + 1_000_000)
    chat = tracer.start_span("chat", context=context, start_time=start)
    chat.set_attributes({
        "gen_ai.operation.name": "chat", "gen_ai.request.model": item["model"],
        "session.id": item["session_id"], "mode": item["metadata"]["mode"],
        "gen_ai.usage.input_tokens": item["tokens"]["prompt"],
        "gen_ai.usage.output_tokens": item["tokens"]["completion"],
    })  # fmt: skip
    prompt = item["system_prompt"]
    chat.set_attributes({
        "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": prompt["text"],
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": item["query"],
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": item["response"],
    })  # fmt: skip
    chat.end(end_time=end)
    root.end(end_time=end)
    ids = chat.get_span_context()
    for fb in feedback:
        attributes = {
            "feedback.kind": fb["kind"],
            "feedback.trace_id": format(ids.trace_id, "032x"),
            "feedback.span_id": format(ids.span_id, "016x"),
        }
        if fb.get("value") is not None:
            attributes["feedback.score"] = fb["value"]
        if fb.get("text"):
            attributes["feedback.comment"] = fb["text"]
        at = _ns(fb["occurred_at"])
        tracer.start_span("feedback", attributes=attributes, start_time=at).end(end_time=at)
