"""Redaction of whole events and raw records, with the process's redactor (`default_redactor`,
from the settings) or a given one. Every stage that takes events in (ingest, the collector, OTLP,
the app-side emitter) calls these, so user text is redacted before it is stored, embedded, put on
a Celery message, logged or dead-lettered.

What is redacted on an event: query, response, feedback text, metadata (keys and values), the
titles and URIs of retrieved sources. Identifiers (event, session, interaction ids) that hold PII
are replaced by a pseudonym (`pii-` + sha256 of it), not a placeholder: two different e-mail
addresses used as session ids must stay two sessions. (An unkeyed hash: it hides the value from
readers of the store, not from someone who guesses it and hashes the guess.) The app's system
prompt is the app's own text, not the user's, and is kept as sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any, TypeVar, cast

from refinery.redact.redactor import Redactor, default_redactor, redact_json_strings
from schemas.events import FeedbackEvent, InteractionEvent, RetrievedSource

# Bound, not constrained: a caller holding either kind (a union) gets the same union back.
E = TypeVar("E", bound=InteractionEvent | FeedbackEvent)

_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def redact_text(text: str) -> str:
    """`text` redacted by the process's redactor (settings)."""
    return default_redactor().redact(text)


_PSEUDONYM = re.compile(r"pii-[a-p]{40}")
_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")


def pseudonymize(identifier: str, redactor: Redactor | None = None) -> str:
    """The identifier itself when it holds no PII; else a stable pseudonym of it (same input,
    same pseudonym, so joins on it still work). A pseudonym is letters only, so that no
    redaction rule matches it and redacting twice (collector, then ingest) changes nothing."""
    if _PSEUDONYM.fullmatch(identifier):
        return identifier
    return _pseudonym(redactor or default_redactor(), identifier)


# Identifiers recur (a session's turns, an interaction's feedback, a source in every answer), and
# a full redaction pass costs more than the lookup. A pure function of its arguments.
@lru_cache(maxsize=65_536)
def _pseudonym(redactor: Redactor, identifier: str) -> str:
    if redactor.redact(identifier) == identifier:
        return identifier
    digest = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return "pii-" + digest.translate(_HEX_TO_LETTERS)


def redact_event(event: E) -> E:
    """The event with its user text redacted by the process's redactor (settings)."""
    return redact_event_with(event, default_redactor())


def redact_event_with(event: E, r: Redactor) -> E:
    """The event with its user text redacted by `r`, identifiers holding PII pseudonymized.
    The event itself when nothing changed (most feedback): a copy costs more than the checks."""
    original = event  # `event` is narrowed below; the copy keeps the caller's type
    update: dict[str, Any] = {
        "event_id": pseudonymize(event.event_id, r),
        "interaction_id": pseudonymize(event.interaction_id, r),
    }
    if event.metadata:
        update["metadata"] = redact_json_strings(event.metadata, r)
    if event.session_id is not None:
        update["session_id"] = pseudonymize(event.session_id, r)
    if isinstance(event, InteractionEvent):
        update["query"] = r.redact(event.query)
        update["response"] = r.redact(event.response)
        sources = [_redact_source(s, r) for s in event.retrieved_sources]
        if any(new is not old for new, old in zip(sources, event.retrieved_sources, strict=True)):
            update["retrieved_sources"] = sources
    elif event.text is not None:
        update["text"] = r.redact(event.text)
    changed = {k: v for k, v in update.items() if v != getattr(event, k)}
    return cast(E, original.model_copy(update=changed)) if changed else original


def _redact_source(source: RetrievedSource, r: Redactor) -> RetrievedSource:
    update = {
        "source_id": pseudonymize(source.source_id, r),
        "title": r.redact(source.title) if source.title is not None else None,
        "uri": r.redact(source.uri) if source.uri is not None else None,
    }
    changed = {k: v for k, v in update.items() if v != getattr(source, k)}
    return source.model_copy(update=changed) if changed else source


def redact_bytes(raw: bytes | None) -> bytes | None:
    """Redact a raw record for the dead-letter topic.

    JSON is parsed and every string redacted, so PII written with escapes ("a\\u0040b.com")
    is found too; the result is re-serialized (same data, not the same bytes). What does not
    parse (malformed, invalid UTF-8, too deep) is redacted as text after undoing \\uXXXX escapes,
    and otherwise kept byte for byte.
    """
    if raw is None:
        return None
    try:
        redacted: Any = redact_json_strings(json.loads(raw.decode("utf-8")), default_redactor())
        out = json.dumps(redacted, ensure_ascii=False)
        try:
            return out.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: keep it as the escape it came as
            return json.dumps(redacted).encode("ascii")
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    text = _JSON_ESCAPE.sub(_unescape, raw.decode("utf-8", "surrogateescape"))
    return default_redactor().redact(text).encode("utf-8", "surrogateescape")


def _unescape(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    if 0xD800 <= code <= 0xDFFF or code < 0x20:
        return match.group(0)
    return chr(code)
