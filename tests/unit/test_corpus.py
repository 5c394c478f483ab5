"""Candidate corpora: chunking, storage and the FAISS index (SQLite and PostgreSQL), and what a
knowledge-gap proposal makes of them: the matching documents the retriever never returned, or
the spec of the missing document. The last tests use the real embedding model (loaded once)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from refinery.corpus.chunking import CorpusError, Document, chunk, read_jsonl, read_path
from refinery.corpus.index import ChunkMeta, CorpusHit, CorpusIndex
from refinery.corpus.store import add_documents, corpus_index, corpus_summary, list_documents
from refinery.propose.drafting import (
    DraftInput,
    MemberEvidence,
    distinct_questions,
    draft,
    rag_candidates,
)
from refinery.store.db import migrate, session_factory
from schemas.artifacts import check_artifact
from schemas.proposals import Evidence, RagSourceProposal

DEMO_CORPUS = Path(__file__).resolve().parents[2] / "refinery" / "demo" / "corpus"


class BagOfWords:
    """A small deterministic embedder: hashed words, L2-normalized."""

    name = "bag-of-words-test"
    dim = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


# --- chunking -----------------------------------------------------------------------------------


def test_markdown_is_chunked_by_heading_and_each_chunk_keeps_its_heading_path() -> None:
    doc = Document(
        "a.md",
        "A",
        "# Guide\nIntro.\n\n## Setup\nStep one.\n\nStep two.\n### Wifi\nJoin it.\n",
        "markdown",
    )
    chunks = chunk(doc, 200)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Guide", "Intro."),
        ("Guide > Setup", "Step one.\n\nStep two."),
        ("Guide > Setup > Wifi", "Join it."),
    ]
    assert [c.index for c in chunks] == [0, 1, 2]


def test_chunks_never_exceed_the_bound_and_lose_no_words() -> None:
    words = [f"w{i}" for i in range(600)]
    text = "# T\n" + ". ".join(" ".join(words[i : i + 12]) for i in range(0, 600, 12)) + "\n"
    text += "\n" + "x" * 500 + "\n"  # one word longer than the bound
    chunks = chunk(Document("b.md", "B", text, "markdown"), 120)
    assert all(len(c.text) <= 120 for c in chunks)
    rebuilt = " ".join(c.text for c in chunks).replace(".", " ").split()
    assert "".join(w for w in rebuilt if w.startswith("x")) == "x" * 500
    assert [w for w in rebuilt if not w.startswith("x")] == words


def test_html_sections_come_from_headings_and_scripts_are_dropped() -> None:
    html = (
        "<html><head><title>t</title><script>var x=1;</script></head><body>"
        "<h1>Warranty</h1><p>Twelve months &amp; free repairs.</p>"
        "<h2>Claims</h2><ul><li>Open Orders.</li><li>Pick the item.</li></ul></body></html>"
    )
    doc = read_jsonl(json.dumps({"id": "w.html", "text": html, "format": "html"}))[0]
    assert doc.title == "Warranty"
    chunks = chunk(doc, 500)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Warranty", "Twelve months & free repairs."),
        ("Warranty > Claims", "Open Orders.\n\nPick the item."),
    ]
    assert not any("var x" in c.text for c in chunks)


def test_a_folder_reads_its_text_files_with_relative_ids(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# Alpha\nText a.\n")
    (tmp_path / "b.txt").write_text("Plain b.\n")
    (tmp_path / "c.png").write_bytes(b"\x89PNG")
    docs = read_path(tmp_path)
    assert [(d.doc_id, d.title, d.format) for d in docs] == [
        ("b.txt", "b.txt", "text"),
        ("sub/a.md", "Alpha", "markdown"),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not JSON"),
        (json.dumps({"text": "x"}), "document id"),
        (json.dumps({"id": "a", "text": "  "}), "no text"),
        (json.dumps({"id": "a", "text": "x", "format": "pdf"}), "format"),
    ],
)
def test_bad_jsonl_documents_are_refused_with_the_reason(line: str, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        read_jsonl(line)


# --- storage and index --------------------------------------------------------------------------


def test_registration_versions_the_corpus_replaces_documents_and_rebuilds_the_index(
    db_url,
) -> None:
    migrate(db_url)
    sessions = session_factory(db_url)
    embedder = BagOfWords()
    docs = [
        Document(
            "warranty.md", "Warranty", "# Warranty\nRefurbished warranty cover.\n", "markdown"
        ),
        Document("shipping.md", "Shipping", "# Shipping\nParcels ship daily.\n", "markdown"),
    ]
    with sessions.begin() as session:
        assert corpus_index(session, "app", embedder.name) is None
        first = add_documents(session, "app", docs, embedder, max_chunk_chars=500)
    assert (first.version, first.documents, first.chunks) == (1, 2, 2)
    with sessions() as session:
        index = corpus_index(session, "app", embedder.name)
        assert index is not None and index.version == 1 and len(index) == 2
        assert corpus_index(session, "app", embedder.name) is index  # cached per version
        assert corpus_index(session, "other-app", embedder.name) is None
        hits = index.search(embedder.embed(["refurbished warranty"]), 2)[0]
        assert hits[0].doc_id == "warranty.md" and hits[0].score > hits[1].score
    new_warranty = Document("warranty.md", "Warranty", "# Warranty\n\nA.\n\n## B\nC.\n", "markdown")
    with sessions.begin() as session:
        second = add_documents(session, "app", [new_warranty], embedder, max_chunk_chars=500)
    assert (second.version, second.documents, second.chunks) == (2, 2, 3)
    with sessions() as session:
        assert [(d.doc_id, d.chunks) for d in list_documents(session, "app")] == [
            ("shipping.md", 1),
            ("warranty.md", 2),
        ]
        rebuilt = corpus_index(session, "app", embedder.name)
        assert rebuilt is not None and rebuilt.version == 2 and len(rebuilt) == 3
        # Chunks embedded by another model are not searched with this one's vectors.
        other = corpus_index(session, "app", "another-model")
        assert other is not None and len(other) == 0
    with sessions.begin() as session:
        add_documents(session, "app", docs[1:], embedder, max_chunk_chars=500, replace=True)
        summary = corpus_summary(session, "app")
    assert (summary.version, summary.documents) == (3, 1)


# --- drafting -----------------------------------------------------------------------------------


def _hit(doc_id: str, score: float, chunk_id: int = 1) -> CorpusHit:
    return CorpusHit(doc_id, doc_id.title(), "", chunk_id, score, f"snippet of {doc_id}")


def _gap_member(i: int, hits: list[CorpusHit], sources=None, vector=None) -> MemberEvidence:
    return MemberEvidence(
        interaction_id=f"i{i}",
        query=f"question {i}?",
        response="I don't know.",
        sources=sources or [],
        feedback=[("thumbs_down", None, None)],
        corpus_hits=hits,
        vector=vector,
    )


def _rag_input(members: list[MemberEvidence], corpus_version: int | None = 1) -> DraftInput:
    return DraftInput(
        app_id="app",
        cluster_id="c_1",
        keywords=["warranty", "refurbished"],
        members=members,
        evidence=Evidence(
            cluster_id="c_1",
            label="warranty refurbished",
            keywords=["warranty", "refurbished"],
            size=len(members),
            examples=[],
        ),
        prompt_name="default",
        prompt_version=None,
        prompt_text="",
        retrieval_low_score=0.35,
        retrieval_gap_fraction=0.5,
        min_corrections=3,
        corpus_version=corpus_version,
        rag_match_floor=0.5,
        rag_candidate_min_share=0.2,
        rag_max_candidates=3,
    )


def test_candidates_are_ranked_by_queries_matched_and_exclude_what_the_retriever_returned() -> None:
    members = [
        _gap_member(i, [_hit("warranty.md", 0.7 + i / 100), _hit("returns.md", 0.55)])
        for i in range(6)
    ]
    members += [
        _gap_member(
            6, [_hit("faq.md", 0.9)], sources=[{"source_id": "faq.md", "score": 0.2}]
        ),  # returned already
        _gap_member(7, [_hit("once.md", 0.95)]),  # one query of 10: a neighbour
        _gap_member(8, [_hit("shipping.md", 0.3)]),  # under the floor
        _gap_member(9, []),
    ]
    candidates = rag_candidates(_rag_input(members))
    assert [(c.doc_id, c.matched_queries) for c in candidates] == [
        ("warranty.md", 6),
        ("returns.md", 6),
    ]
    assert candidates[0].score == pytest.approx(0.725) and candidates[0].best_score == 0.75
    proposal = draft(_rag_input(members))
    assert isinstance(proposal, RagSourceProposal)
    assert [c.doc_id for c in proposal.artifact.candidate_documents] == [
        "warranty.md",
        "returns.md",
    ]
    assert proposal.artifact.missing_document is None
    assert "these 2 documents" in proposal.rationale and "warranty.md" in proposal.rationale
    check_artifact(proposal.kind, proposal.artifact.model_dump())


def test_without_a_match_the_proposal_specifies_the_missing_document() -> None:
    base = np.eye(4, dtype=np.float32)
    near = base[0] * 0.96 + base[1] * 0.28
    near /= np.linalg.norm(near)
    members = [
        _gap_member(0, [_hit("shipping.md", 0.3)], vector=base[0]),
        _gap_member(1, [], vector=near),  # cosine 0.96 to the first: the same question
        _gap_member(2, [], vector=base[2]),
    ]
    members[1].query = "question 0, worded differently?"
    members.append(_gap_member(3, [], vector=base[3]))
    members[3].feedback.append(("correction", None, "Refurbished items carry 12 months of cover."))
    proposal = draft(_rag_input(members))
    assert isinstance(proposal, RagSourceProposal)
    spec = proposal.artifact.missing_document
    assert proposal.artifact.candidate_documents == [] and spec is not None
    assert spec.questions == ["question 0?", "question 2?", "question 3?"]
    assert spec.corrected_facts == ["Refurbished items carry 12 months of cover."]
    assert "warranty refurbished" in spec.title.lower()
    assert "write the missing document" in proposal.rationale
    # No corpus registered: the same spec, and the rationale says why.
    unregistered = draft(_rag_input(members, corpus_version=None))
    assert isinstance(unregistered, RagSourceProposal)
    assert unregistered.artifact.missing_document == spec
    assert "registered no candidate corpus" in unregistered.rationale


def test_distinct_questions_merge_same_text_without_vectors() -> None:
    members = [_gap_member(i, []) for i in range(3)]
    members[1].query = "  QUESTION 0? "
    assert distinct_questions(members, 0.9) == ["question 0?", "question 2?"]


# --- the real model: the demo corpus against the demo's knowledge gap ----------------------------


@pytest.fixture(scope="module")
def model():
    from refinery.embed.embedder import get_embedder
    from refinery.settings import Settings

    return get_embedder(Settings())


def test_the_demo_corpus_answers_the_demo_knowledge_gap(model) -> None:
    from refinery.corpus.chunking import embedding_text
    from refinery.demo.workload import generate
    from refinery.embed.keys import normalize_query
    from refinery.settings import Settings

    settings = Settings()
    chunks = [c for d in read_path(DEMO_CORPUS) for c in chunk(d, settings.corpus_chunk_max_chars)]
    index = CorpusIndex(
        1,
        [ChunkMeta(i, c.doc_id, c.title, c.heading, c.text) for i, c in enumerate(chunks)],
        model.embed([embedding_text(c) for c in chunks]),
    )
    gap = [e for e in generate().interactions if e["metadata"]["mode"] == "knowledge_gap"]
    vectors = model.embed([normalize_query(e["query"]) for e in gap])
    hits = index.search(vectors, settings.rag_hits_per_query)
    members = [
        _gap_member(i, h, vector=v) for i, (h, v) in enumerate(zip(hits, vectors, strict=True))
    ]
    for m, e in zip(members, gap, strict=True):
        m.query = e["query"]
    data = _rag_input(members)
    data.rag_match_floor = settings.rag_match_floor
    data.question_merge_similarity = settings.question_merge_similarity
    candidates = rag_candidates(data)
    assert candidates[0].doc_id == "refurbished-warranty.md"
    assert candidates[0].matched_queries == len(members)
    # Nothing matches a far stricter floor: then the spec merges the product variants.
    data.rag_match_floor = 0.95
    proposal = draft(data)
    assert isinstance(proposal, RagSourceProposal)
    spec = proposal.artifact.missing_document
    assert spec is not None and 3 <= len(spec.questions) < len({m.query for m in members})
