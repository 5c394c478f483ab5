"""`refinery demo` on a database that already holds a demo run says so and stops (exit 1),
instead of ingesting nothing but duplicates and reporting every planted mode missing."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from refinery.demo.run import run_demo
from refinery.demo.workload import APP_ID
from refinery.settings import Settings
from refinery.store.db import migrate, session_factory
from refinery.store.models import Interaction, ProposalRow


def test_a_second_demo_on_the_same_database_stops_with_a_reason(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    migrate(url)
    with session_factory(url).begin() as session:
        session.add(
            Interaction(
                event_id="e1",
                app_id=APP_ID,
                interaction_id="i1",
                session_id="s1",
                occurred_at=datetime.now(UTC),
                query="q",
                response="r",
                sources=[],
                metadata_={},
                query_hash="h",
            )
        )
    out = io.StringIO()
    settings = Settings(_env_file=None, database_url=url, embedded_kafka_port=0)
    assert run_demo(settings, out=out) == 1
    assert "already holds a demo run" in out.getvalue()
    with session_factory(url)() as session:  # nothing was produced, ingested or proposed
        assert session.query(Interaction).count() == 1
        assert session.query(ProposalRow).count() == 0
