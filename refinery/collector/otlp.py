"""`POST /v1/traces`: an OTLP/HTTP trace receiver. Spans of LLM calls become interaction and
feedback events on the topics `POST /v1/events` writes to, so ingest sees nothing new.

- Authentication and tenant: the app's ingest key in `X-Refinery-Key` (an exporter's
  `OTEL_EXPORTER_OTLP_HEADERS=X-Refinery-Key=...`), as for /v1/events: 401 without a known key.
  The events are the key's app's; a span whose `refinery.app_id` names another app is skipped
  and counted, never accepted under either app.
- Encodings: `application/x-protobuf` or `application/json` (else 415), `Content-Encoding: gzip`
  or none (else 415). A body over COLLECTOR_MAX_BODY_BYTES, as sent or inflated: 413. A body
  that is not an ExportTraceServiceRequest (truncated protobuf, bad JSON): 400. Errors are JSON
  `{"detail": ...}`; nothing of a refused request is produced.
- Mapping: refinery.otlp.mapping (docs/otlp.md). Each event is validated and redacted as
  /v1/events does; one that fails validation is dead-lettered (source=collector, the key's app)
  and its span counted as rejected: the rest of the export is still accepted (OTLP partial
  success), since re-sending a span cannot make it valid.
- 200 with an ExportTraceServiceResponse in the request's encoding once Kafka acknowledged every
  event; `partial_success.rejected_spans` counts spans that became no event (skipped or
  dead-lettered) and `error_message` says why. Kafka down or slow: 503 with Retry-After, like
  /v1/events (exporters retry; event ids derived from trace and span ids make that harmless).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from refinery.collector.router import (
    KEY_HEADER,
    RETRY_AFTER_S,
    KafkaUnavailable,
    Refusal,
    _dead_letter,
    _kafka_down,
    _kafka_failed,
    _remaining,
    _settings,
    _unavailable,
    authenticate,
    producer_for,
)
from refinery.emitter.client import event_key
from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.ops.metrics import OTLP_SPANS
from refinery.otlp.decode import (
    BadRequest,
    Span,
    inflate,
    media_type,
    parse_request,
    response_body,
    spans_of,
)
from refinery.otlp.mapping import Limits, map_spans, skip_message
from refinery.redact.events import redact_event
from refinery.settings import Settings
from schemas.events import FeedbackEvent, InteractionEvent

log = logging.getLogger(__name__)

router = APIRouter(tags=["collector"])


def _error(status: int, detail: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


@router.post(
    "/v1/traces",
    summary="Receive OpenTelemetry traces (OTLP/HTTP) of LLM calls",
    description="An OTLP/HTTP ExportTraceServiceRequest, protobuf or JSON, gzip or not. Chat"
    " spans (OpenTelemetry GenAI or OpenInference conventions) become interactions, retrieval"
    " spans their sources, feedback events or attributes feedback; see docs/otlp.md."
    f" Authenticate with the app's ingest key in `{KEY_HEADER}`.",
    responses={
        200: {"description": "ExportTraceServiceResponse; partial_success counts skipped spans."},
        400: {"description": "Not an ExportTraceServiceRequest (truncated, malformed)."},
        401: {"description": f"{KEY_HEADER} missing or unknown."},
        413: {"description": "Body larger than COLLECTOR_MAX_BODY_BYTES, sent or inflated."},
        415: {"description": "Content-Type or Content-Encoding OTLP/HTTP does not define."},
        503: {"description": "Kafka unreachable or not acknowledging; retry after Retry-After."},
    },
)
async def receive_traces(request: Request) -> Response:
    settings = _settings(request)
    if not settings.collector_keys:
        return _error(401, "the collector has no ingest keys (COLLECTOR_KEYS is empty)")
    key_app = authenticate(request, settings)
    if isinstance(key_app, Refusal):
        refused = _error(key_app.status, key_app.detail)
        refused.headers.update(key_app.headers)
        return refused

    limit = settings.collector_max_body_bytes
    too_large = f"request body larger than COLLECTOR_MAX_BODY_BYTES={limit} bytes"
    try:
        kind = media_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, too_large)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, too_large)
        data = inflate(bytes(body), request.headers.get("content-encoding"), limit)
        spans = spans_of(parse_request(data, kind))
    except BadRequest as refused:
        return _error(refused.status, refused.detail)

    if _kafka_down(request.app):
        return _error(*_detail(_unavailable("Kafka is unreachable")))
    timeout = settings.collector_produce_timeout_s
    deadline = time.monotonic() + timeout
    work = partial(_export, request, settings, key_app, spans, deadline)
    try:
        with anyio.fail_after(timeout):
            # As in /v1/events: at the deadline the 503 goes out; the thread ends on its own.
            outcome = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("collector: no answer from Kafka within %.1f s (OTLP)", timeout)
        _kafka_failed(request)
        outcome = _unavailable("Kafka did not answer in time")
    if isinstance(outcome[1], dict):
        return _error(*_detail(outcome))
    rejected, message = outcome
    return Response(response_body(rejected, message, kind), status_code=200, media_type=kind)


def _detail(reply: tuple[int, dict[str, Any]]) -> tuple[int, str]:
    return reply[0], str(reply[1]["detail"])


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_metadata_keys=settings.max_metadata_keys,
        max_retrieved_sources=settings.max_retrieved_sources,
        default_prompt_name=settings.default_prompt_name,
    )


def _export(
    request: Request, settings: Settings, key_app: str, spans: list[Span], deadline: float
) -> tuple[int, dict[str, Any]] | tuple[int, str]:
    """Map, validate, redact, produce. (rejected spans, message) once Kafka acknowledged every
    event; (503, {"detail"}) when it did not."""
    result = map_spans(spans, app_id=key_app, limits=limits_of(settings))
    events: list[InteractionEvent | FeedbackEvent] = []
    invalid: list[tuple[int, bytes, Any, InvalidEvent]] = []
    invalid_spans: set[str] = set()
    for index, mapped in enumerate(result.events):
        raw = _encode(mapped.event)
        event = parse_event(raw, settings)
        if isinstance(event, InvalidEvent):
            invalid.append((index, raw, mapped.event, event))
            invalid_spans.add(mapped.span)
        elif isinstance(event, InteractionEvent):  # (two calls: redact_event is generic)
            events.append(redact_event(event))
        else:
            events.append(redact_event(event))

    if events or invalid:
        try:
            producer = producer_for(request, deadline)
        except KafkaUnavailable as exc:
            log.warning("collector: %s", exc)
            _kafka_failed(request)
            return _unavailable("Kafka is unreachable")
        if invalid:
            _dead_letter(request, producer, settings, key_app, invalid, deadline)
        topics = {"interaction": settings.topic_interactions, "feedback": settings.topic_feedback}
        try:
            futures = [
                producer.send(
                    topics[e.event_type],
                    key=event_key(e),
                    value=e.model_dump_json().encode("utf-8"),
                )
                for e in events
            ]
            for future in futures:
                future.get(timeout=_remaining(deadline))
        except Exception as exc:  # a Kafka error or timeout: the exporter retries
            log.warning(
                "collector: Kafka did not acknowledge %d OTLP event(s): %s",
                len(events),
                type(exc).__name__,
            )
            _kafka_failed(request, producer)
            return _unavailable("Kafka did not acknowledge the events in time")

    skipped = sum(result.skipped.values())
    outcomes = Counter(result.skipped)
    outcomes["invalid"] = len(invalid_spans)
    outcomes["accepted"] = len(spans) - skipped - len(invalid_spans)
    for outcome, count in outcomes.items():
        if count:
            OTLP_SPANS.labels(outcome=outcome).inc(count)
    extra = []
    if invalid:
        reasons = Counter(event.reason for _, _, _, event in invalid)
        listed = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        extra.append(
            f"{len(invalid_spans)} invalid (events dead-lettered: {listed};"
            f" first: {invalid[0][3].detail[:200]})"
        )
    rejected = skipped + len(invalid_spans)
    message = skip_message(result.skipped, extra)
    return rejected, (f"{rejected} of {len(spans)} spans rejected: {message}" if rejected else "")


def _encode(item: dict[str, Any]) -> bytes:
    try:
        return json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates stay escapes, so that validation names them
        return json.dumps(item).encode("utf-8")
