"""HTTP event collector: `POST /v1/events` for apps and browser widgets that cannot speak Kafka.

Owns the router (refinery.collector.router), mounted by the API app (refinery.api.app). Validates
with refinery.ingest.validate, redacts with refinery.redact.events and writes to the same
topics as the Kafka producers; it never touches the database: ingest stores what it wrote.
"""
