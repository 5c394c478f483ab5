"""An OTLP/HTTP trace export body -> `Span` values, or `BadRequest` naming what is wrong.

Encodings (OTLP/HTTP spec): `application/x-protobuf` (ExportTraceServiceRequest) and
`application/json` (its proto3 JSON form, with trace and span ids as hex strings, not base64);
`Content-Encoding: gzip` (or deflate, which the Python exporter offers) or none. The size limit
applies to the body as received and again to what it inflates to, so a small gzip bomb is
refused like a large body.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass(frozen=True)
class BadRequest(Exception):
    """The body cannot be read: `status` 400 (malformed), 413 (too large) or 415 (an encoding
    or content type OTLP/HTTP does not define); `detail` says which and why."""

    status: int
    detail: str


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """One span with its resource's attributes. Ids are lowercase hex (32 and 16 digits);
    attribute values are str, int, float, bool, bytes as hex, lists and dicts of those."""

    trace_id: str
    span_id: str
    name: str
    start_unix_nano: int
    end_unix_nano: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    resource: dict[str, Any] = field(default_factory=dict)
    parent_span_id: str | None = None


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; the OTLP encoding it names, or
    BadRequest 415."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        shown = repr(content_type) if content_type else "none"
        raise BadRequest(
            415,
            f"Content-Type {shown[:80]} is not an OTLP/HTTP encoding: send {PROTOBUF} or {JSON}",
        )
    return kind


def inflate(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate or identity), at most `limit`
    bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(
            415, f"Content-Encoding {encoding[:40]!r} is not supported: send gzip or none"
        )
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # a gzip or zlib header
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(400, f"body is not valid {encoding}: {exc}") from exc
    if len(data) > limit:
        raise BadRequest(413, f"body inflates to more than COLLECTOR_MAX_BODY_BYTES={limit} bytes")
    if not inflater.eof:
        raise BadRequest(400, f"{encoding} body is truncated")
    return data


def parse_request(body: bytes, kind: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            # RuntimeError: the C implementation's "recursion limit exceeded".
            raise BadRequest(
                400, f"body is not a valid OTLP ExportTraceServiceRequest (protobuf): {exc}"
            ) from exc
        return request
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not UTF-8 (byte {exc.start})") from exc
    except RecursionError as exc:
        raise BadRequest(400, "body nests too deeply") from exc
    except ValueError as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest(400, "body is not an OTLP ExportTraceServiceRequest (a JSON object)")
    try:
        _hex_ids_to_base64(payload)
        # Receivers must ignore fields they do not know (OTLP spec).
        json_format.ParseDict(payload, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadRequest(
            400, f"body is not a valid OTLP ExportTraceServiceRequest (JSON): {str(exc)[:300]}"
        ) from exc
    return request


_ID_FIELDS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def _hex_ids_to_base64(payload: dict[str, Any]) -> None:
    """OTLP JSON writes ids as hex; proto3 JSON reads bytes as base64: convert in place."""
    for resource_spans in _dicts(payload.get("resourceSpans", payload.get("resource_spans"))):
        for scope_spans in _dicts(
            resource_spans.get("scopeSpans", resource_spans.get("scope_spans"))
        ):
            for span in _dicts(scope_spans.get("spans")):
                for holder in (span, *_dicts(span.get("links"))):
                    for name in _ID_FIELDS:
                        value = holder.get(name)
                        if isinstance(value, str) and value:
                            try:
                                raw = bytes.fromhex(value)
                            except ValueError as exc:
                                raise ValueError(f"{name} {value[:40]!r} is not hex") from exc
                            holder[name] = base64.b64encode(raw).decode()


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        start_unix_nano=span.start_time_unix_nano,
                        end_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes))
                            for e in span.events
                        ),
                        resource=resource,
                    )
                )
    return spans


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    if which is None:
        return None
    return getattr(value, which)


def response_body(rejected: int, message: str, kind: str) -> bytes:
    """ExportTraceServiceResponse in the request's encoding; partial_success only when spans
    were rejected (the spec: leave it unset when all were accepted)."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if kind == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response)).encode()
