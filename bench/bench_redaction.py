"""Benchmark of PII redaction: throughput and recall on the canary corpus.

    python bench/bench_redaction.py [--queries 20000] [--seed 7] [--repeat 3]

Generates `--queries` synthetic support queries with planted PII (refinery.redact.canary) and
redacts them one by one with the default redactor, best of `--repeat` runs. Prints:
  throughput   MB/s (UTF-8 bytes in) and queries/s, on the corpus as generated (every query
               holds PII: two rounds each) and on its redacted form (no PII left: one round,
               the common case for real traffic), plus one 1,000,000-character document
  recall       per kind: planted values no longer present / planted
  precision    negatives (order numbers, versions, dates, prices, times) kept, and the share of
               queries redacted to exactly the expected text
Single-threaded; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinery.redact import Redactor  # noqa: E402
from refinery.redact.canary import KINDS, generate_canary_corpus  # noqa: E402


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
    negatives = kept = exact = 0
    for case in corpus:
        out = redactor.redact(case.text)
        exact += out == case.expected
        for canary in case.canaries:
            planted[canary.kind] += 1
            removed[canary.kind] += canary.value not in out
        negatives += len(case.negatives)
        kept += sum(n in out for n in case.negatives)

    print("recall (planted values no longer present / planted):")
    for kind in KINDS:
        share = removed[kind] / planted[kind]
        print(f"  {kind:<6} {share:.4f}  ({removed[kind]:,} / {planted[kind]:,})")
    print("precision:")
    print(f"  negatives kept       {kept:,} / {negatives:,}")
    share = exact / len(corpus)
    print(f"  exactly as expected  {share:.4f}  ({exact:,} / {len(corpus):,} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
