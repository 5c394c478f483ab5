"""`POST /v1/events`: one event (a JSON object) or a batch (a JSON list), for one app.

- Authentication: header `X-Refinery-Key`, the app's ingest key from COLLECTOR_KEYS (app_id ->
  key). A key may send events of its own app only (403 otherwise). No key, an unknown key, or a
  collector with no keys configured: 401. Too many unknown keys from one address: 429 with
  Retry-After (refinery.api.ratelimit). A key shorter than COLLECTOR_MIN_KEY_CHARS or with
  fewer than 10 distinct characters: the app refuses to start (WeakCollectorKey).
- Size: a body over COLLECTOR_MAX_BODY_BYTES or a batch over COLLECTOR_MAX_BATCH_EVENTS: 413.
- Validation: each event goes through refinery.ingest.validate, exactly as ingest would see it.
  A body that is not JSON, or any invalid event: 422 naming each invalid event's index, reason
  and (redacted) detail; nothing of that request is accepted, and each invalid event is
  dead-lettered (headers source=collector, principal_app=the key's app; Kafka key the key's
  app) and counted like ingest's dead letters.
- Tenant: an event naming an app other than the key's is refused (403, the whole request)
  before any other validation, so it is neither accepted nor dead-lettered.
- Accepted: every event is redacted, written to the interactions or feedback topic (key
  app/session) and acknowledged by Kafka (acks=all) before 202 {"accepted": n}.
- Kafka unreachable or not acknowledging: 503 with `Retry-After`, within
  COLLECTOR_PRODUCE_TIMEOUT_S (the request's work runs in a thread it stops waiting for at that
  deadline; every Kafka call in it is bounded by the same deadline), never a 500; the client
  retries (event ids make a retry harmless). For RETRY_AFTER_S after a failure, requests get the
  503 at once instead of each holding a thread for the whole timeout, and `/readyz` fails
  (`kafka_ready`), so a load balancer sends producers to a replica that can reach Kafka.
- CORS: browsers from COLLECTOR_CORS_ORIGINS may call it (preflight included); a request with
  any other Origin gets 403.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from refinery.api.ratelimit import COLLECTOR_KEY, client_of, limiter_for
from refinery.emitter.client import event_key
from refinery.ingest.deadletter import DeadLetterQueue
from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.redact.events import redact_event
from refinery.settings import CollectorSettings, Settings, get_settings

log = logging.getLogger(__name__)

KEY_HEADER = "X-Refinery-Key"
# How long after a Kafka failure requests get 503 at once, and what Retry-After says.
RETRY_AFTER_S = 5
_producer_lock = threading.Lock()


class KafkaUnavailable(Exception):
    """Kafka cannot be reached or did not acknowledge in time: 503, the client retries."""


class WeakCollectorKey(ValueError):
    """A key of COLLECTOR_KEYS too short or too plain to stand as an app's only credential."""


def check_collector_keys(settings: CollectorSettings) -> None:
    """Raise WeakCollectorKey naming the app (never the key) whose key has fewer than
    COLLECTOR_MIN_KEY_CHARS characters or fewer than 10 distinct ones."""
    need = settings.collector_min_key_chars
    for app_id, secret in sorted(settings.collector_keys.items()):
        key = secret.get_secret_value()
        if len(key) < need or len(set(key)) < 10:
            raise WeakCollectorKey(
                f"COLLECTOR_KEYS: the key of app {app_id!r} is too weak ({len(key)} characters,"
                f" {len(set(key))} distinct; at least {need} and 10 are needed). Make one with"
                " `openssl rand -hex 24`."
            )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Refuse to start rather than serve with a guessable key.
    check_collector_keys(getattr(app.state, "settings", None) or get_settings())
    yield
    producer = getattr(app.state, "collector_producer", None)
    if producer is not None:
        try:
            await run_in_threadpool(producer.close, 10)
        except Exception:  # Kafka gone at shutdown: what was not acknowledged got a 503
            log.warning("collector: producer did not close cleanly", exc_info=True)


router = APIRouter(tags=["collector"], lifespan=_lifespan)


def _settings(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def producer_for(request: Request, deadline: float | None = None) -> Any:
    """The app's Kafka producer, made on first use (acks=all, idempotent); tests may set
    `app.state.collector_producer` to their own. Raises KafkaUnavailable when it cannot be made
    by `deadline` (no broker answers): it is made again on a later request."""
    state = request.app.state
    producer = getattr(state, "collector_producer", None)
    if producer is not None:
        return producer
    settings = _settings(request)
    if deadline is None:
        deadline = time.monotonic() + settings.collector_produce_timeout_s
    if not _producer_lock.acquire(timeout=_remaining(deadline)):
        raise KafkaUnavailable("another request is still connecting to Kafka")
    try:
        producer = getattr(state, "collector_producer", None)
        if producer is None:
            from kafka import KafkaProducer

            from refinery.kafka.clients import make_producer

            timeout_ms = int(settings.collector_produce_timeout_s * 1000)
            clients: list[Any] = []

            def client(**config: Any) -> Any:
                made = KafkaProducer.DEFAULT_CONFIG["kafka_client"](**config)
                clients.append(made)
                return made

            try:
                producer = make_producer(
                    settings,
                    # The defaults wait 30 s for a first broker and 60 s for metadata.
                    bootstrap_timeout_ms=max(int(_remaining(deadline) * 1000), 1),
                    max_block_ms=timeout_ms,
                    # Back within a second or so of the broker returning, not up to 30 s.
                    reconnect_backoff_max_ms=1000,
                    kafka_client=client,
                )
            except Exception as exc:  # NoBrokersAvailable, DNS, TLS: Kafka is not there
                # kafka-python does not close the client of a producer it failed to make: each
                # attempt during an outage would leak its sockets.
                for made in clients:
                    _close_quietly(made.close)
                raise KafkaUnavailable(f"no Kafka broker answered: {type(exc).__name__}") from exc
            state.collector_producer = producer
        return producer
    finally:
        _producer_lock.release()


def _kafka_failed(request: Request, producer: Any = None) -> None:
    """Answer 503 at once for RETRY_AFTER_S; and replace `producer`, which failed: a producer
    can be left in a fatal state (an idempotent producer whose id the broker lost on restart
    refuses every later send), and a fresh one costs one connection."""
    state = request.app.state
    state.collector_kafka_down_until = time.monotonic() + RETRY_AFTER_S
    held: Any = getattr(state, "collector_producer", None)
    if producer is None or held is not producer:
        return
    state.collector_producer = None
    close_now = partial(held.close, 0)  # drops what it holds: those requests got 503
    threading.Thread(target=_close_quietly, args=(close_now,), daemon=True).start()


def _close_quietly(close: Any) -> None:
    """Close a failed producer or Kafka client."""
    try:
        close()
    except Exception:  # it failed already; closing is only to free its sockets
        log.debug("collector: closing a failed Kafka client", exc_info=True)


def _kafka_down(app: Any) -> bool:
    return time.monotonic() < getattr(app.state, "collector_kafka_down_until", 0.0)


def kafka_ready(app: Any, timeout_s: float = 1.0) -> bool:
    """Readiness of the collector: no Kafka failure in the last RETRY_AFTER_S and a bootstrap
    server accepts a TCP connection. Only a probe: a broker that accepts connections but does not
    acknowledge shows up as the failures of real requests."""
    if _kafka_down(app):
        return False
    servers = (_settings_of(app).kafka_bootstrap_servers or "").split(",")
    for server in filter(None, (s.strip() for s in servers)):
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def _settings_of(app: Any) -> Settings:
    return getattr(app.state, "settings", None) or get_settings()


def _unavailable(detail: str) -> tuple[int, dict[str, Any]]:
    return 503, {"detail": f"{detail}; retry after {RETRY_AFTER_S} s"}


def _cors_headers(settings: CollectorSettings, origin: str | None) -> dict[str, str] | None:
    """CORS headers for an allowed origin; {} without an Origin; None for a refused origin."""
    if origin is None:
        return {}
    allowed = settings.collector_cors_origins
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return None


def _reply(status: int, body: dict[str, Any], cors: dict[str, str] | None) -> JSONResponse:
    headers = dict(cors or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def authenticate(request: Request, settings: Settings) -> str | Refusal:
    """The app of the request's ingest key, or why not: every collector route (/v1/events,
    /v1/traces) asks here, so the tenant and the failed-key limit are one rule."""
    key = request.headers.get(KEY_HEADER)
    if not key:
        return Refusal(401, f"the {KEY_HEADER} header is missing")
    limiter, client = limiter_for(request.app, settings), client_of(request)
    retry_after = limiter.retry_after(COLLECTOR_KEY, client)
    if retry_after is not None:
        detail = f"too many unknown {KEY_HEADER}s from this address; retry after {retry_after} s"
        return Refusal(429, detail, {"Retry-After": str(retry_after)})
    key_app = _app_of_key(settings, key)
    if key_app is None:
        limiter.failed(COLLECTOR_KEY, client)
        return Refusal(401, f"unknown {KEY_HEADER}")
    return key_app


def _app_of_key(settings: CollectorSettings, key: str) -> str | None:
    found = None
    for app_id, secret in sorted(settings.collector_keys.items()):
        # Compare with every key, always: the time taken says nothing about which one matched.
        if hmac.compare_digest(secret.get_secret_value().encode(), key.encode()):
            found = app_id
    return found


@router.options("/v1/events", include_in_schema=False)
def preflight(request: Request) -> Response:
    cors = _cors_headers(_settings(request), request.headers.get("origin"))
    if not cors:
        return JSONResponse(
            {"detail": "origin not allowed (COLLECTOR_CORS_ORIGINS)"}, status_code=403
        )
    return Response(
        status_code=204,
        headers={
            **cors,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": f"Content-Type, {KEY_HEADER}",
            "Access-Control-Max-Age": "600",
        },
    )


@router.post(
    "/v1/events",
    status_code=202,
    summary="Send interaction and feedback events (one object, or a list)",
    description="The body is one event or a JSON list of events, each as described by the JSON"
    " Schemas in schemas/json/ (interaction or feedback; `event_type` or the presence of `kind`"
    f" tells them apart). Authenticate with the app's ingest key in `{KEY_HEADER}`.",
    responses={
        202: {"description": "All events accepted and acknowledged by Kafka."},
        401: {"description": f"{KEY_HEADER} missing or unknown."},
        403: {"description": "The key's app is not the events' app, or the Origin is not allowed."},
        413: {"description": "Body or batch too large."},
        422: {"description": "Not JSON, or invalid events (index, reason, detail each)."},
        503: {
            "description": "Kafka unreachable or not acknowledging in time; retry after"
            " the `Retry-After` seconds."
        },
    },
)
async def collect(request: Request) -> JSONResponse:
    settings = _settings(request)
    cors = _cors_headers(settings, request.headers.get("origin"))
    if cors is None:
        return _reply(403, {"detail": "origin not allowed (COLLECTOR_CORS_ORIGINS)"}, None)
    if not settings.collector_keys:
        return _reply(
            401, {"detail": "the collector has no ingest keys (COLLECTOR_KEYS is empty)"}, cors
        )
    key_app = authenticate(request, settings)
    if isinstance(key_app, Refusal):
        return JSONResponse(
            {"detail": key_app.detail},
            status_code=key_app.status,
            headers={**(cors or {}), **key_app.headers},
        )

    limit = settings.collector_max_body_bytes
    too_large = {"detail": f"request body larger than COLLECTOR_MAX_BODY_BYTES={limit} bytes"}
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _reply(413, too_large, cors)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return _reply(413, too_large, cors)

    if _kafka_down(request.app):
        return _reply(*_unavailable("Kafka is unreachable"), cors)
    timeout = settings.collector_produce_timeout_s
    deadline = time.monotonic() + timeout
    work = partial(_accept, request, settings, key_app, bytes(body), deadline)
    try:
        with anyio.fail_after(timeout):
            # abandon_on_cancel: at the deadline the reply goes out; the thread ends on its own
            # within its Kafka calls' bounds (a late produce is harmless: event ids dedupe).
            status, reply = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("collector: no answer from Kafka within %.1f s", timeout)
        _kafka_failed(request)
        status, reply = _unavailable("Kafka did not answer in time")
    return _reply(status, reply, cors)


def _accept(
    request: Request, settings: Settings, key_app: str, body: bytes, deadline: float
) -> tuple[int, dict[str, Any]]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return 422, {"detail": f"body is not UTF-8 (byte {exc.start})", "reason": "invalid_utf8"}
    except RecursionError:
        return 422, {"detail": "body nests too deeply", "reason": "too_deep"}
    except ValueError as exc:
        return 422, {"detail": f"body is not JSON: {exc}", "reason": "malformed_json"}
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        return 422, {"detail": "an empty batch: send an event object or a non-empty list"}
    if len(items) > settings.collector_max_batch_events:
        return 413, {
            "detail": f"{len(items)} events, more than COLLECTOR_MAX_BATCH_EVENTS="
            f"{settings.collector_max_batch_events}"
        }

    # The tenant is the key's app, checked before anything else is validated or dead-lettered:
    # an event claiming another app is refused whole, valid or not, so it can never reach the
    # dead-letter topic (whence `refinery dlq replay` would store it as the other app's).
    for index, item in enumerate(items):
        if isinstance(item, dict) and "app_id" in item and item["app_id"] != key_app:
            return 403, {
                "detail": f"event {index} is for app {_shown(item['app_id'])}; this key sends"
                f" for {key_app!r} only"
            }

    events, invalid = [], []
    for index, item in enumerate(items):
        raw = _encode(item)
        event = parse_event(raw, settings)
        if isinstance(event, InvalidEvent):
            invalid.append((index, raw, item, event))
        else:
            events.append(redact_event(event))
    try:
        producer = producer_for(request, deadline)
    except KafkaUnavailable as exc:
        log.warning("collector: %s", exc)
        _kafka_failed(request)
        if not invalid:
            return _unavailable("Kafka is unreachable")
        producer = None  # the 422 stands; its dead letters cannot be written
    if invalid:
        if producer is not None:
            _dead_letter(request, producer, settings, key_app, invalid, deadline)
        return 422, {
            "detail": f"{len(invalid)} of {len(items)} events are invalid; none was accepted",
            "errors": [
                {"index": index, "reason": event.reason, "detail": event.detail}
                for index, _, _, event in invalid
            ],
        }
    topics = {"interaction": settings.topic_interactions, "feedback": settings.topic_feedback}
    try:
        futures = [
            producer.send(
                topics[e.event_type], key=event_key(e), value=e.model_dump_json().encode("utf-8")
            )
            for e in events
        ]
        for future in futures:
            future.get(timeout=_remaining(deadline))
    except Exception as exc:  # a Kafka error or timeout: the client retries
        log.warning(
            "collector: Kafka did not acknowledge %d event(s): %s", len(events), type(exc).__name__
        )
        _kafka_failed(request, producer)
        return _unavailable("Kafka did not acknowledge the events in time")
    return 202, {"accepted": len(events)}


def _encode(item: Any) -> bytes:
    """One event as the bytes ingest would read (lone surrogates stay escapes, so that
    validation names them)."""
    try:
        return json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(item).encode("utf-8")


def _shown(value: Any) -> str:
    """A client's value in a reply, bounded (the reply must not echo a large body back)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dead_letter(
    request: Request,
    producer: Any,
    settings: Settings,
    key_app: str,
    invalid: list[tuple[int, bytes, Any, InvalidEvent]],
    deadline: float,
) -> None:
    """Dead-letter the invalid events under the key's app (Kafka key and header `principal_app`),
    never under the app the body names: `refinery dlq replay` checks the two still agree."""
    dead_letters = DeadLetterQueue(
        producer, settings.topic_dead_letter, max_value_bytes=settings.dead_letter_max_value_bytes
    )
    for _, raw, item, event in invalid:
        is_feedback = isinstance(item, dict) and (
            item.get("event_type") == "feedback" or "kind" in item
        )
        dead_letters.send_raw(
            raw,
            event,
            key=key_app.encode(),
            source_topic=settings.topic_feedback if is_feedback else settings.topic_interactions,
            source="collector",
            principal_app=key_app,
        )
    try:
        # A little before the deadline, so that the 422 (not a 503) goes out.
        dead_letters.flush(timeout_s=max(_remaining(deadline) - 0.5, 0.1))
    except Exception:  # the 422 stands; the dead letters are a copy for operators
        log.warning("collector: dead letters not acknowledged", exc_info=True)
        _kafka_failed(request, producer)
