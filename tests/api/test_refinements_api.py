"""Corpus registration and dataset exports over the API and the CLI (SQLite and PostgreSQL):
roles as the rest of the API has them, the corpus listed back, every export format valid. The
embedder is a small deterministic one (tests/unit/test_corpus.py); the tokenizer is real."""

from __future__ import annotations

import io
import zipfile

import pytest

from refinery.cli import build_parser
from refinery.propose.datasets import VALIDATORS
from refinery.store.models import ProposalRow
from tests.api.helpers import insert_proposal
from tests.unit.test_corpus import BagOfWords
from tests.unit.test_datasets import _dataset


@pytest.fixture(autouse=True)
def small_embedder(monkeypatch):
    import refinery.embed.embedder as embedder

    fake = BagOfWords()
    monkeypatch.setattr(embedder, "get_embedder", lambda settings: fake)
    return fake


def _dataset_proposal(sessions) -> str:
    from schemas.proposals import FineTuneDatasetProposal

    pid = insert_proposal(sessions, "fine_tune_dataset")
    with sessions.begin() as session:
        row = session.get(ProposalRow, pid)
        assert row is not None
        proposal = FineTuneDatasetProposal.model_validate(row.payload)
        row.payload = proposal.model_copy(update={"artifact": _dataset()}).model_dump(mode="json")
    return pid


DOCS = {
    "documents": [
        {"id": "warranty.md", "text": "# Warranty\nRefurbished items: 12 months.\n\n## Claims\nX."},
        {"id": "faq.html", "text": "<h1>FAQ</h1><p>Ask us.</p>", "format": "html"},
    ]
}


def test_reviewers_register_a_corpus_and_viewers_read_it(client, api_env) -> None:
    url = "/v1/apps/nimbus-support/corpus"
    assert client.post(url, json=DOCS).status_code == 401
    assert client.post(url, json=DOCS, headers=api_env.auth("viewer")).status_code == 403
    r = client.post(url, json=DOCS, headers=api_env.auth("reviewer"))
    assert r.status_code == 201, r.text
    assert r.json() == {
        "app_id": "nimbus-support",
        "version": 1,
        "documents": 2,
        "chunks": 3,
        "added_documents": 2,
        "added_chunks": 3,
    }
    listed = client.get(url, headers=api_env.auth("viewer")).json()
    assert listed["version"] == 1
    assert [(d["doc_id"], d["title"], d["chunks"]) for d in listed["documents"]] == [
        ("faq.html", "FAQ", 1),
        ("warranty.md", "Warranty", 2),
    ]
    bad = {"documents": [{"id": "x", "text": "t", "format": "pdf"}]}
    assert client.post(url, json=bad, headers=api_env.auth("admin")).status_code == 422
    empty = {"documents": []}
    assert client.post(url, json=empty, headers=api_env.auth("admin")).status_code == 422


@pytest.mark.parametrize("fmt", ["openai", "dpo", "hf"])
def test_export_downloads_a_valid_dataset(client, api_env, fmt: str) -> None:
    pid = _dataset_proposal(api_env.sessions)
    r = client.get(f"/v1/proposals/{pid}/export?format={fmt}", headers=api_env.auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        prefix = f"{pid}-{fmt}/"
        files = {n.removeprefix(prefix): z.read(n) for n in z.namelist()}
    VALIDATORS[fmt](files)
    if fmt != "hf":
        one = client.get(
            f"/v1/proposals/{pid}/export?format={fmt}&split=train", headers=api_env.auth("viewer")
        )
        assert one.headers["content-type"] == "application/jsonl"
        assert one.content == files["train.jsonl"]


def test_export_refuses_other_kinds_and_unknown_ids(client, api_env) -> None:
    other = insert_proposal(api_env.sessions, "rag_source")
    viewer = api_env.auth("viewer")
    assert client.get(f"/v1/proposals/{other}/export", headers=viewer).status_code == 409
    assert client.get("/v1/proposals/p_0000000000000000/export", headers=viewer).status_code == 404
    assert client.get(f"/v1/proposals/{other}/export").status_code == 401


def test_cli_exports_the_same_files(api_env, tmp_path, capsys) -> None:
    pid = _dataset_proposal(api_env.sessions)
    args = build_parser().parse_args(
        ["review", "export", pid, "--format", "hf", "--out", str(tmp_path)]
    )
    assert args.func(api_env.settings, args) == 0
    files = {
        str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    }
    VALIDATORS["hf"](files)
    assert "an estimate for the target model" in capsys.readouterr().out
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\nAlpha.\n")
    (corpus / "b.txt").write_text("Beta.\n")
    args = build_parser().parse_args(["corpus", "list", "nimbus-support"])
    assert args.func(api_env.settings, args) == 0
    assert "corpus version 0, 0 document(s)" in capsys.readouterr().out
    args = build_parser().parse_args(["corpus", "add", "nimbus-support", str(corpus)])
    assert args.func(api_env.settings, args) == 0
    assert "corpus version 1: 2 document(s)" in capsys.readouterr().out
    args = build_parser().parse_args(["corpus", "add", "nimbus-support", str(tmp_path / "none")])
    assert args.func(api_env.settings, args) == 2


def test_the_queue_sorts_by_expected_impact_in_the_api_the_ui_and_the_cli(
    client, api_env, capsys
) -> None:
    ids = {}
    for score in (12.5, None, 80.0, 40.0):
        pid = insert_proposal(api_env.sessions, "rag_source")
        with api_env.sessions.begin() as session:
            row = session.get(ProposalRow, pid)
            assert row is not None
            impact = None
            if score is not None:
                impact = {
                    "score": score,
                    "traffic_share": 0.1,
                    "user_share": 0.1,
                    "growth": 0.0,
                    "severity": 0.5,
                    "weights": {"traffic_share": 0.4},
                }
            row.payload = {
                **row.payload,
                "evidence": {**row.payload["evidence"], "expected_impact": impact},
            }
        ids[score] = pid
    expected = [ids[80.0], ids[40.0], ids[12.5], ids[None]]
    r = client.get("/v1/proposals?sort=impact", headers=api_env.auth("viewer"))
    assert r.status_code == 200 and r.json()["sort"] == "impact"
    assert [item["id"] for item in r.json()["items"]] == expected
    args = build_parser().parse_args(["review", "list", "--sort", "impact", "--json"])
    assert args.func(api_env.settings, args) == 0
    out = capsys.readouterr().out
    assert [out.index(pid) for pid in expected] == sorted(out.index(pid) for pid in expected)
    client.post("/ui/login", data={"token": api_env.tokens["viewer"]})
    page = client.get("/ui/?sort=impact")
    assert page.status_code == 200 and '<option value="impact" selected>' in page.text
    html = page.text
    assert [html.index(pid) for pid in expected] == sorted(html.index(pid) for pid in expected)
