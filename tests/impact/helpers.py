"""Helpers (no tests) for the impact tests: a cluster with its centroid on a topic of the small
deterministic embedder, approved proposals, and traffic around a refinement."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from refinery.impact.review_calls import approve
from refinery.ingest.storage import query_hash
from refinery.store.models import Cluster, Interaction
from tests.api.helpers import insert_proposal
from tests.unit.test_cluster_service_support import TopicEmbedder, direction

_ids = itertools.count(1)
APP = "nimbus-support"

__all__ = ["TopicEmbedder", "add_cluster", "add_traffic", "approved_proposal"]


def add_cluster(sessions: sessionmaker[Session], topic: str) -> str:
    cluster_id = f"c_{uuid.uuid4().hex[:16]}"
    centroid = direction(topic).astype(np.float32)
    with sessions.begin() as session:
        session.add(
            Cluster(
                id=cluster_id, app_id=APP, label=topic, keywords=[topic], size=30,
                centroid=centroid.tobytes(), vector_sum=centroid.tobytes(),
            )
        )  # fmt: skip
    return cluster_id


def approved_proposal(sessions: sessionmaker[Session], kind: str, cluster_id: str) -> str:
    proposal_id = insert_proposal(sessions, kind, app_id=APP, cluster_id=cluster_id)
    approve(sessions, proposal_id, actor="reviewer-user", topic="t.approved")
    return proposal_id


def add_traffic(
    sessions: sessionmaker[Session],
    *,
    topic_word: str,
    total: int,
    failing: int,
    start: datetime,
    prompt_version: str = "v1",
) -> None:
    """`total` interactions whose queries carry `topic_word`, the first `failing` of them failing,
    one a minute from `start`."""
    with sessions.begin() as session:
        for i in range(total):
            n = next(_ids)
            query = f"question {n} about the {topic_word}"
            session.add(
                Interaction(
                    event_id=f"e{n}-{uuid.uuid4().hex[:6]}", app_id=APP, interaction_id=f"i{n}",
                    session_id=f"s{n}", occurred_at=start + timedelta(minutes=i), query=query,
                    response="answer", prompt_name="support", prompt_version=prompt_version,
                    query_hash=query_hash(query), failing=i < failing,
                )
            )  # fmt: skip
