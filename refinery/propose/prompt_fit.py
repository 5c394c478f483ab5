"""Where a system prompt edit's instruction goes, given the prompt it edits.

`fit(prompt, rule_name, instruction, embed)`, with `embed(texts) -> (n, dim)` float32
L2-normalized (the pipeline's embedding model), compares the instruction with each instruction
line of the prompt, beside a few labelled phrasings of the same behaviour and of its opposite
(PROTOTYPES; an embedding alone hardly tells "be brief" from "be thorough"):
- a line that already asks for it (close to the instruction or its phrasings, and clearly
  closer to them than to the opposite): no edit, the prompt has the instruction;
- a line that asks for the opposite (close to an opposite phrasing and clearly closer to it):
  that line is replaced by the instruction, and the rationale says so;
- otherwise the instruction goes at the end of the section it is closest to (Markdown headings,
  or lines ending in ":", else blank-line separated blocks), in that section's list style;
  appended after a blank line when no section is close.
Pure: no database, the embedder is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Embed = Callable[[list[str]], np.ndarray]

# rule name -> (phrasings asking for the behaviour, phrasings asking for its opposite).
PROTOTYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "length": (
        ("Keep answers short and concise.", "Be brief."),
        (
            "Be thorough.",
            "Be detailed and thorough in every answer.",
            "Explain everything in full detail.",
            "Give long, comprehensive answers that cover every option.",
        ),
    ),
    "detail": (
        ("Give complete, detailed answers.", "Be thorough."),
        ("Keep answers as short as possible.", "Be brief.", "Answer in one sentence."),
    ),
    "tone": (
        ("Be warm and friendly.", "Be polite and empathetic."),
        ("Be blunt and strictly matter-of-fact.", "Skip pleasantries and greetings."),
    ),
    "format": (
        ("Use numbered lists for steps.",),
        ("Answer in flowing prose paragraphs, never in lists.", "Do not use lists or bullets."),
    ),
    "language": (
        ("Answer in the user's language.",),
        ("Always answer in English.", "Reply in English only."),
    ),
    "refusal": (
        ("Help with every request within your purpose.",),
        ("Refuse any request you are not completely sure about.", "When in doubt, decline."),
    ),
}
MARGIN = 0.1  # how much closer to one side a line must be to count for it
SECTION_FLOOR = 0.3  # least cosine of a section's nearest line for the instruction to join it

_HEADING = re.compile(r"^\s*(#{1,6}\s+\S.*|[^\s].{0,60}:)\s*$")
_BULLET = re.compile(r"^(\s*(?:[-*•]|\d+[.)])\s+)")


@dataclass(frozen=True)
class Fit:
    proposed_text: str
    replaced: str | None = None  # the conflicting line the instruction replaces
    section: str | None = None  # heading of the section it joined (None: a block without one)


def _is_instruction(line: str) -> bool:
    return bool(line.strip()) and not _HEADING.match(line)


def _sections(lines: list[str]) -> list[tuple[str, list[int]]]:
    """(heading, "" for a block without one; indexes of its lines), in order."""
    has_headings = any(_HEADING.match(line) for line in lines if line.strip())
    out: list[tuple[str, list[int]]] = []
    for i, line in enumerate(lines):
        if has_headings and _HEADING.match(line):
            out.append((line.strip().lstrip("#").strip().rstrip(":"), []))
        elif not has_headings and not line.strip():
            out.append(("", []))
        elif line.strip():
            if not out:
                out.append(("", []))
            out[-1][1].append(i)
    return [
        (title, idx) for title, idx in out if idx and any(_is_instruction(lines[i]) for i in idx)
    ]


def fit(
    prompt: str,
    rule_name: str,
    instruction: str,
    embed: Embed | None,
    *,
    duplicate_similarity: float,
    conflict_similarity: float,
) -> Fit | None:
    """The proposed prompt, or None when the prompt already asks for the instruction."""
    appended = (prompt.rstrip("\n") + "\n\n" if prompt.strip() else "") + instruction + "\n"
    if instruction.strip() in prompt:
        return None
    lines = prompt.splitlines()
    candidates = [i for i, line in enumerate(lines) if _is_instruction(line)]
    if embed is None or not candidates:
        return Fit(appended)
    same, opposite = PROTOTYPES.get(rule_name, ((), ()))
    texts = [instruction, *same, *opposite, *(_BULLET.sub("", lines[i]) for i in candidates)]
    vectors = embed(texts)
    n_same = 1 + len(same)
    sides = vectors[: n_same + len(opposite)]
    line_vectors = vectors[n_same + len(opposite) :]
    sims = line_vectors @ sides.T  # (lines, prototypes)
    to_same = sims[:, :n_same].max(axis=1)
    to_opposite = sims[:, n_same:].max(axis=1) if opposite else np.full(len(candidates), -1.0)
    for k in np.argsort(-to_same, kind="stable"):
        if to_same[k] >= duplicate_similarity and to_same[k] - to_opposite[k] >= MARGIN:
            return None
    conflicts = [
        k
        for k in range(len(candidates))
        if to_opposite[k] >= conflict_similarity and to_opposite[k] - to_same[k] >= MARGIN
    ]
    if conflicts:
        k = max(conflicts, key=lambda k: (to_opposite[k], -k))
        i = candidates[k]
        prefix = m.group(1) if (m := _BULLET.match(lines[i])) else ""
        new = [*lines[:i], prefix + instruction, *lines[i + 1 :]]
        return Fit("\n".join(new) + "\n", replaced=lines[i].strip())
    to_instruction = dict(zip(candidates, sims[:, 0], strict=True))
    best: tuple[float, str, list[int]] | None = None
    for title, idx in _sections(lines):
        score = max(to_instruction.get(i, -1.0) for i in idx)
        if best is None or score > best[0]:
            best = (score, title, idx)
    if best is None or best[0] < SECTION_FLOOR:
        return Fit(appended)
    _, title, idx = best
    last = max(i for i in idx if lines[i].strip())
    prefix = m.group(1) if (m := _BULLET.match(lines[last])) else ""
    if number := re.search(r"\d+", prefix):  # the next item of a numbered list
        prefix = prefix.replace(number.group(), str(int(number.group()) + 1), 1)
    new = [*lines[: last + 1], prefix + instruction, *lines[last + 1 :]]
    return Fit("\n".join(new) + "\n", section=title or None)
