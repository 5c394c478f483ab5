"""Redaction stage: replaces PII in user text (queries, responses, feedback, event metadata)
with typed placeholders before anything is stored, embedded, logged, enqueued or dead-lettered.

Owns the PII detection rules and the canary corpus that measures them. May not touch storage,
Kafka, Celery or logging: it is a pure function of text and settings, called by the stages
that own those.
"""

from refinery.redact.redactor import (
    BUILTIN_KINDS,
    Redactor,
    default_redactor,
    redact_json_strings,
)

__all__ = ["BUILTIN_KINDS", "Redactor", "default_redactor", "redact_json_strings"]
