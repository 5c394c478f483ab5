"""Failure signals the system detects itself, from sessions and from time passing:

- rephrase (sessions.analyze_sessions, a Celery task on the signals queue, apart from the embed
  queue so that it never delays embedding): the next query of a session, within
  REPHRASE_WINDOW_S, whose embedding is at least REPHRASE_SIMILARITY_THRESHOLD close to the
  previous one marks the previous interaction;
- abandon (sessions.sweep_abandoned, beat, on the propose queue): a session quiet for
  ABANDON_QUIET_S ended after its last response; with no positive signal on it, that
  interaction is marked;
- orphan feedback (orphans.sweep_orphans, beat, on the propose queue): feedback whose
  interaction never arrived within FEEDBACK_JOIN_WINDOW_S is dead-lettered.

Detected signals are feedback rows with source "system", derived data: re-running a detector
rewrites them from what is stored, so out-of-order turns, redelivery and late arrivals converge
to the same rows. Scoring is refinery.ingest.failure; the tables belong to refinery.ingest.storage.
May not touch Kafka offsets or the ingest loop.
"""
