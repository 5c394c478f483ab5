"""POST /v1/traces with the real OpenTelemetry clients: the SDK's OTLPSpanExporter (HTTP,
protobuf, gzip) sends GenAI spans to the collector served by uvicorn on a real port, over the
real broker; ingest stores the interactions with their sources, feedback and redaction. The
OpenInference instrumentation of the openai client, against a fake OpenAI-compatible server,
exports through the same path. Refusals: 400, 401, 413, 415."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from refinery.api.app import create_app
from refinery.otlp.mapping import interaction_id
from refinery.redact.events import pseudonymize
from refinery.store.db import migrate, session_factory
from refinery.store.models import Feedback, Interaction
from tests.integration.helpers import wait_for
from tests.integration.test_signals_support import dead_letters, ingest

pytestmark = pytest.mark.integration

KEY = "shop-ingest-key-0123456789"
OTHER_KEY = "blog-ingest-key-9876543210"
EMAIL = "jane.doe@example.org"


@pytest.fixture
def served(kafka_bootstrap, topics, sqlite_url, make_settings) -> Iterator[tuple[str, object]]:
    """The API app (collector included) under uvicorn on a free port, in a thread."""
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url,
        collector_keys={"shop": KEY, "blog": OTHER_KEY}, collector_max_body_bytes=100_000,
        **topics,
    )  # fmt: skip
    migrate(sqlite_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=30, what="uvicorn")
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def recorded(service: str = "shop-api") -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def export(base: str, spans: tuple[ReadableSpan, ...], key: str = KEY) -> SpanExportResult:
    """What a BatchSpanProcessor does with a batch, minus the thread: the real exporter, over
    HTTP, protobuf, gzip; its result says whether the collector answered 200."""
    exporter = OTLPSpanExporter(
        endpoint=f"{base}/v1/traces", headers={"X-Refinery-Key": key},
        compression=Compression.Gzip, timeout=30,
    )  # fmt: skip
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def ids(span) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_sdk_exports_genai_spans_and_ingest_stores_them(served):
    base, settings = served
    provider, memory = recorded()
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("POST /chat", attributes={"http.method": "POST"}):
        with tracer.start_as_current_span("retrieve") as retrieve:
            retrieve.set_attributes({
                "openinference.span.kind": "RETRIEVER",
                "retrieval.documents.0.document.id": "kb-shipping",
                "retrieval.documents.0.document.score": 0.83,
                "retrieval.documents.0.document.content": "Orders ship in 2 days.",
                "retrieval.documents.0.document.metadata": json.dumps({"title": "Shipping"}),
            })  # fmt: skip
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attributes({
                "gen_ai.system": "openai", "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 31,
                "gen_ai.usage.output_tokens": 9, "session.id": "sess-1",
            })  # fmt: skip
            chat.add_event("gen_ai.system.message", {"content": "You are the shop's assistant."})
            chat.add_event("gen_ai.user.message", {"content": f"I am {EMAIL}, where's my order?"})
            chat.add_event("gen_ai.choice", {"index": 0, "content": "It ships in 2 days."})
            chat.add_event("user_feedback", {"feedback.kind": "thumbs_down"})
    with tracer.start_as_current_span("chat gpt-4o") as second:
        second.set_attributes({
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "refund policy?"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "30 days."}]}]
            ),
        })  # fmt: skip
    with tracer.start_as_current_span("chat", attributes={"refinery.app_id": "blog"}) as foreign:
        foreign.set_attributes({"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "x"})
    # As stored: a random hex id that happens to hold a card or phone shape is pseudonymized.
    first_id = pseudonymize(interaction_id(*ids(chat)))
    second_id = pseudonymize(interaction_id(*ids(second)))
    # Feedback later, in a trace of its own, naming the interaction by trace and span id.
    trace_id, span_id = ids(second)
    with tracer.start_as_current_span("feedback", attributes={
        "feedback.kind": "correction", "feedback.comment": "60 days for members.",
        "feedback.trace_id": trace_id, "feedback.span_id": span_id,
    }):  # fmt: skip
        pass

    spans = memory.get_finished_spans()
    assert export(base, spans) is SpanExportResult.SUCCESS
    # A FeedbackEvent sent as JSON points at an OTLP interaction by the documented id.
    rating = {
        "event_id": "json-rating-1", "app_id": "shop", "interaction_id": first_id,
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "kind": "rating", "value": 1,
    }  # fmt: skip
    posted = httpx.post(f"{base}/v1/events", json=rating, headers={"X-Refinery-Key": KEY})
    assert posted.status_code == 202, posted.text

    run = ingest(settings, analyze=False)
    assert run.stats.stored == 5 and not run.stats.dead_lettered  # 2 interactions, 3 feedback
    with session_factory(settings.database_url)() as session:
        first = session.scalars(
            select(Interaction).where(Interaction.interaction_id == first_id)
        ).one()
        assert first.app_id == "shop" and first.session_id == "sess-1"
        assert first.query == "I am <EMAIL>, where's my order?" and EMAIL not in first.query
        assert first.response == "It ships in 2 days." and first.model == "gpt-4o"
        assert (first.prompt_tokens, first.completion_tokens) == (31, 9)
        assert first.prompt_name == "default" and first.prompt_version.startswith("sha256-")
        assert [s["source_id"] for s in first.sources] == ["kb-shipping"]
        assert first.sources[0]["title"] == "Shipping" and first.latency_ms is not None
        assert first.failing  # a thumbs down and a 1/5 rating
        feedback = {
            (f.interaction_id, f.kind, f.text)
            for f in session.scalars(select(Feedback)).all()
        }  # fmt: skip
        assert feedback == {
            (first_id, "thumbs_down", None), (first_id, "rating", None),
            (second_id, "correction", "60 days for members."),
        }  # fmt: skip
        second_row = session.scalars(
            select(Interaction).where(Interaction.interaction_id == second_id)
        ).one()
        assert second_row.query == "refund policy?" and second_row.response == "30 days."
        assert session.scalars(select(Interaction.app_id)).all() == ["shop", "shop"]

    # A retry of the same export is harmless: the same event ids, dropped as duplicates.
    assert export(base, spans) is SpanExportResult.SUCCESS
    again = ingest(settings, analyze=False)
    assert again.stats.stored == 0 and again.stats.duplicates == 4


def test_partial_success_counts_skipped_spans(served):
    base, _ = served
    provider, memory = recorded()
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("GET /health"):
        pass
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass  # message content not captured
    request = _request_of(memory.get_finished_spans())
    response = httpx.post(
        f"{base}/v1/traces", content=request.SerializeToString(),
        headers={"X-Refinery-Key": KEY, "Content-Type": "application/x-protobuf"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 2
    assert "not_chat" in parsed.partial_success.error_message
    assert "no_content" in parsed.partial_success.error_message
    # The JSON encoding answers in JSON.
    body = json_format.MessageToDict(request)
    for resource_spans in body["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = _b64_to_hex(span[name])
    as_json = httpx.post(
        f"{base}/v1/traces", json=body, headers={"X-Refinery-Key": KEY}
    )  # fmt: skip
    assert as_json.status_code == 200
    assert as_json.json()["partialSuccess"]["rejectedSpans"] in ("2", 2)


def test_invalid_event_is_dead_lettered_and_the_rest_accepted(served):
    base, settings = served
    provider, memory = recorded()
    tracer = provider.get_tracer("shop")
    for query in ("fine question", "q" * 9_000):  # the second is over MAX_QUERY_CHARS
        with tracer.start_as_current_span("chat", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": query,
        }):  # fmt: skip
            pass
    response = httpx.post(
        f"{base}/v1/traces", content=_request_of(memory.get_finished_spans()).SerializeToString(),
        headers={"X-Refinery-Key": KEY, "Content-Type": "application/x-protobuf"},
    )  # fmt: skip
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 1 and "schema_violation" in partial.error_message
    (letter,) = dead_letters(settings, expect=1)
    assert letter.reason == "schema_violation" and letter.headers["principal_app"] == "shop"
    assert ingest(settings, analyze=False).stats.stored == 1


def test_refusals(served):
    base, _ = served
    provider, memory = recorded()
    with provider.get_tracer("shop").start_as_current_span("chat"):
        pass
    body = _request_of(memory.get_finished_spans()).SerializeToString()
    proto = {"X-Refinery-Key": KEY, "Content-Type": "application/x-protobuf"}

    truncated = httpx.post(f"{base}/v1/traces", content=body[: len(body) - 7], headers=proto)
    assert truncated.status_code == 400
    assert "not a valid OTLP ExportTraceServiceRequest" in truncated.json()["detail"]

    wrong_type = httpx.post(
        f"{base}/v1/traces", content=body, headers={**proto, "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415 and "application/x-protobuf" in wrong_type.json()["detail"]

    big = httpx.post(f"{base}/v1/traces", content=b"\n" * 150_000, headers=proto)
    assert big.status_code == 413 and "COLLECTOR_MAX_BODY_BYTES=100000" in big.json()["detail"]
    bomb = gzip.compress(b"\n\x00" * 200_000)
    inflated = httpx.post(
        f"{base}/v1/traces", content=bomb, headers={**proto, "Content-Encoding": "gzip"}
    )
    assert inflated.status_code == 413 and "inflates" in inflated.json()["detail"]

    for key, message in ((None, "header is missing"), ("wrong", "unknown X-Refinery-Key")):
        headers = {k: v for k, v in proto.items() if k != "X-Refinery-Key"}
        if key:
            headers["X-Refinery-Key"] = key
        refused = httpx.post(f"{base}/v1/traces", content=body, headers=headers)
        assert refused.status_code == 401 and message in refused.json()["detail"]
    # The SDK's exporter sees the refusal as a failed export.
    assert export(base, memory.get_finished_spans(), key="wrong") is SpanExportResult.FAILURE


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions like the OpenAI API, always the same answer."""

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
            "model": request["model"],
            "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Returns are free for 30 days."},
            }],
            "usage": {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29},
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_openinference_instrumented_openai_client(served):
    import openai
    from openinference.instrumentation.openai import OpenAIInstrumentor

    base, settings = served
    fake = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    provider, memory = recorded()
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{fake.server_address[1]}/v1", api_key="sk-test"
        )
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You answer questions about returns."},
                {"role": "user", "content": f"Can I return shoes? Mail me at {EMAIL}"},
            ],
        )
        client.close()
    finally:
        instrumentor.uninstrument()
        fake.shutdown()
        fake.server_close()
    assert answer.choices[0].message.content == "Returns are free for 30 days."

    spans = memory.get_finished_spans()
    assert export(base, spans) is SpanExportResult.SUCCESS
    assert ingest(settings, analyze=False).stats.stored == 1
    with session_factory(settings.database_url)() as session:
        row = session.scalars(select(Interaction)).one()
    assert row.interaction_id == interaction_id(*ids(spans[0]))
    assert row.query == "Can I return shoes? Mail me at <EMAIL>"
    assert row.response == "Returns are free for 30 days."
    assert row.model and row.model.startswith("gpt-4o-mini")
    assert (row.prompt_tokens, row.completion_tokens) == (21, 8)
    assert row.prompt_version and row.prompt_version.startswith("sha256-")


def _request_of(spans) -> ExportTraceServiceRequest:  # type: ignore[no-untyped-def]
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans)


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()
