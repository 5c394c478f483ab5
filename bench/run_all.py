"""`make bench`: run every benchmark, each in its own process, printing their figures.

Benchmarks print and assert nothing; a benchmark that crashes is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clinc", required=True, help="path to CLINC150 data_full.json")
    parser.add_argument(
        "--quick", action="store_true", help="skip the slowest runs (1M vectors, BERTopic)"
    )
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    runs = [
        ("spine: ingest, embedding, demo", ["bench_spine.py", "--clinc", args.clinc]),
        (
            "clustering: CLINC150, HWU64, SNIPS quality vs k-means (true k) and BERTopic, "
            "failure-mode recall, scale",
            ["bench_cluster.py", "--clinc", args.clinc, *quick],
        ),
        (
            "failure-mode scenario per labelled set, real roles, SQLite and PostgreSQL",
            ["bench_scenario.py", "--clinc", args.clinc],
        ),
        ("redaction", ["bench_redaction.py"]),
        ("complaint classes of user comments, per language", ["bench_complaints.py"]),
        ("ingest with signals", ["bench_ingest_signals.py"]),
        ("review API latency", ["bench_api.py"]),
        ("freshness: Kafka to cluster assignment", ["bench_freshness.py"]),
    ]
    # GPU figures (bench_embed_device.py, bench_embed_worker_device.py) need a machine with one.
    failed = []
    for title, argv in runs:
        script = HERE / argv[0]
        print(f"\n=== {title} ({argv[0]}) ===", flush=True)
        if not script.exists():
            print(f"(missing: {script.name})")
            failed.append(title)
            continue
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *argv[1:]])
        print(f"--- {argv[0]}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(title)
    if failed:
        print(f"\nbenchmarks that did not complete: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
