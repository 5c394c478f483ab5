"""Spans -> InteractionEvent / FeedbackEvent dicts (JSON-ready), and why each other span was
skipped. Pure: no I/O, no settings object; validation and redaction happen after, exactly as for
`POST /v1/events` (refinery.ingest.validate, refinery.redact.events).

Conventions read (the full table is docs/otlp.md):
- OpenTelemetry GenAI: `gen_ai.operation.name`, `gen_ai.system` / `gen_ai.provider.name`,
  `gen_ai.request.model` / `gen_ai.response.model`, `gen_ai.usage.*_tokens`, the messages as
  `gen_ai.input.messages` / `gen_ai.output.messages` / `gen_ai.system_instructions`, as span
  events (`gen_ai.system.message`, `gen_ai.user.message`, `gen_ai.assistant.message`,
  `gen_ai.choice`, `gen_ai.content.prompt` / `.completion`) or as indexed `gen_ai.prompt.N.*` /
  `gen_ai.completion.N.*` attributes; `gen_ai.conversation.id`.
- OpenInference: `openinference.span.kind`, `llm.input_messages.N.message.role|content`,
  `llm.output_messages.N.message.*`, `llm.model_name`, `llm.token_count.*`,
  `retrieval.documents.N.document.id|score|content|metadata`, `session.id`, `user.id`.

Identity: one chat span is one interaction, with
`interaction_id = event_id = "otel-<trace_id>-<span_id>"` (lowercase hex), so a re-export is
a duplicate ingest drops. The tenant is the caller's key: a span whose `refinery.app_id` (span
or resource attribute) names another app is skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from refinery.otlp.decode import Span, SpanEvent

# Why a span became no event; the metric label and the partial_success message.
SKIP_REASONS = {
    "foreign_app": "refinery.app_id names an app other than the key's",
    "not_chat": "not a chat/completion span (HTTP, embeddings, tools, chains, ...)",
    "no_content": "a chat span without the user's message (enable message content capture in"
    " the instrumentation)",
    "feedback_without_target": "feedback naming no interaction (feedback.span_id or"
    " feedback.interaction_id) and no single chat span in its trace",
    "retrieval_without_chat": "a retrieval span with no chat span of its trace in the export",
}

CHAT_OPERATIONS = {"chat", "text_completion", "completion", "generate_content"}
FEEDBACK_EVENTS = {"user_feedback", "feedback", "refinery.feedback"}
SYSTEM_ROLES = {"system", "developer"}

# Attributes the mapping turns into fields; everything else goes to metadata.
_CONSUMED = {
    "gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model", "llm.model_name",
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens", "gen_ai.usage.total_tokens", "llm.token_count.prompt",
    "llm.token_count.completion", "llm.token_count.total", "gen_ai.prompt", "gen_ai.completion",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "input.value", "output.value", "input.mime_type", "output.mime_type",
    "openinference.span.kind", "session.id", "gen_ai.conversation.id", "refinery.session_id",
    "refinery.app_id", "refinery.interaction_id", "refinery.prompt.id",
    "refinery.prompt.version", "gen_ai.prompt.name", "gen_ai.prompt.version", "prompt.id",
}  # fmt: skip
_CONSUMED_PREFIXES = (
    "llm.input_messages.", "llm.output_messages.", "gen_ai.prompt.", "gen_ai.completion.",
    "retrieval.documents.", "llm.prompt_template.", "feedback.",
)  # fmt: skip
_INDEXED = re.compile(r"^(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Limits:
    """Deployment limits the mapping keeps within (so that a span is not dead-lettered only for
    carrying many attributes or documents)."""

    max_metadata_keys: int = 64
    max_retrieved_sources: int = 20
    default_prompt_name: str = "default"
    metadata_value_chars: int = 500
    metadata_total_chars: int = 8_000


@dataclass(frozen=True)
class MappedEvent:
    event: dict[str, Any]  # an InteractionEvent or FeedbackEvent as JSON (not validated yet)
    span: str  # "<trace_id>/<span_id>", for messages


@dataclass
class Result:
    events: list[MappedEvent] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> spans
    spans: int = 0


def interaction_id(trace_id: str, span_id: str) -> str:
    """The interaction (and event) id of a chat span: what a FeedbackEvent sent as JSON names."""
    return f"otel-{trace_id.lower()}-{span_id.lower()}"


def map_spans(spans: Sequence[Span], *, app_id: str, limits: Limits | None = None) -> Result:
    """Every chat span to an interaction (with the retrieval spans of its trace as sources),
    every feedback event or feedback span to feedback; anything else skipped with a reason."""
    limits = limits or Limits()
    result = Result(spans=len(spans))
    own: list[Span] = []
    for span in spans:
        claimed = span.attributes.get("refinery.app_id", span.resource.get("refinery.app_id"))
        if claimed is not None and str(claimed) != app_id:
            result.skipped["foreign_app"] += 1
        else:
            own.append(span)

    kinds = {id(span): _kind(span) for span in own}
    chats_by_trace: dict[str, list[Span]] = {}
    sources_by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in own:
        if kinds[id(span)] == "chat":
            chats_by_trace.setdefault(span.trace_id, []).append(span)
        elif kinds[id(span)] == "retrieval":
            sources_by_trace.setdefault(span.trace_id, []).extend(_documents(span.attributes))

    for span in own:
        kind = kinds[id(span)]
        ref = f"{span.trace_id}/{span.span_id}"
        if kind == "chat":
            event = _interaction(span, app_id, sources_by_trace.get(span.trace_id, []), limits)
            if event is None:
                result.skipped["no_content"] += 1
                continue
            result.events.append(MappedEvent(event, ref))
            target = (event["interaction_id"], event["session_id"])
            for feedback in _feedback_of(span, app_id, target=target):
                result.events.append(MappedEvent(feedback, ref))
        elif kind == "retrieval":
            if span.trace_id not in chats_by_trace:
                result.skipped["retrieval_without_chat"] += 1
        else:
            feedback_events = list(
                _feedback_of(span, app_id, chats=chats_by_trace.get(span.trace_id, []))
            )
            if feedback_events:
                result.events.extend(MappedEvent(f, ref) for f in feedback_events)
            elif _has_feedback(span):
                result.skipped["feedback_without_target"] += 1
            else:
                result.skipped["not_chat"] += 1
    return result


def skip_message(skipped: Mapping[str, int], extra: Iterable[str] = ()) -> str:
    parts = [f"{n} {reason} ({SKIP_REASONS.get(reason, reason)})" for reason, n in
             sorted(skipped.items()) if n]  # fmt: skip
    return "; ".join([*parts, *extra])


# --- classification ---------------------------------------------------------------------------


def _kind(span: Span) -> str:
    """chat, retrieval or other."""
    attrs = span.attributes
    openinference = str(attrs.get("openinference.span.kind", "")).upper() or None
    if openinference == "RETRIEVER" or any(k.startswith("retrieval.documents.") for k in attrs):
        return "retrieval"
    operation = attrs.get("gen_ai.operation.name")
    if operation is not None:
        return "chat" if str(operation) in CHAT_OPERATIONS else "other"
    if openinference is not None:
        return "chat" if openinference == "LLM" else "other"
    markers = ("gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model", "llm.model_name")
    if any(k in attrs for k in markers) or any(
        k.startswith(("llm.input_messages.", "gen_ai.prompt.")) for k in attrs
    ):
        return "chat"
    return "other"


# --- interactions -----------------------------------------------------------------------------


def _interaction(
    span: Span, app_id: str, sources: list[dict[str, Any]], limits: Limits
) -> dict[str, Any] | None:
    attrs = span.attributes
    inputs, outputs = _messages(span)
    users = [text for role, text in inputs if role == "user" and text.strip()]
    if not users:
        return None
    system = "\n\n".join(text for role, text in inputs if role in SYSTEM_ROLES and text.strip())
    response = next((text for role, text in outputs if role in ("assistant", "model")), None)
    if response is None:
        response = outputs[0][1] if outputs else ""
    iid = _first(attrs, "refinery.interaction_id") or interaction_id(span.trace_id, span.span_id)
    event: dict[str, Any] = {
        "event_type": "interaction",
        "event_id": interaction_id(span.trace_id, span.span_id),
        "schema_version": "1.0",
        "app_id": app_id,
        "occurred_at": _iso(span.start_unix_nano or span.end_unix_nano),
        "session_id": _session(span),
        "interaction_id": _identifier(iid),
        "query": users[-1],
        "response": response,
        "metadata": _metadata(span, limits),
    }
    prompt = _prompt_ref(attrs, system, limits)
    if prompt is not None:
        event["system_prompt"] = prompt
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
    if model is not None:
        event["model"] = str(model)[:200]
    if span.end_unix_nano >= span.start_unix_nano > 0:
        event["latency_ms"] = (span.end_unix_nano - span.start_unix_nano) / 1e6
    prompt_tokens = _int(
        _first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
               "llm.token_count.prompt")
    )  # fmt: skip
    completion_tokens = _int(
        _first(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
               "llm.token_count.completion")
    )  # fmt: skip
    if prompt_tokens is not None or completion_tokens is not None:
        event["tokens"] = {"prompt": prompt_tokens or 0, "completion": completion_tokens or 0}
    if sources:
        event["retrieved_sources"] = _dedupe(sources)[: limits.max_retrieved_sources]
    return event


def _session(span: Span) -> str:
    for attrs in (span.attributes, span.resource):
        found = _first(attrs, "session.id", "gen_ai.conversation.id", "refinery.session_id")
        if found is not None and str(found).strip():
            return _identifier(str(found))
    return f"otel-{span.trace_id}"


def _prompt_ref(attrs: Mapping[str, Any], system: str, limits: Limits) -> dict[str, Any] | None:
    name = _first(attrs, "refinery.prompt.id", "gen_ai.prompt.name", "prompt.id")
    version = _first(
        attrs, "refinery.prompt.version", "llm.prompt_template.version", "gen_ai.prompt.version"
    )
    if not system and (name is None or version is None):
        return None
    if version is None:
        version = (
            "sha256-" + hashlib.sha256(system.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        )
    ref: dict[str, Any] = {
        "id": _identifier(str(name if name is not None else limits.default_prompt_name)),
        "version": _identifier(str(version)),
    }
    if system:
        ref["text"] = system
    return ref


# --- messages ---------------------------------------------------------------------------------

Message = tuple[str, str]  # (role, text)


def _messages(span: Span) -> tuple[list[Message], list[Message]]:
    """(input messages, output messages) of a chat span, from the first convention that has
    them; inputs and outputs are looked up independently."""
    attrs = span.attributes
    details = [e.attributes for e in span.events if e.name.startswith("gen_ai.client.inference")]
    inputs = (
        _semconv_messages(attrs, "gen_ai.input.messages", "gen_ai.system_instructions")
        or _from_details(details, "gen_ai.input.messages", "gen_ai.system_instructions")
        or _indexed_messages(attrs, "llm.input_messages.", "message.")
        or _indexed_messages(attrs, "gen_ai.prompt.", "")
        or _event_messages(span.events, inputs=True)
        or _loose(attrs.get("gen_ai.prompt"), "user")
        or _plain_value(attrs, "input", "user")
    )  # fmt: skip
    outputs = (
        _semconv_messages(attrs, "gen_ai.output.messages", None)
        or _from_details(details, "gen_ai.output.messages", None)
        or _indexed_messages(attrs, "llm.output_messages.", "message.")
        or _indexed_messages(attrs, "gen_ai.completion.", "")
        or _event_messages(span.events, inputs=False)
        or _loose(attrs.get("gen_ai.completion"), "assistant")
        or _plain_value(attrs, "output", "assistant")
    )  # fmt: skip
    return inputs, outputs


def _from_details(
    details: list[dict[str, Any]], key: str, instructions_key: str | None
) -> list[Message]:
    """The same, from a `gen_ai.client.inference.operation.details` event's attributes."""
    for attrs in details:
        found = _semconv_messages(attrs, key, instructions_key)
        if found:
            return found
    return []


def _semconv_messages(
    attrs: Mapping[str, Any], key: str, instructions_key: str | None
) -> list[Message]:
    """GenAI semconv >= 1.37: a list of {role, parts: [{type: text, content}]} (a JSON string,
    or structured where the SDK allows it); system instructions a list of parts."""
    messages: list[Message] = []
    for item in _as_list(_json(attrs.get(key))):
        if isinstance(item, dict):
            text = _text(item.get("parts")) or _text(item.get("content"))
            messages.append((str(item.get("role", "user")).lower(), text or ""))
    if messages and instructions_key is not None:
        text = _text(_json(attrs.get(instructions_key)))
        if text:
            messages.insert(0, ("system", text))
    return messages


def _indexed_messages(attrs: Mapping[str, Any], prefix: str, inner: str) -> list[Message]:
    """`<prefix>N.<inner>role` / `<inner>content` (or OpenInference's
    `message.contents.M.message_content.text`), ordered by N."""
    by_index: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith(prefix):
            match = _INDEXED.match(key[len(prefix) :])
            if match:
                by_index.setdefault(int(match["index"]), {})[match["rest"]] = value
    messages = []
    for _, fields in sorted(by_index.items()):
        role = str(fields.get(f"{inner}role", "user")).lower()
        text = fields.get(f"{inner}content")
        if text is None:
            parts = sorted(
                (int(m["index"]), v)
                for k, v in fields.items()
                if k.startswith(f"{inner}contents.")
                and k.endswith(".message_content.text")
                and (m := _INDEXED.match(k[len(f"{inner}contents.") :]))
            )
            text = "\n".join(str(v) for _, v in parts) if parts else None
        messages.append((role, _text(_json(text)) or ""))
    return messages


_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_messages(events: Sequence[SpanEvent], *, inputs: bool) -> list[Message]:
    messages: list[Message] = []
    for event in events:
        attrs = event.attributes
        if inputs and event.name in _EVENT_ROLES:
            role = str(attrs.get("role", _EVENT_ROLES[event.name])).lower()
            messages.append((role, _text(_json(attrs.get("content"))) or ""))
        elif inputs and event.name == "gen_ai.content.prompt":
            messages.extend(_loose(attrs.get("gen_ai.prompt"), "user"))
        elif not inputs and event.name == "gen_ai.choice":
            message = _json(attrs.get("message"))
            content = message.get("content") if isinstance(message, dict) else None
            messages.append(("assistant", _text(_json(content or attrs.get("content"))) or ""))
        elif not inputs and event.name == "gen_ai.content.completion":
            messages.extend(_loose(attrs.get("gen_ai.completion"), "assistant"))
    return messages


def _loose(value: Any, role: str) -> list[Message]:
    """`gen_ai.prompt` / `gen_ai.completion` as one string: a JSON list of {role, content} or
    plain text."""
    parsed = _json(value)
    if isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed):
        return [
            (str(m.get("role", role)).lower(), _text(m.get("parts")) or _text(m.get("content"))
             or "") for m in parsed
        ]  # fmt: skip
    text = _text(parsed)
    return [(role, text)] if text else []


def _plain_value(attrs: Mapping[str, Any], side: str, role: str) -> list[Message]:
    """OpenInference `input.value` / `output.value` when they are text, not a JSON request."""
    value = attrs.get(f"{side}.value")
    mime = str(attrs.get(f"{side}.mime_type", "text/plain"))
    if isinstance(value, str) and value.strip() and mime != "application/json":
        return [(role, value)]
    return []


def _text(value: Any) -> str | None:
    """Text of a content value: a string, a list of parts ({type: text, content|text}), or a
    message-like dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [t for t in (_text(v) for v in value) if t]
        return "\n".join(texts) if texts else None
    if isinstance(value, dict):
        if value.get("type") not in (None, "text", "input_text", "output_text"):
            return None
        return _text(value.get("content", value.get("text")))
    return str(value)


def _json(value: Any) -> Any:
    """A string that holds a JSON list or object, parsed; anything else as it is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# --- retrieval --------------------------------------------------------------------------------


def _documents(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    prefix = "retrieval.documents."
    by_index: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith(prefix):
            match = _INDEXED.match(key[len(prefix) :])
            if match and match["rest"].startswith("document."):
                by_index.setdefault(int(match["index"]), {})[match["rest"][9:]] = value
    sources = []
    for _, doc in sorted(by_index.items()):
        content = doc.get("content")
        source_id = doc.get("id")
        if source_id is None and content is None:
            continue
        if source_id is None:
            digest = hashlib.sha256(str(content).encode("utf-8", "surrogatepass")).hexdigest()
            source_id = "sha256-" + digest[:16]
        meta = _json(doc.get("metadata"))
        meta = meta if isinstance(meta, dict) else {}
        source: dict[str, Any] = {"source_id": _identifier(str(source_id))}
        title = meta.get("title")
        uri = next(
            (meta[k] for k in ("uri", "url", "source") if isinstance(meta.get(k), str)), None
        )
        if isinstance(title, str):
            source["title"] = title[:1000]
        if uri is not None:
            source["uri"] = uri[:2000]
        score = doc.get("score")
        if isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score):
            source["score"] = float(score)
        sources.append(source)
    return sources


def _dedupe(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for source in sources:
        kept = best.get(source["source_id"])
        if kept is None or source.get("score", -math.inf) > kept.get("score", -math.inf):
            best[source["source_id"]] = source
    return sorted(best.values(), key=lambda s: -s.get("score", -math.inf))


# --- feedback ---------------------------------------------------------------------------------


def _has_feedback(span: Span) -> bool:
    return any(k.startswith("feedback.") for k in span.attributes) or any(
        e.name in FEEDBACK_EVENTS for e in span.events
    )


def _feedback_of(
    span: Span,
    app_id: str,
    *,
    target: tuple[str, str | None] | None = None,
    chats: Sequence[Span] = (),
) -> Iterable[dict[str, Any]]:
    """Feedback from `span`'s feedback events and its own feedback.* attributes, about `target`
    (interaction_id, session_id) when given, else the interaction `_target` finds."""
    found: list[tuple[str, int, Mapping[str, Any]]] = [
        (f"fb{i}", e.time_unix_nano, e.attributes)
        for i, e in enumerate(span.events)
        if e.name in FEEDBACK_EVENTS
    ]
    own = {k: v for k, v in span.attributes.items() if k.startswith("feedback.")}
    if any(k in own for k in ("feedback.kind", "feedback.score", "feedback.value",
                              "feedback.comment", "feedback.text")):  # fmt: skip
        found.append(("fb", span.end_unix_nano or span.start_unix_nano, span.attributes))
    for suffix, when, attrs in found:
        about = target or _target(span, attrs, chats)
        if about is None:
            continue
        iid, session = about
        event: dict[str, Any] = {
            "event_type": "feedback",
            "event_id": f"{interaction_id(span.trace_id, span.span_id)}-{suffix}",
            "schema_version": "1.0",
            "app_id": app_id,
            "interaction_id": iid,
            "occurred_at": _iso(when),
            "metadata": {"otel.trace_id": span.trace_id, "otel.span_id": span.span_id},
        }
        if session is not None:
            event["session_id"] = session
        value = _float(_first(attrs, "feedback.score", "feedback.value"))
        text = _first(attrs, "feedback.comment", "feedback.text")
        kind = _first(attrs, "feedback.kind")
        if kind is None:
            kind = "rating" if value is not None else "comment" if text is not None else None
        event["kind"] = None if kind is None else str(kind).lower()
        if value is not None:
            event["value"] = value
        scale = _float(attrs.get("feedback.scale_max"))
        if scale is not None:
            event["scale_max"] = scale
        if text is not None:
            event["text"] = str(text)
        yield event


def _target(
    span: Span, attrs: Mapping[str, Any], chats: Sequence[Span]
) -> tuple[str, str | None] | None:
    """The interaction a feedback span or event is about: feedback.interaction_id, or
    feedback.span_id (of feedback.trace_id, else the span's trace), or the parent span when it
    is a chat span, or the only chat span of the trace in this export."""
    explicit = _first(attrs, "feedback.interaction_id")
    if explicit is not None:
        return _identifier(str(explicit)), None
    span_id = _first(attrs, "feedback.span_id")
    if span_id is not None:
        trace_id = str(_first(attrs, "feedback.trace_id") or span.trace_id)
        return interaction_id(trace_id, str(span_id)), None
    by_id = {chat.span_id: chat for chat in chats}
    chat = by_id.get(span.parent_span_id or "") or (chats[0] if len(chats) == 1 else None)
    if chat is None:
        return None
    iid = _first(chat.attributes, "refinery.interaction_id")
    iid = _identifier(str(iid)) if iid else interaction_id(chat.trace_id, chat.span_id)
    return iid, _session(chat)


# --- metadata and values ----------------------------------------------------------------------


def _metadata(span: Span, limits: Limits) -> dict[str, Any]:
    """Attributes the mapping did not use (span first, then resource), scalar and bounded:
    lists and maps as JSON, long strings cut; what does not fit is counted, not kept."""
    metadata: dict[str, Any] = {
        "otel.trace_id": span.trace_id,
        "otel.span_id": span.span_id,
        "otel.span_name": span.name[: limits.metadata_value_chars],
    }
    budget = limits.metadata_total_chars - sum(len(str(v)) for v in metadata.values())
    dropped = 0
    room = limits.max_metadata_keys - 1  # one key for the dropped count
    for attrs in (span.attributes, span.resource):
        for key in sorted(attrs):
            if key in metadata or key in _CONSUMED or key.startswith(_CONSUMED_PREFIXES):
                continue
            value = _scalar(attrs[key], limits.metadata_value_chars)
            cost = len(key) + len(str(value))
            if len(metadata) >= room or cost > budget:
                dropped += 1
                continue
            metadata[key[:200]] = value
            budget -= cost
    if dropped:
        metadata["otel.dropped_attributes"] = dropped
    return metadata


def _scalar(value: Any, limit: int) -> str | int | float | bool | None:
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _identifier(value: str) -> str:
    """Ids are at most 128 characters (schemas.events.Identifier): a longer one is replaced by
    a stable hash of it rather than cut, so that two long ids stay two ids."""
    if len(value) <= 128:
        return value
    return "sha256-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _iso(unix_nano: int) -> str:
    seconds, nanos = divmod(int(unix_nano), 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000).isoformat()
