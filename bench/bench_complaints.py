"""Complaint classes of user comments (refinery.signals.complaints) against a labelled set.

    .venv/bin/python bench/bench_complaints.py [--data tests/data/complaints_eval.tsv]

The set (tests/data/complaints_eval.tsv) is written apart from the classifier's prototypes:
paraphrases, negations ("not too long, just wrong"), German and Spanish. Prints accuracy,
per-class precision / recall / F1 and macro-F1 for English and for each other language, with the
real embedding model. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refinery.signals.complaints import CLASSES, classify  # noqa: E402

DEFAULT_DATA = ROOT / "tests" / "data" / "complaints_eval.tsv"
# Written after the prototypes and thresholds were fixed: the figures not tuned on.
HOLDOUT_DATA = ROOT / "tests" / "data" / "complaints_holdout.tsv"


def load(path: Path) -> list[tuple[str, str, str]]:
    """(lang, label, text) rows; '#' lines are comments."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            lang, label, text = line.split("\t", 2)
            rows.append((lang, label, text))
    return rows


def scores(gold: list[str], predicted: list[str]) -> dict[str, tuple[float, float, float, int]]:
    """class -> (precision, recall, F1, support), over the classes present in gold."""
    out = {}
    for c in CLASSES:
        support = sum(g == c for g in gold)
        if not support:
            continue
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        predicted_c = sum(p == c for p in predicted)
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[c] = (precision, recall, f1, support)
    return out


def report(name: str, gold: list[str], predicted: list[str]) -> float:
    per_class = scores(gold, predicted)
    accuracy = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
    macro = sum(f for _, _, f, _ in per_class.values()) / len(per_class)
    print(f"\n## {name}: {len(gold)} comments, accuracy {accuracy:.3f}, macro-F1 {macro:.3f}")
    print(f"| {'class':<12} | precision | recall | F1    | n  |")
    print(f"|{'-' * 14}|-----------|--------|-------|----|")
    for c, (p, r, f, n) in per_class.items():
        print(f"| {c:<12} | {p:9.3f} | {r:6.3f} | {f:.3f} | {n:2d} |")
    confusions = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    if confusions:
        print(
            "most frequent confusions (gold -> predicted): "
            + ", ".join(f"{g}->{p} {n}" for (g, p), n in confusions.most_common(6))
        )
    return macro


def evaluate(title: str, rows: list[tuple[str, str, str]], *, show_errors: bool) -> None:
    started = time.perf_counter()
    predicted = [c.label for c in classify([t for _, _, t in rows])]
    elapsed = time.perf_counter() - started
    print(f"\n# {title}: {len(rows)} comments classified in {elapsed:.1f} s (first: model load)")
    for lang in ["en"] + sorted({lang for lang, _, _ in rows} - {"en"}):
        idx = [i for i, (lg, _, _) in enumerate(rows) if lg == lang]
        report(lang, [rows[i][1] for i in idx], [predicted[i] for i in idx])
        if show_errors:
            for i in idx:
                if rows[i][1] != predicted[i]:
                    print(f"   {rows[i][1]:>11} -> {predicted[i]:<11} {rows[i][2]}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--holdout", type=Path, default=HOLDOUT_DATA)
    parser.add_argument("--errors", action="store_true", help="list every misclassified comment")
    args = parser.parse_args()
    for title, path in (("evaluation set", args.data), ("held-out set", args.holdout)):
        if path.exists():
            evaluate(title, load(path), show_errors=args.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
