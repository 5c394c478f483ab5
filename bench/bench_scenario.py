"""Failure-mode scenario per labelled set, through the real roles, default settings.

    python bench/bench_scenario.py [--database sqlite|postgres|both] [--sets clinc150,hwu64,snips]
                                   [--failing-intents 8] [--healthy 1000]

For each set (bench/datasets.py builds them from their public sources) N intents are planted as
failure modes (knowledge gap / behaviour / correction in turn; refinery/scenario/plant.py) among
healthy traffic of the other intents with ~3% noise. `refinery migrate`, `ingest`, a prefork
`worker` and `beat` run as processes over a Tansu broker, Redis (database 13, flushed) and SQLite
or a fresh PostgreSQL database, with nothing set but where the services are. Printed per set:
intents recalled (a proposal >= 80% pure covering >= 60% of the intent's failing interactions),
kinds right, impure clusters, redundant and spurious proposals, and seconds from the last event
produced to the complete queue. Targets: >= N-1 of N recalled, <= 1 impure per 10 clusters,
0 redundant, every recalled kind right, complete queue within 60 s. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import datasets  # noqa: E402
from refinery.scenario.plant import PlantConfig, plant  # noqa: E402
from refinery.scenario.roles import fresh_database  # noqa: E402
from refinery.scenario.run import ScenarioRun, run_scenario  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--sets", default="clinc150,hwu64,snips")
    parser.add_argument("--failing-intents", type=int, default=8)
    parser.add_argument("--healthy", type=int, default=1000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--clinc", default=None, help="CLINC150 data_full.json")
    args = parser.parse_args()

    from refinery.kafka.embedded import start_embedded_broker

    wanted = [s for s in args.sets.split(",") if s]
    sets = datasets.load_available({"clinc150": args.clinc} if args.clinc else None)
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    config = PlantConfig(failing_intents=args.failing_intents, healthy=args.healthy)
    broker = start_embedded_broker()
    rows = []
    try:
        for name in wanted:
            if name not in sets:
                print(f"{name}: not available, skipped")
                continue
            for database in databases:
                run = _one(name, sets[name], database, broker.bootstrap_servers, config, args)
                rows.append(_row(name, database, run))
                print(" | ".join(rows[-1]), flush=True)
    finally:
        broker.stop()
    header = ["set", "database", "recalled", "kinds right", "impure/clusters", "redundant",
              "spurious", "queue complete (s)", "misses"]  # fmt: skip
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _one(name, examples, database, bootstrap, config, args) -> ScenarioRun:  # type: ignore[no-untyped-def]
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    suffix = uuid.uuid4().hex[:8]
    scenario = plant(examples, app_id=f"scenario-{name}", config=config)
    with (
        tempfile.TemporaryDirectory(prefix=f"scenario-{name}-") as tmp,
        fresh_database(database, Path(tmp)) as database_url,
    ):
        services = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REDIS_URL": args.redis_url,
            "DATABASE_URL": database_url,
            "TOPIC_INTERACTIONS": f"scn-{suffix}.interactions",
            "TOPIC_FEEDBACK": f"scn-{suffix}.feedback",
            "TOPIC_DEAD_LETTER": f"scn-{suffix}.dead-letter",
            "TOPIC_APPROVED": f"scn-{suffix}.approved",
            "INGEST_GROUP_ID": f"scn-{suffix}",
        }
        print(
            f"{name} on {database}: {len(scenario.interactions)} interactions, "
            f"{len(scenario.feedback)} feedback events, planted "
            f"{', '.join(f'{i} ({k})' for i, k in scenario.planted.items())}",
            flush=True,
        )
        return run_scenario(scenario, services, workdir=Path(tmp), timeout_s=args.timeout)


def _row(name: str, database: str, run: ScenarioRun) -> list[str]:
    score = run.score
    n = len(score.intents)
    seconds = (
        "not complete"
        if run.seconds_to_complete_queue is None
        else str(run.seconds_to_complete_queue)
    )
    return [
        name, database, f"{score.recalled}/{n}", f"{score.kinds_right}/{score.recalled}",
        f"{score.impure_clusters}/{score.clusters}", str(score.redundant), str(score.spurious),
        seconds, "; ".join(score.misses()) or "none",
    ]  # fmt: skip


if __name__ == "__main__":
    main()
