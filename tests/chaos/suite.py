"""Fault injection under load: `make chaos` (python -m tests.chaos.suite [NAME ...]).

Every scenario gets services of its own, started here so that they can be killed: a
`redis-server` on a free port (no persistence: a restart is empty), a Tansu broker on a free port
(memory only), a fresh PostgreSQL database. `refinery migrate`, then `ingest`, a prefork
`worker` (2 children), `beat` and `relay` run as processes (refinery/scenario/roles.py). The
demo workload (~30% failing interactions, feedback shuffled against its interactions) is
produced at a steady rate while the fault is injected; every record is in a ledger with whether
Kafka acknowledged it (acks=all).

Measured per scenario, once the fault is over and the pipeline has converged (or the recovery
timeout passed), then again one reconciler period later:

* lost: acknowledged events missing from the database (poison records: missing from the
  dead-letter topic; outbox rows marked sent but missing from the approved topic);
* duplicated effects: rows sharing an event_id, pending proposals sharing (cluster, kind),
  messages on the approved topic sharing an outbox_id;
* stuck: failing interactions neither placed (cluster_checked_at) nor parked in failed_work;
* time to recover: seconds from the end of the fault (process restarted, service back) until
  every acknowledged event is stored, no failing interaction is due and a re-cluster finished
  after the last one was placed (the baseline, with no fault: from the start of the load).

The reconciler runs with RECONCILE_INTERVAL_S=5, RECONCILE_STALE_S=10 and
RECONCILE_MAX_ATTEMPTS=12 (defaults 60, 300 and 5), so "one reconciler period" fits a
scenario; rephrase detection is off (it embeds every turn, which 2 CPU cores cannot keep up
with next to the rest) and every other setting is its default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

import redis
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from refinery.demo.workload import generate
from refinery.kafka.clients import make_producer
from refinery.kafka.embedded import EmbeddedBroker, ensure_topics, free_port, start_embedded_broker
from refinery.scenario.roles import POSTGRES_ADMIN_URL, Roles
from refinery.settings import Settings

RECONCILE_INTERVAL_S = 5.0
RECONCILE_STALE_S = 10.0
PRODUCE_S = 24.0  # the workload is spread over this long; faults land inside it
RECOVERY_TIMEOUT_S = 150.0
STABLE_S = 15.0  # a scenario that may lose events: stored count unchanged this long = settled
SUITE_SETTINGS = {
    "RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
    "RECONCILE_STALE_S": str(RECONCILE_STALE_S),
    # Stale x attempts must outlast a lost refine message's `scheduled` key (REFINE_MAX_DELAY_S
    # + 60 s, workers/scheduling.py): until it expires, re-enqueued refines are coalesced into
    # the lost one, and 5 x 10 s would park the app's refine (found by the worker scenario).
    "RECONCILE_MAX_ATTEMPTS": "12",
    "REPHRASE_DETECTION_ENABLED": "false",
    "INGEST_BACKOFF_MAX_S": "2",
    "OUTBOX_POLL_INTERVAL_S": "0.5",
}


# --- services the suite can kill -------------------------------------------------------------


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        _wait(lambda: _pings(client), 10, f"redis-server on {self.port}")
        client.close()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


class Broker:
    """A Tansu broker restarted on the same port (memory storage: a restart is empty)."""

    def __init__(self, topics: dict[str, int]) -> None:
        self.port = free_port()
        self.topics = topics
        self.embedded: EmbeddedBroker | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.embedded = start_embedded_broker(self.port)
        # A memory broker comes back without topics: create them as an operator would.
        _wait(lambda: _try(lambda: ensure_topics(self.bootstrap, self.topics)), 30, "topics")

    def kill(self) -> None:
        if self.embedded and self.embedded.process.poll() is None:
            self.embedded.process.kill()
            self.embedded.process.wait()


class Database:
    """A fresh PostgreSQL database; `block()` makes it unavailable to every client (new
    connections refused, open ones terminated) until `unblock()`. ALLOW_CONNECTIONS rather than
    CONNECTION LIMIT 0: the roles connect as a superuser, whom a connection limit does not stop."""

    def __init__(self) -> None:
        self.name = f"chaos_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(
            POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        self.url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"
        self.engine: Engine = create_engine(self.url, poolclass=NullPool)

    def create(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))

    def block(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                {"d": self.name},
            )

    def unblock(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))

    def drop(self) -> None:
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


# --- the ledger ------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every record produced: event id -> what it is ("event" or "poison"), and its fate."""

    kinds: dict[str, str] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    acked_at: dict[str, float] = field(default_factory=dict)  # monotonic time of the ack
    errors: Counter[str] = field(default_factory=Counter)  # producer errors by type

    def fail(self, event_id: str, error: BaseException) -> None:
        self.errors[type(error).__name__] += 1
        self.failed.add(event_id)

    def ack(self, event_id: str) -> None:
        self.acked_at[event_id] = time.monotonic()
        self.acked.add(event_id)

    def acked_of(self, kind: str) -> set[str]:
        return {e for e in self.acked if self.kinds[e] == kind}


def poison_records(n: int) -> list[tuple[str, bytes]]:
    """Half invalid JSON, half valid JSON violating the schema (no query, no response)."""
    records = []
    for i in range(n):
        event_id = f"poison-{i}"
        if i % 2:
            value = f'{{"event_id": "{event_id}", "app_id": "nimbus-support", "query": '.encode()
        else:
            value = json.dumps({"event_id": event_id, "app_id": "nimbus-support",
                                "interaction_id": event_id, "session_id": "x",
                                "occurred_at": "2024-01-01T00:00:00+00:00"}).encode()  # fmt: skip
        records.append((event_id, value))
    return records


class Load:
    """Produces the workload in a thread, paced over `PRODUCE_S`, recording acks in the ledger."""

    def __init__(self, settings: Settings, *, per_mode: int, seed: int, poison: int) -> None:
        work = generate(seed=seed, healthy=7 * per_mode, per_mode=per_mode)
        records: list[tuple[str, str, str, bytes]] = [
            ("event", e["event_id"], settings.topic_interactions, json.dumps(e).encode())
            for e in work.interactions
        ]
        records += [
            ("event", e["event_id"], settings.topic_feedback, json.dumps(e).encode())
            for e in work.feedback
        ]
        random.Random(seed).shuffle(records)
        for n, (event_id, value) in enumerate(poison_records(poison)):
            at = (n + 1) * len(records) // (poison + 1)
            records.insert(at, ("poison", event_id, settings.topic_interactions, value))
        self.records = records
        self.failing_planted = 3 * per_mode
        self.ledger = Ledger(kinds={r[1]: r[0] for r in records})
        self.settings = settings
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started_at = 0.0
        self.recreated = 0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.thread.start()

    def join(self) -> None:
        self.thread.join()

    def _run(self) -> None:
        producer = make_producer(self.settings, request_timeout_ms=10_000, retries=10)
        step = PRODUCE_S / len(self.records)
        errors_seen, self.recreated = 0, 0
        for n, (_, event_id, topic, value) in enumerate(self.records):
            delay = self.started_at + n * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.ledger.errors.total() > errors_seen:
                # An idempotent producer that lost its producer id (a broker restarted without
                # its state) fails every later send: an app replaces it, so does the load.
                errors_seen = self.ledger.errors.total()
                with contextlib.suppress(Exception):
                    producer.close(timeout=0)
                producer = make_producer(self.settings, request_timeout_ms=10_000, retries=10)
                self.recreated += 1
            try:
                future = producer.send(topic, key=b"nimbus-support", value=value)
            except Exception as exc:  # noqa: BLE001 - not sent: not acknowledged, so not owed
                self.ledger.fail(event_id, exc)
                continue
            future.add_callback(lambda _md, e=event_id: self.ledger.ack(e))
            future.add_errback(lambda exc, e=event_id: self.ledger.fail(e, exc))
        with contextlib.suppress(Exception):
            producer.flush(timeout=90)
        producer.close(timeout=10)


# --- processes -------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Child processes of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def sigkill(roles: Roles, role: str) -> list[int]:
    """SIGKILL a role's main process; its orphaned children (a prefork pool) are killed too, as
    a container runtime would when its main process dies. Returns the orphans' pids."""
    process = roles.processes[role]
    kids = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return kids


def restart(roles: Roles, role: str) -> None:
    args = {"worker": ("--concurrency", "2")}.get(role, ())
    roles.start(role, *args)


def wait_log(roles: Roles, role: str, needle: str, timeout_s: float = 120) -> None:
    path = roles.workdir / f"{role}.log"
    _wait(lambda: path.exists() and needle in path.read_text(errors="replace"), timeout_s,
          f"{role}: {needle!r}")  # fmt: skip


# --- a scenario ------------------------------------------------------------------------------


@dataclass
class Ctx:
    roles: Roles
    redis: RedisServer
    broker: Broker
    db: Database
    load: Load
    settings: Settings
    notes: list[str] = field(default_factory=list)
    fault_at: float | None = None  # when a fault that may lose data began

    def at(self, seconds: float) -> None:
        """Sleep until `seconds` after the load started."""
        time.sleep(max(0.0, self.load.started_at + seconds - time.monotonic()))


@dataclass
class Spec:
    name: str
    title: str
    inject: Callable[[Ctx], None]  # returns once the fault is over (restarted / restored)
    poison: int = 0
    may_lose: bool = False  # the embedded broker keeps nothing on disk
    approve: bool = False


@dataclass
class Result:
    name: str
    title: str
    produced: int
    acked: int
    lost: int
    dup_rows: int
    dup_pending: int
    dup_outbox: int
    failing: int
    stuck: int
    parked: int
    recover_s: float | None
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.dup_rows or self.dup_pending or self.dup_outbox or self.stuck)


def run(spec: Spec, *, per_mode: int = 45, seed: int = 7, workdir: Path | None = None) -> Result:
    workdir = workdir or Path(mkdtemp(prefix=f"chaos-{spec.name}-"))
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "TOPIC_INTERACTIONS": f"chaos-{suffix}.interactions",
        "TOPIC_FEEDBACK": f"chaos-{suffix}.feedback",
        "TOPIC_DEAD_LETTER": f"chaos-{suffix}.dead-letter",
        "TOPIC_APPROVED": f"chaos-{suffix}.approved",
    }
    server, db = RedisServer(), Database()
    broker = Broker({t: 3 if i < 2 else 1 for i, t in enumerate(topics.values())})
    server.start()
    broker.start()
    db.create()
    services = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "REDIS_URL": server.url,
        "DATABASE_URL": db.url,
        "INGEST_GROUP_ID": f"chaos-{suffix}",
        **topics,
        **SUITE_SETTINGS,
    }
    settings = Settings.model_validate({k.lower(): v for k, v in services.items()})
    try:
        with Roles(services, workdir) as roles:
            roles.run("migrate")
            restart(roles, "worker")
            for role in ("beat", "ingest", "relay"):
                roles.start(role)
            wait_log(roles, "worker", " ready.")
            wait_log(roles, "ingest", "ingest: consuming")
            load = Load(settings, per_mode=per_mode, seed=seed, poison=spec.poison)
            ctx = Ctx(roles, server, broker, db, load, settings)
            load.start()
            spec.inject(ctx)
            restored = time.monotonic()
            load.join()
            recover_s = converge(ctx, spec, restored)
            time.sleep(RECONCILE_INTERVAL_S)  # one more reconciler period, then measure
            result = measure(ctx, spec, recover_s)
            for role, process in roles.processes.items():
                if process.poll() is not None:
                    result.notes.append(f"{role} exited {process.returncode}")
            return result
    finally:
        server.kill()
        broker.kill()
        db.drop()


# --- measuring -------------------------------------------------------------------------------

# Failing queries placed after the app's last finished re-cluster: a refine is owed (it is what
# drafts proposals, so the duplicate-proposal count is only read once none is).
REFINE_DUE = """SELECT count(*) FROM interactions i WHERE i.failing AND i.cluster_checked_at >
COALESCE((SELECT max(finished_at) FROM cluster_runs r WHERE r.app_id = i.app_id), '-infinity')"""
DUE = """SELECT count(*) FROM interactions i WHERE i.failing AND i.cluster_checked_at IS NULL
AND NOT EXISTS (SELECT 1 FROM failed_work f WHERE f.kind IN ('embed', 'assign')
                AND f.item_key = CAST(i.id AS TEXT) AND f.parked_at IS NOT NULL)"""


def stored_ids(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id FROM interactions UNION ALL "
                 "SELECT event_id FROM feedback WHERE source = 'app'")
        )  # fmt: skip
        return {r[0] for r in rows}


def scalar(db: Database, sql: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def converge(ctx: Ctx, spec: Spec, restored: float) -> float | None:
    """Seconds from `restored` until every acknowledged event is stored, no failing interaction
    is due, a re-cluster finished after the last was placed, and the outbox is drained; None if
    not within RECOVERY_TIMEOUT_S."""
    last_count, stable_since = -1, time.monotonic()
    while time.monotonic() < restored + RECOVERY_TIMEOUT_S:
        try:
            stored = stored_ids(ctx.db)
            due = scalar(ctx.db, DUE)
            unsent = scalar(ctx.db, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
            refine_due = scalar(ctx.db, REFINE_DUE)
        except Exception:  # noqa: BLE001 - the database may still be coming back
            time.sleep(1)
            continue
        if len(stored) != last_count:
            last_count, stable_since = len(stored), time.monotonic()
        missing = ctx.load.ledger.acked_of("event") - stored
        settled = not missing or (spec.may_lose and time.monotonic() - stable_since >= STABLE_S)
        if settled and due == 0 and refine_due == 0 and unsent == 0 and stored:
            return time.monotonic() - restored
        time.sleep(1)
    return None


def read_topic(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            consumer.position(tp) < end[tp] for tp in partitions
        ):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def measure(ctx: Ctx, spec: Spec, recover_s: float | None) -> Result:
    ledger, db, notes = ctx.load.ledger, ctx.db, ctx.notes
    stored = stored_ids(db)
    lost = len(ledger.acked_of("event") - stored)
    if spec.poison:
        dead = read_topic(ctx.broker.bootstrap, ctx.settings.topic_dead_letter)
        seen = {p for p in ledger.acked_of("poison") for r in dead if p.encode() in r.value}
        missing_poison = len(ledger.acked_of("poison") - seen)
        reasons = Counter(dict(r.headers).get("reason", b"?").decode() for r in dead)
        notes.append(f"dead-lettered {len(dead)} of {len(ledger.acked_of('poison'))} poison: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))  # fmt: skip
        lost += missing_poison
    if spec.may_lose and lost:
        gone = ledger.acked_of("event") - stored
        before = sum(1 for e in gone if ctx.fault_at and ledger.acked_at[e] < ctx.fault_at)
        notes.append(f"{before} lost were acknowledged before the kill (in the broker's memory), "
                     f"{len(gone) - before} after its restart")  # fmt: skip
    unacked = len(ledger.kinds) - len(ledger.acked)
    if unacked:
        errors = ", ".join(f"{k} {v}" for k, v in ledger.errors.most_common())
        notes.append(f"{unacked} not acknowledged to the producer ({errors or 'no error'}; "
                     f"producer recreated {ctx.load.recreated} times)")  # fmt: skip
    dup_rows = scalar(db, "SELECT count(*) FROM (SELECT event_id FROM interactions GROUP BY "
                          "event_id HAVING count(*) > 1) d") + scalar(
        db, "SELECT count(*) FROM (SELECT event_id FROM feedback GROUP BY event_id "
            "HAVING count(*) > 1) d")  # fmt: skip
    dup_pending = scalar(db, "SELECT count(*) FROM (SELECT cluster_id, kind FROM proposals WHERE "
                             "status = 'pending' GROUP BY 1, 2 HAVING count(*) > 1) d")  # fmt: skip
    approved = read_topic(ctx.broker.bootstrap, ctx.settings.topic_approved)
    by_outbox = Counter(dict(r.headers).get("outbox_id") for r in approved)
    dup_outbox = sum(n - 1 for n in by_outbox.values())
    with db.engine.connect() as conn:
        published = {r[0] for r in conn.execute(text(
            "SELECT id FROM outbox WHERE published_at IS NOT NULL"))}  # fmt: skip
    missing_outbox = len(published - {k.decode() for k in by_outbox if k})
    if spec.approve:
        notes.append(f"{len(published)} outbox rows published, {len(approved)} messages")
    lost += missing_outbox
    failing = scalar(db, "SELECT count(*) FROM interactions WHERE failing")
    parked = scalar(db, "SELECT count(*) FROM failed_work WHERE parked_at IS NOT NULL")
    pending = scalar(db, "SELECT count(*) FROM proposals WHERE status = 'pending'")
    notes.append(f"{pending} pending proposals")
    return Result(
        spec.name, spec.title, len(ledger.kinds), len(ledger.acked), lost, dup_rows, dup_pending,
        dup_outbox, failing, scalar(db, DUE), parked, recover_s, notes,
    )  # fmt: skip


# --- the faults ------------------------------------------------------------------------------


def kill_ingest_repeatedly(ctx: Ctx) -> None:
    for at in (5, 10, 15):
        ctx.at(at)
        sigkill(ctx.roles, "ingest")
        restart(ctx.roles, "ingest")
    ctx.notes.append("ingest SIGKILLed 3 times, restarted at once")


def kill_worker_main(ctx: Ctx) -> None:
    ctx.at(8)
    orphans = sigkill(ctx.roles, "worker")
    time.sleep(2)
    restart(ctx.roles, "worker")
    ctx.notes.append(f"{len(orphans)} orphaned pool children killed with it")


def kill_pool_children(ctx: Ctx) -> None:
    killed = 0
    for at in (6, 12, 18):
        ctx.at(at)
        for pid in children(ctx.roles.processes["worker"].pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    ctx.notes.append(f"{killed} pool children SIGKILLed in 3 rounds")


def kill_beat(ctx: Ctx) -> None:
    ctx.at(8)
    sigkill(ctx.roles, "beat")
    time.sleep(2)
    restart(ctx.roles, "beat")


def kill_redis(ctx: Ctx) -> None:
    ctx.at(8)
    ctx.redis.kill()
    time.sleep(5)
    ctx.redis.start()  # empty: no persistence


def kill_worker_and_redis(ctx: Ctx) -> None:
    ctx.at(8)
    sigkill(ctx.roles, "worker")
    ctx.redis.kill()
    time.sleep(5)
    ctx.redis.start()
    restart(ctx.roles, "worker")


def kill_broker(ctx: Ctx) -> None:
    ctx.at(8)
    ctx.fault_at = time.monotonic()
    ctx.broker.kill()
    time.sleep(5)
    ctx.broker.start()


def postgres_down(ctx: Ctx) -> None:
    ctx.at(6)
    ctx.db.block()
    time.sleep(30)
    ctx.db.unblock()


def poison(ctx: Ctx) -> None:
    return None  # the poison records are part of the load


def kill_relay_while_approving(ctx: Ctx) -> None:
    """Wait for proposals, approve them one by one, and SIGKILL the relay the moment each one's
    message shows on the approved topic: between Kafka's ack and the relay marking the row sent,
    or just after (publish-then-mark is at-least-once by design)."""
    deadline = time.monotonic() + 180
    ids: list[str] = []
    while time.monotonic() < deadline and len(ids) < 3:
        time.sleep(2)
        with ctx.db.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(
                text("SELECT id FROM proposals WHERE status = 'pending' ORDER BY id"))]  # fmt: skip
    topic = ctx.settings.topic_approved
    consumer = KafkaConsumer(
        bootstrap_servers=ctx.broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    approved = kills = 0
    try:
        for proposal_id in ids:
            try:
                ctx.roles.run("review", "approve", proposal_id, "--actor", "chaos")
                approved += 1
            except RuntimeError as exc:
                ctx.notes.append(f"approve {proposal_id} failed: {str(exc)[-120:]}")
                continue
            until = time.monotonic() + 20
            while time.monotonic() < until and not consumer.poll(timeout_ms=20):
                pass
            sigkill(ctx.roles, "relay")
            kills += 1
            restart(ctx.roles, "relay")
    finally:
        consumer.close()
    ctx.notes.append(f"{approved} approved, relay SIGKILLed as each was published")


def no_fault(ctx: Ctx) -> None:
    return None


SCENARIOS = [
    Spec("baseline", "no fault (baseline)", no_fault),
    Spec("ingest", "SIGKILL ingest ×3", kill_ingest_repeatedly),
    Spec("worker", "SIGKILL worker main process", kill_worker_main),
    Spec("pool", "SIGKILL pool children ×3", kill_pool_children),
    Spec("beat", "SIGKILL beat", kill_beat),
    Spec("relay", "SIGKILL relay while approving", kill_relay_while_approving, approve=True),
    Spec("redis", "Redis killed, restarted empty", kill_redis),
    Spec("worker+redis", "SIGKILL worker + Redis restarted empty", kill_worker_and_redis),
    Spec("broker", "Kafka broker killed, restarted", kill_broker, may_lose=True),
    Spec("postgres", "PostgreSQL unavailable 30 s", postgres_down),
    Spec("poison", "poison records (bad JSON, schema)", poison, poison=20),
]
BY_NAME = {s.name: s for s in SCENARIOS}


# --- reporting -------------------------------------------------------------------------------

HEADER = ("scenario", "produced", "acked", "lost", "dup rows", "dup pending", "dup outbox",
          "failing", "stuck", "parked", "recover s", "notes")  # fmt: skip


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in results:
        recover = f"{r.recover_s:.1f}" if r.recover_s is not None else "not in time"
        cells = (r.title, r.produced, r.acked, r.lost, r.dup_rows, r.dup_pending, r.dup_outbox,
                 r.failing, r.stuck, r.parked, recover, "; ".join(r.notes))  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _wait(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def _try(action: Callable[[], object]) -> bool:
    try:
        action()
        return True
    except Exception:  # noqa: BLE001 - retried by the caller
        return False


@contextlib.contextmanager
def _quiet_kafka() -> Iterator[None]:
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"scenarios (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--per-mode", type=int, default=45,
                        help="failing interactions per planted mode (healthy: 7x)")  # fmt: skip
    args = parser.parse_args(argv)
    results = []
    with _quiet_kafka():
        for name in args.names or list(BY_NAME):
            started = time.monotonic()
            result = run(BY_NAME[name], per_mode=args.per_mode)
            results.append(result)
            print(f"[chaos] {name}: {'ok' if result.ok else 'FAILED'} "
                  f"({time.monotonic() - started:.0f} s) {result}", flush=True)  # fmt: skip
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
