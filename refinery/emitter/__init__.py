"""Producer client for LLM apps written in Python: `Emitter` sends interaction and feedback events
to the refinery topics without ever blocking the app's request path.

Owns nothing on the refinery side; depends only on the event schemas, kafka-python and the
redactor (PII is redacted in the app's process before an event leaves it, when enabled).
Apps in other languages use the JSON Schemas in schemas/json/ with their own Kafka client, or
POST /v1/events (refinery.collector).
"""

from refinery.emitter.client import Emitter, EmitterStats, event_key

__all__ = ["Emitter", "EmitterStats", "event_key"]
