"""refinery.otlp: OTLP bodies decoded (protobuf, JSON with hex ids, gzip, refusals) and spans
mapped to events under the GenAI and OpenInference conventions; every mapped event validates."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.otlp.decode import (
    JSON,
    PROTOBUF,
    BadRequest,
    Span,
    SpanEvent,
    inflate,
    media_type,
    parse_request,
    spans_of,
)
from refinery.otlp.mapping import Limits, interaction_id, map_spans
from refinery.settings import Settings

TRACE = "0af7651916cd43dd8448eb211c80319c"
NOW = time.time_ns() - 60 * 1_000_000_000


def span(span_id: str = "b7ad6b7169203331", trace: str = TRACE, **kw) -> Span:  # type: ignore[no-untyped-def]
    kw.setdefault("name", "chat gpt-4o")
    kw.setdefault("start_unix_nano", NOW)
    kw.setdefault("end_unix_nano", NOW + 1_500_000_000)
    return Span(trace_id=trace, span_id=span_id, **kw)


def valid(event: dict) -> object:
    settings = Settings(_env_file=None)
    parsed = parse_event(json.dumps(event).encode(), settings)
    assert not isinstance(parsed, InvalidEvent), parsed
    return parsed


def test_genai_span_with_message_events_and_a_retrieval_span_of_its_trace():
    chat = span(
        attributes={
            "gen_ai.system": "openai", "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 7,
            "gen_ai.request.temperature": 0.2, "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.conversation.id": "conv-1",
        },
        events=(
            SpanEvent("gen_ai.system.message", NOW, {"content": "You are a shop assistant."}),
            SpanEvent("gen_ai.user.message", NOW, {"content": "hi"}),
            SpanEvent("gen_ai.assistant.message", NOW, {"content": "hello"}),
            SpanEvent("gen_ai.user.message", NOW, {"content": "where is my order?"}),
            SpanEvent("gen_ai.choice", NOW, {"index": 0, "message": {"content": "On its way."}}),
            SpanEvent("user_feedback", NOW + 10**9, {"feedback.kind": "thumbs_down"}),
        ),
        resource={"service.name": "shop-api"},
    )  # fmt: skip
    retrieval = span(
        "1111111111111111",
        attributes={
            "openinference.span.kind": "RETRIEVER",
            "retrieval.documents.0.document.id": "kb-7",
            "retrieval.documents.0.document.score": 0.8,
            "retrieval.documents.0.document.metadata": '{"title": "Shipping", "url": "https://kb/7"}',
            "retrieval.documents.1.document.content": "Returns take 14 days.",
            "retrieval.documents.1.document.score": 0.5,
        },
    )  # fmt: skip
    result = map_spans([chat, retrieval], app_id="shop")
    assert not result.skipped
    interaction, feedback = (m.event for m in result.events)
    iid = interaction_id(TRACE, "b7ad6b7169203331")
    assert iid == f"otel-{TRACE}-b7ad6b7169203331"
    assert interaction["event_id"] == interaction["interaction_id"] == iid
    assert interaction["query"] == "where is my order?" and interaction["response"] == "On its way."
    assert interaction["session_id"] == "conv-1" and interaction["model"] == "gpt-4o-2024-08-06"
    assert interaction["tokens"] == {"prompt": 42, "completion": 7}
    assert interaction["latency_ms"] == pytest.approx(1500.0)
    prompt = interaction["system_prompt"]
    assert prompt["id"] == "default" and prompt["text"] == "You are a shop assistant."
    assert prompt["version"].startswith("sha256-")
    assert interaction["retrieved_sources"][0] == {
        "source_id": "kb-7", "title": "Shipping", "uri": "https://kb/7", "score": 0.8,
    }  # fmt: skip
    assert interaction["retrieved_sources"][1]["source_id"].startswith("sha256-")
    meta = interaction["metadata"]
    assert meta["gen_ai.system"] == "openai" and meta["service.name"] == "shop-api"
    assert meta["gen_ai.response.finish_reasons"] == '["stop"]'
    assert meta["otel.trace_id"] == TRACE and "gen_ai.usage.input_tokens" not in meta
    assert feedback["kind"] == "thumbs_down" and feedback["interaction_id"] == iid
    assert feedback["event_id"] == f"{iid}-fb5"
    valid(interaction)
    valid(feedback)
    # Same spans, same ids: a re-export is a duplicate.
    again = map_spans([chat, retrieval], app_id="shop")
    assert [m.event["event_id"] for m in again.events] == [iid, f"{iid}-fb5"]


def test_openinference_llm_span_and_prompt_version_given():
    result = map_spans(
        [
            span(
                attributes={
                    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": "Be brief.",
                    "llm.input_messages.1.message.role": "user",
                    "llm.input_messages.1.message.contents.0.message_content.type": "text",
                    "llm.input_messages.1.message.contents.0.message_content.text": "refund?",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "Yes, within 14 days.",
                    "llm.token_count.prompt": 12, "llm.token_count.completion": 5,
                    "llm.prompt_template.version": "v3", "prompt.id": "support",
                    "session.id": "s-9", "user.id": "u-1", "input.value": '{"big": "json"}',
                }
            )
        ],
        app_id="shop",
    )  # fmt: skip
    (event,) = (m.event for m in result.events)
    assert event["query"] == "refund?" and event["response"] == "Yes, within 14 days."
    assert event["system_prompt"] == {"id": "support", "version": "v3", "text": "Be brief."}
    assert event["session_id"] == "s-9" and event["metadata"]["user.id"] == "u-1"
    assert "input.value" not in event["metadata"]
    valid(event)


def test_newest_genai_attributes_and_traceloop_style_attributes():
    newest = span(
        attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Sys."}]),
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "q1"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "a1"}]}]
            ),
        }
    )  # fmt: skip
    traceloop = span(
        "2222222222222222",
        attributes={
            "gen_ai.system": "anthropic", "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "q2", "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "a2",
        },
    )  # fmt: skip
    first, second = (m.event for m in map_spans([newest, traceloop], app_id="shop").events)
    assert (first["query"], first["response"]) == ("q1", "a1")
    assert first["system_prompt"]["text"] == "Sys."
    assert (second["query"], second["response"]) == ("q2", "a2")
    assert "system_prompt" not in second


def test_skips_are_counted_with_reasons():
    spans = [
        span("3333333333333333", name="GET /orders", attributes={"http.method": "GET"}),
        span("4444444444444444", attributes={"gen_ai.operation.name": "embeddings"}),
        span("5555555555555555", attributes={"gen_ai.operation.name": "chat"}),  # no content
        span(
            "6666666666666666",
            attributes={"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "q"},
            resource={"refinery.app_id": "blog"},
        ),
        span(
            "7777777777777777",
            trace="f" * 32,
            attributes={"retrieval.documents.0.document.id": "d"},
        ),
        span("8888888888888888", trace="e" * 32, attributes={"feedback.kind": "thumbs_up"}),
    ]
    result = map_spans(spans, app_id="shop")
    assert not result.events
    assert dict(result.skipped) == {
        "not_chat": 2, "no_content": 1, "foreign_app": 1, "retrieval_without_chat": 1,
        "feedback_without_target": 1,
    }  # fmt: skip


def test_feedback_span_points_at_its_interaction():
    chat = span(attributes={"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "q"})
    by_parent = span(
        "9999999999999999",
        name="feedback",
        parent_span_id="b7ad6b7169203331",
        attributes={"feedback.score": 2, "feedback.scale_max": 5},
    )
    by_ids = span(
        "aaaaaaaaaaaaaaaa",
        trace="d" * 32,
        attributes={
            "feedback.kind": "correction", "feedback.comment": "It ships in 2 days.",
            "feedback.trace_id": TRACE, "feedback.span_id": "b7ad6b7169203331",
        },
    )  # fmt: skip
    events = [m.event for m in map_spans([chat, by_parent, by_ids], app_id="shop").events]
    iid = interaction_id(TRACE, "b7ad6b7169203331")
    rating, correction = events[1], events[2]
    assert (rating["kind"], rating["value"], rating["interaction_id"]) == ("rating", 2.0, iid)
    assert correction["kind"] == "correction" and correction["interaction_id"] == iid
    assert correction["text"] == "It ships in 2 days."
    for event in events:
        valid(event)


def test_metadata_stays_within_limits():
    attributes = {f"custom.attr{i:03d}": "x" * 2000 for i in range(200)}
    attributes |= {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "q"}
    (mapped,) = map_spans([span(attributes=attributes)], app_id="shop", limits=Limits()).events
    meta = mapped.event["metadata"]
    assert len(meta) <= 64 and meta["otel.dropped_attributes"] > 0
    assert all(len(str(v)) <= 500 for v in meta.values())
    valid(mapped.event)


# --- decoding ---------------------------------------------------------------------------------


def _request_json() -> dict:
    return {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": TRACE, "spanId": "b7ad6b7169203331", "name": "chat",
                "startTimeUnixNano": str(NOW), "endTimeUnixNano": str(NOW + 10**9), "kind": 3,
                "attributes": [
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "3"}},
                    {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "t"}]}}},
                ],
                "unknownField": 1,
            }]}],
        }]
    }  # fmt: skip


def test_json_and_protobuf_decode_alike():
    from_json = parse_request(json.dumps(_request_json()).encode(), JSON)
    (decoded,) = spans_of(from_json)
    assert decoded.trace_id == TRACE and decoded.span_id == "b7ad6b7169203331"
    assert decoded.attributes == {"gen_ai.usage.input_tokens": 3, "tags": ["t"]}
    assert decoded.resource == {"service.name": "a"}
    from_protobuf = parse_request(from_json.SerializeToString(), PROTOBUF)
    assert spans_of(from_protobuf) == [decoded]


def test_refusals():
    body = parse_request(json.dumps(_request_json()).encode(), JSON).SerializeToString()
    with pytest.raises(BadRequest) as truncated:
        parse_request(body[: len(body) // 2], PROTOBUF)
    assert truncated.value.status == 400 and "protobuf" in truncated.value.detail
    with pytest.raises(BadRequest) as bad_json:
        parse_request(b'{"resourceSpans": [', JSON)
    assert bad_json.value.status == 400
    with pytest.raises(BadRequest) as bad_id:
        parse_request(json.dumps(_request_json()).replace(TRACE, "zz").encode(), JSON)
    assert bad_id.value.status == 400 and "not hex" in bad_id.value.detail
    with pytest.raises(BadRequest) as wrong_type:
        media_type("text/plain")
    assert wrong_type.value.status == 415 and PROTOBUF in wrong_type.value.detail
    assert media_type("application/json; charset=utf-8") == JSON
    assert inflate(gzip.compress(body), "gzip", 10_000) == body
    assert inflate(zlib.compress(body), "deflate", 10_000) == body
    with pytest.raises(BadRequest) as bomb:
        inflate(gzip.compress(b"\0" * 1_000_000), "gzip", 10_000)
    assert bomb.value.status == 413
    with pytest.raises(BadRequest) as cut:
        inflate(gzip.compress(body)[:-12], "gzip", 10_000)
    assert cut.value.status == 400
    with pytest.raises(BadRequest) as brotli:
        inflate(body, "br", 10_000)
    assert brotli.value.status == 415


def test_an_empty_request_is_no_spans():
    assert spans_of(parse_request(ExportTraceServiceRequest().SerializeToString(), PROTOBUF)) == []
