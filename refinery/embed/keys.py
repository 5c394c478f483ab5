"""The embedding cache key: the text that is embedded (a query normalized) and its hash, under
which the embeddings table keeps its vector (with the model). Ingest stores the hash on each
interaction (interactions.query_hash), so an interaction finds its vector by equality."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """The text that is embedded and hashed: NFKC, case-folded, single-spaced."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def query_hash(text: str) -> str:
    return hashlib.sha256(normalize_query(text).encode("utf-8", "surrogatepass")).hexdigest()
