"""Benchmark of PII redaction: throughput and recall on the canary corpus.

    python bench/bench_redaction.py [--queries 20000] [--seed 7] [--repeat 3]

Generates `--queries` synthetic support queries with planted PII (tests/canary.py) and
redacts them one by one with the default redactor, best of `--repeat` runs. Prints:
  throughput   MB/s (UTF-8 bytes in) and queries/s, on the corpus as generated (every query
               holds PII: two rounds each) and on its redacted form (no PII left: one round,
               the common case for real traffic), plus one 1,000,000-character document
  per kind     recall (planted values no longer present / planted), false positives per
               10,000 negatives (a negative of the corpus: order numbers, versions, dates,
               prices, times, invalid SSNs, tool names, capitalised phrases... changed by a
               placeholder of that kind), and spurious placeholders of that kind per 10,000
               queries already redacted (the expected texts, no PII left)
  precision    negatives kept, and the share of queries redacted to exactly the expected text
  real queries placeholders per kind per 10,000 public intent-set queries (CLINC150, HWU64,
               SNIPS test splits, as bench/datasets.py caches them in var/datasets/, if built):
               real user requests with no PII in them, so every placeholder is a false positive
Single-threaded; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinery.redact import Redactor  # noqa: E402
from tests.canary import CORPUS_KINDS, generate_canary_corpus  # noqa: E402


def _utf8_len(texts: list[str]) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


def _best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _throughput(label: str, texts: list[str], redact: Callable[[str], str], repeat: int) -> None:
    seconds = _best_of(repeat, lambda: [redact(t) for t in texts])
    mb = _utf8_len(texts) / 1e6
    print(
        f"  {label:<28} {mb / seconds:8.2f} MB/s  {len(texts) / seconds:10,.0f} texts/s"
        f"  ({len(texts):,} texts, {mb:.2f} MB, {seconds:.3f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    redactor = Redactor()
    started = time.perf_counter()
    corpus = generate_canary_corpus(args.queries, args.seed)
    print(f"corpus: {len(corpus):,} queries generated in {time.perf_counter() - started:.2f} s")

    texts = [case.text for case in corpus]
    clean = [case.expected for case in corpus]
    document = " ".join(texts)
    document = (document * (1_000_000 // len(document) + 1))[:1_000_000]

    print("throughput (single thread):")
    _throughput("queries with PII", texts, redactor.redact, args.repeat)
    _throughput("same queries, redacted", clean, redactor.redact, args.repeat)
    _throughput("one 1,000,000-char document", [document], redactor.redact, args.repeat)

    planted: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    negative_hits: Counter[str] = Counter()
    spurious: Counter[str] = Counter()
    negatives = kept = exact = 0
    for case in corpus:
        out = redactor.redact(case.text)
        exact += out == case.expected
        for canary in case.canaries:
            planted[canary.kind] += 1
            removed[canary.kind] += canary.value not in out
        negatives += len(case.negatives)
        kept += sum(n in out for n in case.negatives)
        for negative in case.negatives:
            negative_hits.update(redactor.redact_with_counts(negative)[1])
        spurious.update(redactor.redact_with_counts(case.expected)[1])

    print(
        f"per kind ({negatives:,} negatives, {len(corpus):,} redacted queries;"
        " FP = false positives per 10,000):"
    )
    print(f"  {'kind':<8} {'recall':>7} {'removed / planted':>19} {'FP/10k neg':>11}"
          f" {'FP/10k clean':>13}")  # fmt: skip
    for kind in CORPUS_KINDS:
        share = removed[kind] / planted[kind]
        per_negative = 10_000 * negative_hits[kind] / max(negatives, 1)
        per_clean = 10_000 * spurious[kind] / len(corpus)
        print(
            f"  {kind:<8} {share:7.4f} {f'{removed[kind]:,} / {planted[kind]:,}':>19}"
            f" {per_negative:11.1f} {per_clean:13.1f}"
        )
    print("precision:")
    print(f"  negatives kept       {kept:,} / {negatives:,}")
    share = exact / len(corpus)
    print(f"  exactly as expected  {share:.4f}  ({exact:,} / {len(corpus):,} queries)")

    real: list[str] = []
    for path in sorted((ROOT / "var" / "datasets").glob("*-test.json")):
        real += [text for text, _ in json.loads(path.read_text(encoding="utf-8"))]
    if real:
        hits: Counter[str] = Counter()
        for text in real:
            hits.update(redactor.redact_with_counts(text)[1])
        per_kind = ", ".join(f"{k} {10_000 * hits[k] / len(real):.1f}" for k in CORPUS_KINDS)
        print(f"real queries ({len(real):,}, var/datasets): placeholders per 10,000: {per_kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
