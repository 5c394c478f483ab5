"""Complaint classes of comments (refinery.signals.complaints) with the real embedding model: clear
cases in any wording, negations that must not count, vague comments as "other", and the rule the
cluster stage and drafting share (refinery.signals.evidence.behaviour_complaints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refinery.demo.workload import BEHAVIOUR_COMMENTS
from refinery.embed.embedder import SentenceTransformerEmbedder
from refinery.signals import complaints
from refinery.signals.complaint_prototypes import PROTOTYPES
from refinery.signals.complaints import OTHER, ComplaintClassifier, clauses, negated_attribute
from refinery.signals.evidence import behaviour_complaints

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def classifier():
    embedder = SentenceTransformerEmbedder(None, name="all-MiniLM-L6-v2", batch_size=64)
    complaints.set_embedder(embedder)
    try:
        yield complaints.classifier()
    finally:
        complaints.set_embedder(None)


def _labels(classifier: ComplaintClassifier, texts: list[str]) -> list[str]:
    return [c.label for c in classifier.classify(texts)]


def test_clear_cases_in_other_words(classifier) -> None:
    cases = {
        "This reply goes on and on, I just wanted the gist.": "length",
        "Could you please use bullet points for the steps?": "format",
        "Pretty rude way to talk to a customer.": "tone",
        "I wrote in Spanish, why is the answer in English?": "language",
        "That price is incorrect.": "wrong_facts",
        "It refused to answer a simple question.": "refusal",
        "This information is out of date.": "outdated",
    }
    assert _labels(classifier, list(cases)) == list(cases.values())


def test_the_demo_comments_are_length(classifier) -> None:
    assert set(_labels(classifier, list(BEHAVIOUR_COMMENTS))) == {"length"}


def test_negations_do_not_count(classifier) -> None:
    assert _labels(
        classifier,
        [
            "not too long, just wrong",
            "It wasn't too long, but the tone was rude.",
            "The length is fine.",
            "Nicht zu lang, aber falsch.",
        ],
    ) == ["wrong_facts", "tone", OTHER, "wrong_facts"]
    assert negated_attribute("not too long") and negated_attribute("no es demasiado largo")
    assert not negated_attribute("not detailed enough")
    assert clauses("not too long, just wrong") == ["not too long", "wrong"]


def test_vague_comments_are_other(classifier) -> None:
    assert _labels(classifier, ["meh", "hmm", "ok whatever"]) == [OTHER, OTHER, OTHER]


def test_behaviour_rule_reads_the_classifier(classifier) -> None:
    def fb(*texts: str, kind: str = "comment"):
        return [("thumbs_down", None, None)] + [(kind, None, t) for t in texts]

    assert behaviour_complaints(fb("not too long, just wrong")) == []  # facts: no behaviour
    assert behaviour_complaints(fb("Way too long.")) == ["length"]
    assert behaviour_complaints(fb("meh")) == [OTHER]  # a complaint no class names
    assert behaviour_complaints(fb("meh", "Way too long.")) == ["length"]
    # An edit is the user's own answer, not a complaint: vague text in it counts for nothing.
    assert behaviour_complaints(fb("Click Settings, then Reset.", kind="edit")) == []


def test_prototypes_and_evaluation_sets_do_not_overlap() -> None:
    def norm(text: str) -> str:
        return " ".join(text.lower().strip(" .!?¿¡").split())

    prototypes = {norm(t) for texts in PROTOTYPES.values() for t in texts}
    for name in ("complaints_eval.tsv", "complaints_holdout.tsv"):
        rows = [
            line.split("\t")
            for line in (DATA / name).read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert all(len(r) == 3 and r[1] in complaints.CLASSES for r in rows), name
        assert not {norm(r[2]) for r in rows} & prototypes, name
    evaluation = (DATA / "complaints_eval.tsv").read_text(encoding="utf-8").splitlines()
    assert sum(1 for line in evaluation if line.strip() and not line.startswith("#")) >= 300
