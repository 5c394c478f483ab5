"""Embedding stage: failing queries -> L2-normalized float32 vectors, cached by normalized text.

Owns the embeddings table. Loads the model lazily, once per process; importing this package
does not import sentence-transformers (it costs seconds), so roles that never embed stay light.
"""

from refinery.settings import EmbedSettings

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def embedding_model_name(settings: EmbedSettings) -> str:
    """The cache key of the model: vectors of different models never mix, nor int8 vectors with
    fp32 ones of the same model (EMBEDDING_INT8 adds "+int8")."""
    name = settings.embedding_model_path or DEFAULT_MODEL_NAME
    return f"{name}+int8" if settings.embedding_int8 else name
