"""The impact pass on SQLite and PostgreSQL: shipping reported or inferred from the prompt
version in traffic, before/after counts of the cluster's region, the verdict, one alert."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from refinery.impact.review_calls import report_applied
from refinery.impact.service import refresh_impacts
from refinery.store.db import migrate, session_factory
from refinery.store.models import OutboxRow, ProposalRow, RefinementImpact, utcnow
from tests.impact.helpers import TopicEmbedder, add_cluster, add_traffic, approved_proposal


def test_verdicts_of_inferred_reported_and_unshipped_refinements(db_url, make_settings) -> None:
    migrate(db_url)
    sessions = session_factory(db_url)
    settings = make_settings(database_url=db_url, topic_alerts="t.alerts")
    embedder = TopicEmbedder()
    now = utcnow()
    day_ago = now - timedelta(days=1)

    # A prompt edit; its approval registered v2, and traffic with v2 starts in an hour.
    prompt_edit = approved_proposal(sessions, "system_prompt_edit", add_cluster(sessions, "refund"))
    add_traffic(sessions, topic_word="refund", total=60, failing=45, start=day_ago)
    add_traffic(sessions, topic_word="shipping", total=80, failing=2, start=day_ago)
    add_traffic(
        sessions, topic_word="refund", total=60, failing=6, start=now + timedelta(hours=1),
        prompt_version="v2",
    )  # fmt: skip

    # A knowledge source reported applied now, after which its region fails more.
    source = approved_proposal(sessions, "rag_source", add_cluster(sessions, "password"))
    assert report_applied(sessions, source, actor="indexer", comment="indexed")
    add_traffic(sessions, topic_word="password", total=80, failing=40, start=day_ago)
    add_traffic(
        sessions, topic_word="password", total=80, failing=72, start=now + timedelta(minutes=5)
    )

    # A dataset approved and never shipped.
    dataset = approved_proposal(sessions, "fine_tune_dataset", add_cluster(sessions, "warranty"))

    result = refresh_impacts(sessions, settings, embedder)

    assert result.verdicts == {
        prompt_edit: "improved",
        source: "regressed",
        dataset: "not_applied",
    }
    assert result.inferred == [prompt_edit] and result.alerts == [source]
    with sessions() as s:
        edit = s.get(RefinementImpact, prompt_edit)
        assert edit is not None
        assert (edit.applied_how, edit.applied_version) == ("inferred", "v2")
        assert edit.detail["before"] == {"failing": 45, "total": 60}
        assert edit.detail["after"] == {"failing": 6, "total": 60}
        assert edit.detail["diff_high"] < 0
        assert edit.by_version == {
            "v1": {"failing": 45, "total": 60},
            "v2": {"failing": 6, "total": 60},
        }
        # The inferred shipping went through the review package: the queue says applied.
        assert s.get(ProposalRow, prompt_edit).status == "applied"  # type: ignore[union-attr]
        reported = s.get(RefinementImpact, source)
        assert reported is not None and reported.applied_how == "reported"
        assert reported.detail["after"] == {"failing": 72, "total": 80}
        alerts = s.scalars(select(OutboxRow).where(OutboxRow.topic == "t.alerts")).all()
        assert [(a.key, a.payload["type"]) for a in alerts] == [(source, "refinement_regressed")]
        assert alerts[0].payload["after"] == {"failing": 72, "total": 80}

    # Recomputed: the same verdicts, no second alert, the inferred time kept.
    again = refresh_impacts(sessions, settings, embedder)
    assert again.verdicts == result.verdicts and again.alerts == [] and again.inferred == []
    with sessions() as s:
        assert len(s.scalars(select(OutboxRow).where(OutboxRow.topic == "t.alerts")).all()) == 1
        edit = s.get(RefinementImpact, prompt_edit)
        assert edit is not None and edit.applied_how == "inferred"


def test_too_little_traffic_after_is_not_enough_data(sqlite_url, make_settings) -> None:
    migrate(sqlite_url)
    sessions = session_factory(sqlite_url)
    now = utcnow()
    source = approved_proposal(sessions, "rag_source", add_cluster(sessions, "refund"))
    assert report_applied(sessions, source, actor="indexer", comment=None)
    assert not report_applied(sessions, source, actor="indexer", comment="twice")
    add_traffic(sessions, topic_word="refund", total=60, failing=45, start=now - timedelta(days=1))
    add_traffic(sessions, topic_word="refund", total=4, failing=0, start=now + timedelta(minutes=1))

    result = refresh_impacts(sessions, make_settings(database_url=sqlite_url), TopicEmbedder())

    assert result.verdicts == {source: "not_enough_data"}
