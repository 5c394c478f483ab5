"""Benchmark of the review API: list and detail latency, 10,000 proposals, 50 concurrent clients.

    python bench/bench_api.py [--proposals 10000] [--clients 50] [--requests 40]
                              [--db sqlite,postgres] [--workers 1]

For each database: a fresh one (a SQLite file in a temp dir; a new PostgreSQL database next to
TEST_POSTGRES_ADMIN_URL's), migrated and filled with proposals of the three kinds (a third each,
realistic payloads, one audit entry each); then `uvicorn --factory refinery.api.app:app_from_env`
in a subprocess on 127.0.0.1, and `--clients` httpx clients (asyncio) each sending `--requests`
requests back to back, per endpoint:
  list         GET /v1/proposals?limit=50                (newest page)
  list+filter  GET /v1/proposals?status=pending&kind=...&offset=...
  detail       GET /v1/proposals/{random id}
and, as the ceiling of the harness itself, GET /livez (no database, no token).
Each endpoint runs twice: the clients back to back (saturation: latency is then mostly queueing,
50 / throughput), and paced, each client sending one request every --pace-s seconds at a random
phase (50 reviewers clicking fast). Prints p50 / p95 / p99 / max latency and throughput; asserts
nothing. The target is p99 < 50 ms. The client runs on the same machine as the server and shares
its CPUs; the /livez row shows what the harness and HTTP stack alone can do there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinery.api.tokens import Role, create_token  # noqa: E402
from refinery.store.db import migrate, session_factory  # noqa: E402
from refinery.store.models import AuditEntry, ProposalRow  # noqa: E402
from tests.api.helpers import insert_proposal  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
KINDS = ["system_prompt_edit", "rag_source", "fine_tune_dataset"]
STATUSES = ["pending"] * 6 + ["approved", "rejected", "superseded", "applied"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(url: str, n: int) -> tuple[list[str], str]:
    """n proposals (payloads copied from one real-looking proposal per kind) and a viewer token."""
    migrate(url)
    sessions = session_factory(url)
    templates = {}
    for kind in KINDS:  # one of each through the test helper, for realistic payloads
        pid = insert_proposal(sessions, kind)
        with sessions() as s:
            templates[kind] = s.get(ProposalRow, pid).payload
    ids = []
    now = datetime.now(UTC)
    rng = random.Random(7)
    batch_rows, batch_audit = [], []
    with sessions.begin() as s:
        for i in range(n - len(KINDS)):
            kind = KINDS[i % 3]
            pid = f"p_{uuid.uuid4().hex[:16]}"
            status = rng.choice(STATUSES)
            created = now - timedelta(minutes=i)
            batch_rows.append(
                {
                    "id": pid,
                    "app_id": f"app-{i % 20}",
                    "cluster_id": f"c_{uuid.uuid4().hex[:16]}",
                    "kind": kind,
                    "status": status,
                    "version": 1,
                    "title": f"Proposal {i} ({kind})",
                    "payload": templates[kind],
                    "fingerprint": uuid.uuid4().hex,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            batch_audit.append(
                {
                    "proposal_id": pid,
                    "actor": "system:proposer",
                    "action": "create",
                    "from_status": None,
                    "to_status": "pending",
                    "outcome": "ok",
                    "at": created,
                }
            )
            ids.append(pid)
            if len(batch_rows) == 1000:
                s.execute(insert(ProposalRow), batch_rows)
                s.execute(insert(AuditEntry), batch_audit)
                batch_rows, batch_audit = [], []
        if batch_rows:
            s.execute(insert(ProposalRow), batch_rows)
            s.execute(insert(AuditEntry), batch_audit)
        _, secret = create_token(s, name="bench", role=Role.VIEWER)
    if url.startswith("postgresql"):
        with create_engine(url).connect() as c:
            c.execute(text("ANALYZE"))
    return ids, secret


def start_server(url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "refinery.api.app:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
            # Longer than any gap a CPU-starved client leaves on a connection: with the default
            # 5 s the server may close a pooled connection just as the client reuses it.
            "--timeout-keep-alive",
            "60",
        ],
        env=env,
        cwd=tempfile.gettempdir(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


async def load(
    base: str, token: str, paths: list[str], clients: int, per_client: int, interval_s: float = 0.0
) -> tuple[list[float], float, int]:
    """`clients` concurrent clients, `per_client` requests each: back to back (interval_s=0), or
    one every interval_s seconds per client, at a random phase (an open, paced load)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            next_at = time.perf_counter() + rng.uniform(0, interval_s)
            for _ in range(per_client):
                if interval_s:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval_s
                path = rng.choice(paths)
                start = time.perf_counter()
                try:
                    r = await client.get(path)
                except httpx.TransportError:
                    errors += 1  # counted, and the run goes on
                    continue
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1000


def bench_db(name: str, url: str, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ids, token = fill(url, args.proposals)
    print(
        f"[{name}] {args.proposals} proposals inserted in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    port = _free_port()
    server = start_server(url, port, args.workers)
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(1)
    endpoints = {
        # No database, no auth: the ceiling of this client + uvicorn on this machine.
        "livez": ["/livez"],
        "list": ["/v1/proposals?limit=50"],
        "list+filter": [
            f"/v1/proposals?status=pending&kind={rng.choice(KINDS)}&limit=50"
            f"&offset={rng.randrange(0, 2000, 50)}"
            for _ in range(50)
        ]
        + [f"/v1/proposals?app=app-{i}&limit=50" for i in range(20)],
        "detail": [f"/v1/proposals/{rng.choice(ids)}" for _ in range(2000)],
    }
    try:
        asyncio.run(
            load(base, token, endpoints["list"] + endpoints["detail"][:50], 10, 20)
        )  # warm-up
        header = (
            f"[{name}] {'load':<17} {'endpoint':<12} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'max ms':>8} {'req/s':>7} {'errors':>6}"
        )
        print(header)
        loads = [
            (f"{args.clients} back-to-back", 0.0),
            (f"{args.clients} x {1 / args.pace_s:g}/s paced", args.pace_s),
        ]
        for load_label, interval in loads:
            for label, paths in endpoints.items():
                lat, elapsed, errors = asyncio.run(
                    load(base, token, paths, args.clients, args.requests, interval)
                )
                print(
                    f"[{name}] {load_label:<17} {label:<12} {len(lat):>8} {pct(lat, 0.5):>8.1f} "
                    f"{pct(lat, 0.95):>8.1f} {pct(lat, 0.99):>8.1f} {max(lat) * 1000:>8.1f} "
                    f"{len(lat) / elapsed:>7.0f} {errors:>6}",
                    flush=True,
                )
        single, _, _ = asyncio.run(load(base, token, endpoints["detail"], 1, 200))
        single_list, _, _ = asyncio.run(load(base, token, endpoints["list"], 1, 200))
        print(
            f"[{name}] one client alone: detail p50 {pct(single, 0.5):.1f} ms "
            f"p99 {pct(single, 0.99):.1f} ms; "
            f"list p50 {pct(single_list, 0.5):.1f} ms p99 {pct(single_list, 0.99):.1f} ms"
        )
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proposals", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="requests per client per endpoint")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--pace-s", type=float, default=0.5, help="paced run: seconds between a client's requests"
    )
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    print(
        f"review API: {args.proposals} proposals, {args.clients} concurrent clients x "
        f"{args.requests} requests, "
        f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs",
        flush=True,
    )
    for name in args.db.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                bench_db("sqlite", f"sqlite:///{tmp}/bench.db", args)
        elif name == "postgres":
            db = f"refinery_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as c:
                    c.execute(text(f'CREATE DATABASE "{db}"'))
            except Exception as exc:  # no PostgreSQL here: say so and go on
                print(
                    f"[postgres] skipped: cannot create a database at {POSTGRES_ADMIN_URL}: {exc}"
                )
                continue
            url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"
            try:
                bench_db("postgres", url, args)
            finally:
                from refinery.store.db import engine_for

                engine_for(url).dispose()
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
