"""The review API and web UI (`refinery api`): the reviewers' queue over HTTP.

Owns HTTP concerns only (auth, roles, validation, rendering); every state change goes through the
review service layer (refinery.review), the same one the CLI uses. May not touch ingest, clustering
or proposing.
"""
