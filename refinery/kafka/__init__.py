"""Kafka plumbing shared by every role: client settings and the embedded broker."""
