"""What an artifact must be for its consumers to accept it, and the fields derived from it.

Pure functions, written once: drafting derives titles, diffs and instructions with them; review
re-derives them after an edit and checks every artifact with `check_artifact` before storing an
edit and again before approving (so what the outbox carries is what its consumers accept: a
system prompt with a diff that matches it, a source manifest with a topic, a dataset in OpenAI's
chat fine-tuning format).
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from schemas.proposals import Evidence, ProposalKind

# OpenAI chat fine-tuning: each line {"messages": [...]}, roles system / user / assistant, every
# content non-empty, at least one user message, the last message the assistant's target answer.
# Per-example and per-file bounds of our own, kept under OpenAI's (an example's tokens, roughly
# four characters each, stay under 64k).
DATASET_ROLES = ("system", "user", "assistant")
DATASET_MAX_ROWS = 50_000
DATASET_MAX_MESSAGES = 200
DATASET_MAX_ROW_CHARS = 200_000
PROMPT_MAX_CHARS = 200_000
TITLE_EXCERPT_CHARS = 60


class ArtifactInvalid(ValueError):
    """An artifact its consumers would refuse; `loc` names the field (and row) at fault."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {message}")
        self.loc = loc
        self.message = message


# --- derived fields ---------------------------------------------------------------------------


def prompt_diff(prompt_name: str, base_version: str | None, base: str, proposed: str) -> str:
    """Unified diff from the base prompt to the proposed one."""
    return "".join(
        difflib.unified_diff(
            base.splitlines(keepends=True),
            proposed.splitlines(keepends=True),
            fromfile=f"{prompt_name}@{base_version or 'none'}",
            tofile=f"{prompt_name}@proposed",
        )
    )


def added_instruction(base: str, proposed: str) -> str:
    """The text an edit adds to the prompt: its added non-blank lines, in order."""
    added = [
        line[1:].strip()
        for line in difflib.unified_diff(base.splitlines(), proposed.splitlines(), lineterm="")
        if line.startswith("+") and not line.startswith("+++")
    ]
    return "\n".join(line for line in added if line)


def topic_of(evidence: Evidence) -> str:
    """The topic a title names: the cluster's label, as the review pages show it; a merged
    proposal names its anchor's and counts the others."""
    label = evidence.label if evidence.label and evidence.label != "(no keywords)" else ""
    label = label or "uncategorized"
    others = len(evidence.parts) - 1
    if others > 0:
        label += f" + {others} related topic{'s' if others > 1 else ''}"
    return label


def _excerpt(text: str, limit: int = TITLE_EXCERPT_CHARS) -> str:
    first = " ".join(text.split())
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def proposal_title(kind: str, artifact: dict[str, Any], evidence: Evidence) -> str:
    """A proposal's title from its artifact and evidence; recomputed whenever either changes."""
    if kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        instruction = artifact.get("instruction") or ""
        if not instruction:
            return f"System prompt: edit for “{topic_of(evidence)}”"
        return f"System prompt: add “{_excerpt(instruction)}” for “{topic_of(evidence)}”"
    if kind == ProposalKind.RAG_SOURCE:
        return f"Add a knowledge source on “{_excerpt(artifact['topic'], 120)}”"
    return f"Fine-tune on {artifact['rows']} corrected answers about “{topic_of(evidence)}”"


# --- checks -----------------------------------------------------------------------------------


def check_dataset_row(obj: Any, index: int) -> None:
    """One line of an OpenAI chat fine-tuning file; `index` counts from 0 (loc: rows.<index>)."""
    where: tuple[str | int, ...] = ("rows", index)
    if not isinstance(obj, dict) or set(obj) != {"messages"}:
        raise ArtifactInvalid(where, f"row {index + 1} must be an object with only 'messages'")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise ArtifactInvalid((*where, "messages"), f"row {index + 1} has no messages")
    if len(messages) > DATASET_MAX_MESSAGES:
        raise ArtifactInvalid(
            (*where, "messages"),
            f"row {index + 1} has {len(messages)} messages; at most {DATASET_MAX_MESSAGES}",
        )
    chars = 0
    for m, message in enumerate(messages):
        at = (*where, "messages", m)
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ArtifactInvalid(at, f"row {index + 1}, message {m + 1}: needs role and content")
        extra = set(message) - {"role", "content"}
        if extra:
            raise ArtifactInvalid(
                at, f"row {index + 1}, message {m + 1}: unknown field {sorted(extra)[0]!r}"
            )
        if message["role"] not in DATASET_ROLES:
            raise ArtifactInvalid(
                (*at, "role"),
                f"row {index + 1}, message {m + 1}: role {message['role']!r} is not one of "
                + ", ".join(DATASET_ROLES),
            )
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            raise ArtifactInvalid(
                (*at, "content"),
                f"row {index + 1}, message {m + 1} ({message['role']}): content is empty",
            )
        chars += len(content)
    roles = [m["role"] for m in messages]
    # The system message may be left out (a prompt-less app); a user turn and its answer may not.
    for role in ("user", "assistant"):
        if role not in roles:
            raise ArtifactInvalid((*where, "messages"), f"row {index + 1} has no {role} message")
    if roles[-1] != "assistant":
        raise ArtifactInvalid(
            (*where, "messages"),
            f"row {index + 1} must end with the assistant's answer (it ends with {roles[-1]})",
        )
    if chars > DATASET_MAX_ROW_CHARS:
        raise ArtifactInvalid(
            where, f"row {index + 1} has {chars} characters; at most {DATASET_MAX_ROW_CHARS}"
        )


def dataset_rows(jsonl: str) -> list[dict[str, Any]]:
    """The rows of a JSONL dataset, each checked; raises ArtifactInvalid naming the first bad
    one."""
    rows: list[dict[str, Any]] = []
    for line in jsonl.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ArtifactInvalid(
                ("rows", len(rows)), f"row {len(rows) + 1} is not JSON: {exc}"
            ) from exc
        check_dataset_row(obj, len(rows))
        rows.append(obj)
    return rows


def check_artifact(kind: str, artifact: dict[str, Any]) -> None:
    """Raise ArtifactInvalid unless `artifact` is one its consumers accept, with every derived
    field (diff, row count) agreeing with what it derives from."""
    if kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        proposed = artifact.get("proposed_text") or ""
        if not proposed.strip():
            raise ArtifactInvalid(("proposed_text",), "must not be empty")
        if len(proposed) > PROMPT_MAX_CHARS:
            raise ArtifactInvalid(("proposed_text",), f"longer than {PROMPT_MAX_CHARS} characters")
        if proposed == artifact.get("base_text"):
            raise ArtifactInvalid(
                ("proposed_text",), "equals the base text; reject the proposal instead"
            )
        expected = prompt_diff(
            artifact["prompt_name"], artifact.get("base_version"), artifact["base_text"], proposed
        )
        if artifact.get("diff") != expected:
            raise ArtifactInvalid(("diff",), "does not match base_text -> proposed_text")
    elif kind == ProposalKind.RAG_SOURCE:
        if not str(artifact.get("topic") or "").strip():
            raise ArtifactInvalid(("topic",), "must not be empty")
        must_cover = artifact.get("must_cover") or []
        if not any(str(m).strip() for m in must_cover):
            raise ArtifactInvalid(("must_cover",), "name at least one thing the source must cover")
    elif kind == ProposalKind.FINE_TUNE_DATASET:
        rows = dataset_rows(artifact.get("jsonl") or "")
        if not rows:
            raise ArtifactInvalid(("rows",), "the dataset has no rows")
        if len(rows) > DATASET_MAX_ROWS:
            raise ArtifactInvalid(("rows",), f"{len(rows)} rows; at most {DATASET_MAX_ROWS}")
        if artifact.get("rows") != len(rows):
            raise ArtifactInvalid(
                ("rows",), f"says {artifact.get('rows')} rows but the dataset has {len(rows)}"
            )
    else:
        raise ArtifactInvalid(("kind",), f"unknown proposal kind {kind!r}")
