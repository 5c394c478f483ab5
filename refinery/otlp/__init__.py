"""OpenTelemetry in: OTLP trace exports -> interaction and feedback events.

`decode.py` turns an OTLP/HTTP body (protobuf or JSON, gzip or not) into plain `Span` values, or
a reason to refuse it; `mapping.py` (pure) maps spans that follow the OpenTelemetry GenAI or the
OpenInference conventions to event dicts, and says why each other span was skipped. The HTTP
route is refinery.collector.otlp; the table of attributes is docs/otlp.md. Nothing here touches
Kafka or the database.
"""
