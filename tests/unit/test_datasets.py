"""Fine-tuning datasets made ready to train on: near-duplicates dropped by embedding, PII
re-checked, a split seeded by the proposal id, token counts, and the three exports checked by
their validators. The real embedding model and its tokenizer, loaded once."""

from __future__ import annotations

import json

import pytest

from refinery.propose.datasets import (
    VALIDATORS,
    embedding_tokenizer,
    export_files,
    prepare,
    validate_dpo,
    validate_hf,
    validate_openai,
)
from refinery.propose.drafting import DraftInput, MemberEvidence, draft
from refinery.redact.redactor import Redactor
from schemas.artifacts import ArtifactInvalid
from schemas.proposals import Evidence, FineTuneDataset, FineTuneDatasetProposal

WRONG = "A 25% restocking fee applies to every return."


def _corrected(i: int, query: str, answer: str, response: str = WRONG) -> MemberEvidence:
    return MemberEvidence(
        interaction_id=f"i{i}",
        query=query,
        response=response,
        sources=[],
        feedback=[("rating", 1.0, None), ("correction", None, answer)],
        occurred_at=f"2026-01-01T00:00:{i:02d}",
    )


MEMBERS = [
    _corrected(0, "What is the restocking fee after 45 days?", "After 30 days a 15% fee applies."),
    # The same question and answer, worded a little differently: a near-duplicate.
    _corrected(1, "What's the restocking fee after 45 days?", "After 30 days, a 15% fee applies."),
    _corrected(
        2, "Do I pay a fee returning a laptop after 7 days?", "No: within 30 days it's free."
    ),
    _corrected(3, "Restocking fee for an opened camera at 60 days?", "15% after 30 days."),
    _corrected(
        4,
        "How do I return my tablet? Mail me at jane.doe@example.com",
        "Start it from Orders; we wrote to you at jane.doe@example.com.",
    ),
    _corrected(5, "Is shipping free on returns?", "Yes, the return label is prepaid."),
    _corrected(6, "Can I return a phone after 90 days?", "Returns close after 90 days."),
]


def _dataset() -> FineTuneDataset:
    data = DraftInput(
        app_id="app",
        cluster_id="c_1",
        keywords=["restocking", "fee"],
        members=MEMBERS,
        evidence=Evidence(
            cluster_id="c_1", label="restocking fee", keywords=["restocking"], size=7, examples=[]
        ),
        prompt_name="support",
        prompt_version="v1",
        prompt_text="You are the support assistant.",
        retrieval_low_score=0.35,
        retrieval_gap_fraction=0.5,
        min_corrections=3,
    )
    proposal = draft(data)
    assert isinstance(proposal, FineTuneDatasetProposal)
    return proposal.artifact


@pytest.fixture(scope="module")
def tools():
    from refinery.embed import embedding_model_name
    from refinery.embed.embedder import get_embedder
    from refinery.settings import Settings

    settings = Settings()
    return {
        "embedder": get_embedder(settings),
        "redactor": Redactor(),
        "tokens": embedding_tokenizer(None, embedding_model_name(settings)),
        "duplicate_similarity": settings.dataset_duplicate_similarity,
        "validation_share": settings.dataset_validation_share,
    }


def test_drafted_dataset_carries_the_app_answer_each_correction_replaces() -> None:
    artifact = _dataset()
    assert artifact.rows == 7 and len(artifact.preference_pairs) == 7
    pair = next(p for p in artifact.preference_pairs if "laptop" in p.prompt)
    assert (pair.chosen, pair.rejected) == ("No: within 30 days it's free.", WRONG)


def test_prepare_drops_near_duplicates_redacts_pii_and_splits_reproducibly(tools) -> None:
    artifact = _dataset()
    prepared = prepare("p_0123456789abcdef", artifact, **tools)
    assert prepared.rows_in == 7 and prepared.duplicates_removed == 1
    rows = prepared.train + prepared.validation
    assert len(rows) == 6
    questions = [r["messages"][1]["content"] for r in rows]
    # Exactly one of the two restocking-after-45-days rows survives.
    assert sum("after 45 days" in q for q in questions) == 1
    # Distinct answers to near-identical questions are not duplicates.
    assert any("laptop" in q for q in questions) and any("60 days" in q for q in questions)
    assert prepared.pii_redactions.get("EMAIL") == 2
    assert "jane.doe@example.com" not in json.dumps(prepared.summary()) + json.dumps(rows)
    assert any("<EMAIL>" in r["messages"][2]["content"] for r in rows)
    # 20% of 6 rows: one for validation; the same proposal id always gives the same split.
    assert len(prepared.validation) == 1
    again = prepare("p_0123456789abcdef", artifact, **tools)
    assert again.validation == prepared.validation and again.train == prepared.train
    splits = {json.dumps(prepare(f"p_{n:016x}", artifact, **tools).validation) for n in range(6)}
    assert len(splits) > 1  # the seed is the proposal id, not a constant
    assert prepared.tokens["train"] > prepared.tokens["validation"] > 0
    # A word count's order of magnitude: the tokenizer neither pads nor truncates.
    words = sum(len(m["content"].split()) for r in prepared.train for m in r["messages"])
    assert words <= prepared.tokens["train"] <= 3 * words
    assert tools["tokens"].count("x " * 300) == 300
    assert "tokenizer" in prepared.tokenizer and "estimate" in prepared.summary()["tokens_note"]
    # DPO pairs follow the rows' split, redacted too.
    assert len(prepared.preference["train"]) == len(prepared.train)
    assert all(p["rejected"] == WRONG for p in prepared.preference["train"] if "fee" in p["prompt"])


@pytest.mark.parametrize("fmt", ["openai", "dpo", "hf"])
def test_every_export_passes_its_format_validator(tools, fmt: str) -> None:
    prepared = prepare("p_0123456789abcdef", _dataset(), **tools)
    files = export_files(prepared, fmt, "Restocking fees")
    VALIDATORS[fmt](files)
    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == fmt and manifest["rows"] == {"train": 5, "validation": 1}
    if fmt == "hf":
        assert validate_hf(files) == {
            "default/train": 5,
            "default/validation": 1,
            "preference/train": 5,
            "preference/validation": 1,
        }
        assert "an estimate for the target model" in files["README.md"].decode()


def test_hf_export_loads_with_the_datasets_library(tools, tmp_path) -> None:
    import datasets  # the dev extra's: the format's real consumer

    files = export_files(prepare("p_0123456789abcdef", _dataset(), **tools), "hf")
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    loaded = datasets.load_dataset(str(tmp_path))
    assert loaded["train"].num_rows == 5 and loaded["validation"].num_rows == 1
    pairs = datasets.load_dataset(str(tmp_path), "preference")
    assert set(pairs["train"].column_names) == {"prompt", "chosen", "rejected"}


@pytest.mark.parametrize(
    "line, check",
    [
        ({"messages": [{"role": "user", "content": "q"}]}, validate_openai),
        ({"messages": [{"role": "bot", "content": "q"}]}, validate_openai),
        ({"prompt": "q", "chosen": "a"}, validate_dpo),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, validate_dpo),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, validate_dpo),
    ],
)
def test_validators_refuse_rows_outside_their_format(line, check) -> None:
    with pytest.raises(ArtifactInvalid):
        check(json.dumps(line).encode() + b"\n")


def test_a_card_naming_a_missing_file_is_refused() -> None:
    card = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: x.jsonl\n---\n"
    )
    with pytest.raises(ArtifactInvalid, match="missing"):
        validate_hf({"README.md": card.encode()})
