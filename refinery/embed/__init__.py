"""Embedding stage: failing queries -> L2-normalized float32 vectors, cached by normalized text.

Owns the embeddings table. Loads the model lazily, once per process; importing this package
does not import sentence-transformers (it costs seconds), so roles that never embed stay light.
"""

from refinery.settings import Settings

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def embedding_model_name(settings: Settings) -> str:
    """The cache key of the model: vectors of different models never mix."""
    return settings.embedding_model_path or DEFAULT_MODEL_NAME
