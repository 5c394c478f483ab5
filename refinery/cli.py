"""`refinery`: one command for every role and for reviewers.

Roles (long-running): ingest, worker, beat, relay. One-shots: migrate, demo, produce.
People: review list|show|approve|reject|edit|applied|claim, prompts set|show,
tokens create|list|revoke, dlq list|replay, failed list|retry, api (the review API and web UI).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from refinery.settings import Settings, get_settings

log = logging.getLogger("refinery")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python and Celery narrate every connection and task at INFO: keep our own readable.
    if level.upper() != "DEBUG":
        for noisy in (
            "kafka",
            "celery.app.trace",
            "sentence_transformers",
            "httpx",
            "alembic",
            "faiss",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # kafka-python's I/O thread warns when one of its steps took over 0.1 s of wall time,
        # which in a process that also validates, redacts or embeds is the GIL, not a bug to
        # report: `make demo` printed it between its results.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def _stop_flag() -> list[bool]:
    stop = [False]

    def handler(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from refinery.store.db import migrate

    migrate(settings.database_url)
    print("database schema is at the newest migration")
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from refinery.ingest.consumer import IngestConsumer, IngestFatal
    from refinery.ingest.deadletter import DeadLetterCapExceeded
    from refinery.kafka.clients import ReplacingProducer, make_producer
    from refinery.ops.roles import ingest_checks, start_health, stop_health
    from refinery.runtime import celery_enqueue, start_runtime
    from refinery.signals.enqueue import session_enqueue
    from refinery.signals.inline import inline_sweeps

    runtime = start_runtime(settings)
    settings = runtime.settings
    stop = _stop_flag()
    # Dead letters: a producer left failing by a broker restart is replaced (ReplacingProducer).
    producer = ReplacingProducer(lambda: make_producer(settings))
    enqueue = celery_enqueue(settings)
    consumer = IngestConsumer.on_event_topics(
        settings,
        producer=producer,
        sessions=runtime.sessions,
        enqueue=enqueue,
        enqueue_sessions=session_enqueue(settings),
    )
    # Without Celery beat (eager mode) the abandon and orphan sweeps run between polls.
    tick = (
        inline_sweeps(settings, runtime.sessions, producer, enqueue)
        if settings.celery_eager
        else None
    )
    log.info(
        "ingest: consuming %s, %s as group %s",
        settings.topic_interactions,
        settings.topic_feedback,
        settings.ingest_group_id,
    )
    health = start_health(settings, ingest_checks(settings, consumer))
    try:
        stats = consumer.run(
            should_stop=lambda: stop[0], until_caught_up=args.until_caught_up, tick=tick
        )
    except DeadLetterCapExceeded as exc:
        log.error("ingest stopped by the dead-letter cap: %s", exc)
        return 3
    except IngestFatal as exc:  # a blip is ridden out inside run(); this one a restart won't fix
        log.error("ingest stopped: a dependency refused it (fix the configuration): %s", exc)
        return 4
    finally:
        stop_health(health)
        consumer.close()
        runtime.close()
    log.info("ingest stopped: %s", stats)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if settings.celery_eager:
        print(
            "refinery worker needs REDIS_URL: without it tasks run eagerly inside ingest",
            file=sys.stderr,
        )
        return 2
    from refinery.ops.roles import clear_multiprocess_dir, install_worker_hooks

    # Before anything imports refinery.ops.metrics (the task modules do): an earlier run's
    # per-process files would be summed into this run's counters.
    clear_multiprocess_dir()
    install_worker_hooks(settings)  # health from worker_init; pool children's files marked dead
    from refinery.dispatch import dispatcher

    argv = ["worker", "--loglevel", args.loglevel, "--queues", args.queues, "--pool", args.pool]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    # Non-zero after Celery's "Unrecoverable error" (the worker's own exit code, read by the
    # dispatcher): a supervisor restarting on failure must see it.
    return dispatcher(settings).main(argv)


def cmd_beat(settings: Settings, args: argparse.Namespace) -> int:
    if settings.celery_eager:
        print("refinery beat needs REDIS_URL", file=sys.stderr)
        return 2
    from refinery.dispatch import dispatcher
    from refinery.ops.roles import broker_checks, start_health, stop_health

    health = start_health(settings, broker_checks(settings))
    try:
        return dispatcher(settings).main(
            ["beat", "--loglevel", args.loglevel, "--schedule", args.schedule]
        )
    finally:
        stop_health(health)


def cmd_relay(settings: Settings, _: argparse.Namespace) -> int:
    from refinery.kafka.clients import ReplacingProducer, make_producer
    from refinery.ops import roles
    from refinery.review.relay import run_relay
    from refinery.runtime import start_runtime

    stop = _stop_flag()
    producers: list = []  # the readiness check sees the producer in use once it exists
    checks = roles.relay_checks(settings, lambda: producers[0].current if producers else None)
    health = roles.start_health(settings, checks)
    # Wait for the database rather than crash-loop: meanwhile /livez is 200 and /readyz 503.
    if not roles.wait_for_database(settings, should_stop=lambda: stop[0]):
        roles.stop_health(health)
        return 0
    runtime = start_runtime(settings)
    # Replaced after a failed send: a broker restart leaves kafka-python's producer failing.
    producer = ReplacingProducer(lambda: make_producer(runtime.settings))
    producer.get()
    producers.append(producer)
    try:
        run_relay(
            runtime.sessions,
            producer,
            batch_size=settings.outbox_batch_size,
            idle_sleep_s=settings.outbox_poll_interval_s,
            should_stop=lambda: stop[0],
        )
    finally:
        roles.stop_health(health)
        producer.close()
        runtime.close()
    return 0


def cmd_demo(settings: Settings, _: argparse.Namespace) -> int:
    from refinery.demo.run import run_demo

    return run_demo(settings)


def cmd_scenario(settings: Settings, args: argparse.Namespace) -> int:
    """Plant failure modes of a labelled set, run the real roles on it, score the queue."""
    import tempfile
    from pathlib import Path

    from refinery.scenario.plant import PlantConfig, load_labelled, plant
    from refinery.scenario.run import run_scenario

    if settings.redis_url is None:
        print("refinery scenario runs the production roles: it needs REDIS_URL", file=sys.stderr)
        return 2
    try:
        labelled = load_labelled(Path(args.dataset))
        config = PlantConfig(failing_intents=args.failing_intents, healthy=args.healthy)
        scenario = plant(labelled, app_id=args.app_id, config=config)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    broker = None
    if settings.kafka_bootstrap_servers is None:
        from refinery.kafka.embedded import start_embedded_broker

        broker = start_embedded_broker()
        print(f"Kafka: embedded Tansu broker (memory only) at {broker.bootstrap_servers}")
    services = {
        name.upper(): str(getattr(settings, name))
        for name in ("redis_url", "database_url", "topic_interactions", "topic_feedback",
                     "topic_dead_letter", "topic_approved", "ingest_group_id")
    }  # fmt: skip
    services["KAFKA_BOOTSTRAP_SERVERS"] = (
        broker.bootstrap_servers if broker else str(settings.kafka_bootstrap_servers)
    )
    print(
        f"planted {len(scenario.planted)} failing intents among {len(scenario.interactions)} "
        f"interactions ({len(scenario.feedback)} feedback events) for app {args.app_id}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="refinery-scenario-") as tmp:
            run = run_scenario(scenario, services, workdir=Path(tmp), timeout_s=args.timeout)
    finally:
        if broker is not None:
            broker.stop()
    print(f"\n{'INTENT':32} {'EXPECTED':20} {'FOUND':20} {'PURITY':>6} {'COVERAGE':>8}")
    score = run.score
    for s in score.intents:
        found = s.kind if s.recalled else "-"
        print(f"{s.intent[:32]:32} {s.expected_kind:20} {found:20} {s.purity:6.2f} "
              f"{s.coverage:8.2f}")  # fmt: skip
    complete = run.seconds_to_complete_queue
    when = "not within the time limit" if complete is None else f"{complete} s after the last event"
    print(f"\nrecalled {score.recalled}/{len(score.intents)}, kinds right {score.kinds_right}, "
          f"impure clusters {score.impure_clusters}/{score.clusters}, redundant {score.redundant}, "
          f"spurious {score.spurious}; queue complete {when}")  # fmt: skip
    misses = score.misses()
    print("targets met" if not misses else "missed: " + "; ".join(misses))
    return 0 if not misses and complete is not None else 1


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    """Send JSON lines from a file (or stdin) to a topic: a producer for smoke tests."""
    from refinery.kafka.clients import make_producer

    if settings.kafka_bootstrap_servers is None:
        print("refinery produce needs KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    topic = {"interactions": settings.topic_interactions, "feedback": settings.topic_feedback}[
        args.topic
    ]
    producer = make_producer(settings)
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    sent = 0
    with stream:
        for line in stream:
            if line.strip():
                app_id = json.loads(line).get("app_id", "")
                producer.send(topic, key=str(app_id).encode(), value=line.strip().encode())
                sent += 1
    producer.flush()
    print(f"sent {sent} events to {topic}")
    return 0


def _parse_offsets(values: list[str]) -> list[tuple[int, int]]:
    offsets = []
    for value in values:
        partition, sep, offset = value.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise SystemExit(f"error: --offset wants PARTITION:OFFSET, got {value!r}")
        offsets.append((int(partition), int(offset)))
    return offsets


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    """Inspect the dead-letter topic and send records back to where they came from."""
    from datetime import UTC, datetime

    from refinery.ingest.deadletter import read_dead_letters, replay, replay_refusal
    from refinery.kafka.clients import make_producer, security_config

    if settings.kafka_bootstrap_servers is None:
        print(
            "refinery dlq needs KAFKA_BOOTSTRAP_SERVERS (the embedded broker keeps nothing)",
            file=sys.stderr,
        )
        return 2
    offsets = _parse_offsets(args.offset or [])
    if args.dlq_cmd == "replay" and not (args.all or args.reason or offsets):
        print(
            "refinery dlq replay: choose what to replay with --reason, --offset or --all",
            file=sys.stderr,
        )
        return 2
    letters = read_dead_letters(
        {"bootstrap_servers": settings.kafka_bootstrap_servers, **security_config(settings)},
        settings.topic_dead_letter,
        reasons=args.reason or (),
        offsets=offsets,
        limit=getattr(args, "limit", None),
    )
    if args.dlq_cmd == "list":
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "partition": d.partition,
                            "offset": d.offset,
                            "timestamp_ms": d.timestamp_ms,
                            **d.headers,
                            "value": (d.value or b"").decode("utf-8", "replace"),
                        }
                        for d in letters
                    ],
                    indent=2,
                    ensure_ascii=False,
                )
            )
            return 0
        print(f"{len(letters)} dead letter(s) on {settings.topic_dead_letter}")
        for d in letters:
            at = datetime.fromtimestamp(d.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            h = d.headers
            source = (
                f"{h.get('source_topic', '?')}/{h.get('source_partition', '?')}"
                f"@{h.get('source_offset', '?')}"
            )
            preview = " ".join((d.value or b"").decode("utf-8", "replace").split())[:80]
            print(f"{d.partition}:{d.offset:<8} {at}  {d.reason:<26} {source}")
            print(f"    {h.get('detail', '')}")
            print(f"    {preview}")
        return 0
    if args.dry_run:
        for d in letters:
            why = replay_refusal(d)
            if why is None:
                print(f"would replay {d.partition}:{d.offset} ({d.reason}) -> {d.source_topic}")
            else:
                print(f"would refuse {d.partition}:{d.offset} ({d.reason}): {why}")
        return 0
    producer = make_producer(settings)
    try:
        done = replay(producer, letters, settings.topic_dead_letter)
    finally:
        producer.close()
    print(f"replayed {done.sent} of {len(letters)} dead letter(s) to their source topics")
    for d, why in done.refused:
        print(f"refused {d.partition}:{d.offset} ({d.reason}): {why}", file=sys.stderr)
    if done.refused:
        print(
            f"refused {len(done.refused)} dead letter(s); they stay on"
            f" {settings.topic_dead_letter}",
            file=sys.stderr,
        )
        return 1
    return 0


def _sessions(settings: Settings, *, read_only: bool = False):  # type: ignore[no-untyped-def]
    """Sessions on the settings' database. A command that writes first brings the schema up to
    date; one that only reads leaves it alone and stops (SchemaNotCurrent, exit 1) when it is
    not current."""
    from refinery.store.db import migrate, require_current_schema, session_factory

    (require_current_schema if read_only else migrate)(settings.database_url)
    return session_factory(settings.database_url)


def cmd_review(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from refinery.review import render
    from refinery.review.decisions import act
    from refinery.review.errors import InvalidEdit, ProposalNotFound, Refused
    from refinery.review.service import (
        ProposalFilter,
        claim_filter,
        describe_state,
        get_proposal,
        list_page,
        proposal_history,
    )

    if args.review_cmd == "list" and args.mine and not args.actor:
        print("error: --mine needs --actor NAME (whose claims)", file=sys.stderr)
        return 2
    sessions = _sessions(settings, read_only=args.review_cmd in ("list", "show"))
    try:
        if args.review_cmd == "list":
            claimed = "mine" if args.mine else "unclaimed" if args.unclaimed else None
            with sessions() as session:
                rows, total, offset = list_page(
                    session,
                    ProposalFilter(
                        app_id=args.app,
                        kind=args.kind,
                        status=args.status,
                        search=args.search,
                        **claim_filter(claimed, actor=args.actor or ""),
                    ),
                    limit=args.limit,
                    offset=args.offset,
                    sort=args.sort,
                )
                print(
                    render.proposals_json(rows, total, offset)
                    if args.json
                    else render.proposals_table(rows, total, offset)
                )
            return 0
        if args.review_cmd == "show":
            with sessions() as session:
                row = get_proposal(session, args.id)
                history = proposal_history(session, args.id)
                print(
                    render.proposal_json(row, history)
                    if args.json
                    else render.proposal_text(row, history, settings)
                )
            return 0
        actor = args.actor
        if args.review_cmd == "claim":
            row = act(
                sessions,
                args.id,
                "release" if args.release else "claim",
                actor=actor,
                topic=settings.topic_approved,
                assignee=args.to,
                force=args.force,
            )
            holder = f"claimed by {row.claimed_by}" if row.claimed_by else "unclaimed"
            print(f"{row.id}: {row.status} (version {row.version}), {holder}")
            return 0
        if args.review_cmd in ("approve", "reject"):
            if len(args.id) > 1:
                return _decide_each(sessions, args, settings.topic_approved)
            args.id = args.id[0]
        row = act(
            sessions,
            args.id,
            args.review_cmd,
            actor=actor,
            topic=settings.topic_approved,
            comment=args.comment,
            expected_version=args.version,
            edit=_artifact_edit(args) if args.review_cmd == "edit" else None,
        )
        print(f"{row.id}: {row.status} (version {row.version}) by {actor}")
        return 0
    except ProposalNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except (InvalidEdit, ValidationError, OSError) as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        with sessions() as session:
            state = describe_state(get_proposal(session, args.id))
        print(f"refused: {exc}. {state}", file=sys.stderr)
        return 3


# Exit codes of a decision that was not taken, worst first: as for one proposal.
_NOT_DECIDED_EXIT = {"not_found": 4, "conflict": 3, "invalid": 2}


def _decide_each(sessions: Any, args: argparse.Namespace, topic: str) -> int:
    """`review approve|reject ID ID ...`: each through the single-decision path (its own
    transaction, version check and audit entry), one line each; exits 0 when all were decided,
    else with the worst of the codes one proposal would give (4 not found, 3 refused, 2 invalid)."""
    from refinery.review.decisions import bulk_decide

    if args.version is not None:
        print("error: --version names one proposal's version; give one id", file=sys.stderr)
        return 2
    outcomes = bulk_decide(
        sessions,
        args.review_cmd,
        [(proposal_id, None) for proposal_id in dict.fromkeys(args.id)],
        actor=args.actor,
        topic=topic,
        comment=args.comment,
    )
    for outcome in outcomes:
        if outcome.error is None:
            decided = f"{outcome.status} (version {outcome.version}) by {args.actor}"
            print(f"{outcome.proposal_id}: {decided}")
        else:
            print(f"{outcome.proposal_id}: {outcome.error}: {outcome.detail}", file=sys.stderr)
    return max((_NOT_DECIDED_EXIT[o.error] for o in outcomes if o.error), default=0)


def _artifact_edit(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """`review edit` options -> ArtifactEdit (files are read as UTF-8; the dataset as JSONL)."""
    from refinery.review.edits import ArtifactEdit, DatasetRow

    fields: dict[str, object] = {}
    if args.proposed_text_file:
        fields["proposed_text"] = Path(args.proposed_text_file).read_text(encoding="utf-8")
    if args.topic:
        fields["topic"] = args.topic
    if args.must_cover:
        fields["must_cover"] = args.must_cover
    if args.query:
        fields["representative_queries"] = args.query
    if args.rows_file:
        lines = Path(args.rows_file).read_text(encoding="utf-8").splitlines()
        fields["rows"] = [DatasetRow.model_validate_json(line) for line in lines if line.strip()]
    return ArtifactEdit(**fields)


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from refinery.api.app import create_app
    from refinery.store.db import migrate

    migrate(settings.database_url)
    log.info("review API and web UI on %s:%d (OpenAPI: /docs)", args.host, settings.api_port)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=settings.api_port,
        log_level=args.log_level.lower(),
        proxy_headers=True,
        server_header=False,
    )
    return 0


def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from refinery.api.tokens import Role, create_token, list_tokens, revoke_token

    sessions = _sessions(settings, read_only=args.tokens_cmd == "list")
    with sessions.begin() as session:
        if args.tokens_cmd == "create":
            try:
                row, secret = create_token(
                    session, name=args.token_name, role=Role(args.role), created_by="cli"
                )
            except ValueError as exc:
                print(f"invalid: {exc}", file=sys.stderr)
                return 2
            print(f"token {row.id} ({row.role}) for {row.name}, shown only once:", file=sys.stderr)
            print(secret)
            return 0
        if args.tokens_cmd == "revoke":
            if revoke_token(session, args.id) is None:
                print(f"error: no token {args.id!r}", file=sys.stderr)
                return 4
            print(f"revoked {args.id}")
            return 0
        for row in list_tokens(session):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            print(f"{row.id:<20} {row.role:<9} {state:<18} {row.name}")
        return 0


def cmd_prompts(settings: Settings, args: argparse.Namespace) -> int:
    from refinery.store.prompts import current_prompt, set_prompt

    sessions = _sessions(settings, read_only=args.prompts_cmd == "show")
    with sessions.begin() as session:
        if args.prompts_cmd == "set":
            text = Path(args.file).read_text(encoding="utf-8")
            row = set_prompt(session, app_id=args.app, name=args.name, text=text, source="cli")
            print(f"{args.app}/{args.name}: current version {row.version}")
            return 0
        current = current_prompt(session, app_id=args.app, name=args.name)
        if current is None:
            print(f"error: no prompt {args.name!r} for app {args.app!r}", file=sys.stderr)
            return 4
        print(f"# {args.app}/{current.name} version {current.version} ({current.source})")
        print(current.text, end="" if current.text.endswith("\n") else "\n")
        return 0


def cmd_failed(settings: Settings, args: argparse.Namespace) -> int:
    """The failed-work table (refinery.reconcile): items the reconciler parked after
    RECONCILE_MAX_ATTEMPTS re-enqueues, with the last error; `retry` sends them again."""
    from refinery.reconcile.service import list_failed, retry_failed

    sessions = _sessions(settings, read_only=args.failed_cmd == "list")
    if args.failed_cmd == "list":
        with sessions() as session:
            rows = list_failed(session, parked_only=not args.tracked)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "id": r.id,
                            "kind": r.kind,
                            "key": r.item_key,
                            "app_id": r.app_id,
                            "attempts": r.attempts,
                            "last_error": r.last_error,
                            "parked_at": r.parked_at.isoformat() if r.parked_at else None,
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
            return 0
        if not rows:
            print("no failed work" if not args.tracked else "no work tracked")
            return 0
        for r in rows:
            state = f"parked {r.parked_at:%Y-%m-%d %H:%M:%S}" if r.parked_at else "tracked"
            print(
                f"{r.id}\t{r.kind}\t{r.item_key}\tapp={r.app_id}\tattempts={r.attempts}"
                f"\t{state}\t{r.last_error or ''}"
            )
        return 0
    if not args.all and not args.ids:
        print("refinery failed retry: name the ids to retry, or --all", file=sys.stderr)
        return 2
    from refinery.dispatch import dispatcher

    with sessions.begin() as session:
        rows = retry_failed(
            session, dispatcher(settings).enqueuers(), settings, ids=None if args.all else args.ids
        )
    print(f"sent again {len(rows)} failed item(s)")
    return 0 if rows or args.all else 4


REVIEW_HELP = {
    "applied": "approved -> applied (a downstream system acknowledged it)",
    "edit": "change a pending proposal's artifact (list options replace the whole list)",
    "claim": "take a pending proposal to review (--to: assign it; --release: drop the claim)",
}


def build_parser() -> argparse.ArgumentParser:
    from schemas.proposals import ProposalKind, ProposalStatus

    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(
        func=cmd_migrate
    )

    p = sub.add_parser("ingest", help="consume interaction and feedback events")
    p.add_argument(
        "--until-caught-up", action="store_true", help="stop at the end of every partition"
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("worker", help="Celery worker (embed, cluster, propose, signals queues)")
    p.add_argument("--queues", default="embed,cluster,propose,signals")
    p.add_argument("--pool", default="prefork")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="Celery beat: periodic re-cluster and propose")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--schedule", default="var/celerybeat-schedule")
    p.set_defaults(func=cmd_beat)

    sub.add_parser("relay", help="publish approved refinements (outbox) to Kafka").set_defaults(
        func=cmd_relay
    )
    sub.add_parser("demo", help="run the pipeline end to end on a synthetic app").set_defaults(
        func=cmd_demo
    )

    p = sub.add_parser(
        "scenario",
        help="plant failure modes of a labelled query set, run the real roles, score the queue",
    )
    p.add_argument("dataset", help="JSON: [[text, intent], ...] or {split: [[text, intent], ...]}")
    p.add_argument("--failing-intents", type=int, default=8, help="intents planted as failing")
    p.add_argument("--healthy", type=int, default=1000, help="healthy interactions")
    p.add_argument("--app-id", default="scenario", help="the app the events belong to")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the queue")
    p.set_defaults(func=cmd_scenario)

    p = sub.add_parser("produce", help="send JSON-lines events to a topic")
    p.add_argument("topic", choices=["interactions", "feedback"])
    p.add_argument("file", help="path, or - for stdin")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("dlq", help="the dead-letter topic: list and replay invalid records")
    dlq = p.add_subparsers(dest="dlq_cmd", required=True)
    q = dlq.add_parser("list", help="show dead letters with their reason and source")
    q.add_argument("--reason", action="append", help="only this reason (repeatable)")
    q.add_argument("--offset", action="append", help="only PARTITION:OFFSET (repeatable)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--json", action="store_true")
    q = dlq.add_parser("replay", help="send dead letters back to their source topic")
    q.add_argument("--reason", action="append", help="replay records of this reason (repeatable)")
    q.add_argument("--offset", action="append", help="replay PARTITION:OFFSET (repeatable)")
    q.add_argument("--all", action="store_true", help="replay every dead letter")
    q.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("review", help="the review queue")
    review = p.add_subparsers(dest="review_cmd", required=True)
    q = review.add_parser("list")
    q.add_argument("--app")
    q.add_argument("--kind", choices=[k.value for k in ProposalKind])
    q.add_argument("--status", choices=[s.value for s in ProposalStatus])
    q.add_argument("--search", help="text in titles, cluster labels and example queries")
    q.add_argument(
        "--sort",
        choices=["newest", "oldest", "size", "impact"],
        default="newest",
        help="newest or oldest first, size: most failing interactions first, or"
        " impact: highest expected impact first",
    )
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--offset", type=int, default=0, help="skip this many; past the end: last page")
    claimed = q.add_mutually_exclusive_group()
    claimed.add_argument("--mine", action="store_true", help="only those claimed by --actor")
    claimed.add_argument("--unclaimed", action="store_true", help="only those nobody claimed")
    q.add_argument("--actor", help="who you are (for --mine)")
    q.add_argument("--json", action="store_true")
    q = review.add_parser("claim", help=REVIEW_HELP["claim"])
    q.add_argument("id")
    q.add_argument("--actor", default="cli")
    q.add_argument("--to", metavar="NAME", help="assign to this reviewer (a token's name)")
    q.add_argument("--force", action="store_true", help="take it over from whoever holds it")
    q.add_argument("--release", action="store_true", help="drop the claim instead")
    q = review.add_parser("show")
    q.add_argument("id")
    q.add_argument("--json", action="store_true")
    decision_parsers: dict[str, argparse.ArgumentParser] = {}
    for name in ("approve", "reject", "applied", "edit"):
        q = decision_parsers[name] = review.add_parser(name, help=REVIEW_HELP.get(name))
        if name in ("approve", "reject"):
            q.add_argument("id", nargs="+", help="one or more: each decided on its own")
        else:
            q.add_argument("id")
        q.add_argument("--comment")
        q.add_argument("--actor", default="cli")
        q.add_argument(
            "--version",
            type=int,
            help="fail unless the proposal is at this version",
            required=name == "edit",
        )
    edit = decision_parsers["edit"]
    edit.add_argument("--proposed-text-file", help="system_prompt_edit: file with the new prompt")
    edit.add_argument("--topic", help="rag_source: new topic")
    edit.add_argument("--must-cover", action="append", help="rag_source: must-cover item (repeat)")
    edit.add_argument("--query", action="append", help="rag_source: representative query (repeat)")
    edit.add_argument("--rows-file", help="fine_tune_dataset: JSONL of {'messages': [...]} rows")
    p.set_defaults(func=cmd_review)
    from refinery.propose.cli import add_export_parser

    add_export_parser(review)  # its own func: a file writer, not a decision

    p = sub.add_parser("api", help="serve the review API and web UI on API_PORT")
    p.add_argument("--host", default="0.0.0.0")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("tokens", help="API tokens of the review API")
    tokens = p.add_subparsers(dest="tokens_cmd", required=True)
    q = tokens.add_parser("create", help="create a token and print it (once)")
    q.add_argument("--role", required=True, choices=["viewer", "reviewer", "admin"])
    q.add_argument("--name", dest="token_name", required=True, help="holder (the audit's actor)")
    tokens.add_parser("list", help="list tokens (never their secrets)")
    q = tokens.add_parser("revoke", help="revoke a token by id")
    q.add_argument("id")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("prompts", help="the prompt registry")
    prompts = p.add_subparsers(dest="prompts_cmd", required=True)
    q = prompts.add_parser("set")
    q.add_argument("app")
    q.add_argument("file")
    q.add_argument("--name", default=None)
    q = prompts.add_parser("show")
    q.add_argument("app")
    q.add_argument("--name", default=None)
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("failed", help="work the reconciler parked: list it, send it again")
    failed = p.add_subparsers(dest="failed_cmd", required=True)
    q = failed.add_parser("list", help="parked items with their attempts and last error")
    q.add_argument("--tracked", action="store_true", help="also items still being re-enqueued")
    q.add_argument("--json", action="store_true")
    q = failed.add_parser("retry", help="send parked items again, with a fresh attempt count")
    q.add_argument("ids", nargs="*", type=int, help="failed-work ids (see `refinery failed list`)")
    q.add_argument("--all", action="store_true", help="every parked item")
    p.set_defaults(func=cmd_failed)

    from refinery.corpus.cli import add_parser as add_corpus_parser

    add_corpus_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from refinery.store.db import SchemaNotCurrent

    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    settings = get_settings()
    if getattr(args, "name", "unset") is None:
        args.name = settings.default_prompt_name
    try:
        return int(args.func(settings, args) or 0)
    except SchemaNotCurrent as exc:  # a read-only command on a database not migrated yet
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
