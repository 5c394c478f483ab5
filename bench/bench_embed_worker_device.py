"""Embedding throughput in the worker path on a given torch device (EMBEDDING_DEVICE): the
figures behind docs/scaling.md's GPU worker sizing. Prints, asserts nothing.

For each batch size: a fresh SQLite database of failing interactions, then
refinery.embed.service.embed_interactions (cache lookup, encode, store) over tasks of
`batch` ids, as an embed task with ENQUEUE_BATCH_SIZE = EMBEDDING_BATCH_SIZE = batch runs it;
against bare SentenceTransformer.encode of the same texts with the same model object.

Run: python bench/bench_embed_worker_device.py --device cuda [--queries FILE.json] [--n N]
(FILE.json: a JSON list of strings; default: synthetic queries). EMBEDDING_MODEL_PATH picks the
model; --fp32 casts a model stored in fp16 back to fp32 after loading.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _queries(path: str | None, n: int) -> list[str]:
    if path:
        texts = list(dict.fromkeys(json.loads(Path(path).read_text())))
    else:
        texts = [
            f"synthetic query {i} about order {i * 7919 % 10007} and shipping" for i in range(n)
        ]
    while len(texts) < n:  # distinct texts only: a repeated one would be a cache hit
        texts += [f"{t} ({len(texts)})" for t in texts[: n - len(texts)]]
    return texts[:n]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", default=None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--fp32", action="store_true", help="cast the loaded model to fp32")
    args = parser.parse_args()

    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import sessionmaker

    from refinery.embed.embedder import SentenceTransformerEmbedder
    from refinery.embed.service import embed_interactions
    from refinery.ingest.storage import query_hash
    from refinery.store.models import Base, Interaction

    texts = _queries(args.queries, args.n)
    print(f"{len(texts)} distinct queries, device {args.device}", flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        embedder = SentenceTransformerEmbedder(
            os.environ.get("EMBEDDING_MODEL_PATH"),
            name="bench",
            batch_size=batch,
            device=args.device,
        )
        model = embedder._load()
        if args.fp32:
            model.float()
        dtype = next(model.parameters()).dtype
        embedder.embed(texts[: batch * 2])  # warm-up
        _sync(args.device)
        started = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        _sync(args.device)
        bare_s = time.perf_counter() - started

        with tempfile.TemporaryDirectory() as tmp:
            engine = create_engine(f"sqlite:///{tmp}/embed.db")
            Base.metadata.create_all(engine)
            sessions = sessionmaker(engine, expire_on_commit=False)
            with sessions.begin() as session:
                session.add_all(
                    Interaction(
                        event_id=f"e{i}", app_id="bench", interaction_id=f"i{i}", session_id="s",
                        occurred_at=datetime.now(UTC), query=q, response="", sources=[],
                        metadata_={}, query_hash=query_hash(q), failing=True,
                        failure_reasons=["thumbs_down"],
                    )
                    for i, q in enumerate(texts)
                )  # fmt: skip
            with sessions() as session:
                ids = list(session.scalars(select(Interaction.id).order_by(Interaction.id)))
            started = time.perf_counter()
            for start in range(0, len(ids), batch):
                with sessions.begin() as session:
                    embed_interactions(session, ids[start : start + batch], embedder)
            _sync(args.device)
            worker_s = time.perf_counter() - started
            engine.dispose()
        bare, worker = len(texts) / bare_s, len(texts) / worker_s
        overhead_us = (worker_s - bare_s) / len(texts) * 1e6
        print(
            f"batch {batch:>4} ({dtype}): bare encode {bare:,.0f} q/s | worker path "
            f"{worker:,.0f} q/s ({worker / bare:.2f}) | {overhead_us:.1f} us/text besides encode",
            flush=True,
        )
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = f"peak host RSS {rss_mib:,.0f} MiB"
    if args.device.startswith("cuda"):
        import torch

        line += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
        line += f" ({torch.cuda.get_device_name(0)})"
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
