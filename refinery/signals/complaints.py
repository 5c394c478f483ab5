"""What a complaint comment is about, in any wording: the nearest labelled prototypes decide.

    classify(texts: list[str]) -> list[Complaint]   # one per text, in order

A comment is cut into clauses (punctuation, "but", "just", "aber", "pero", ...). Each clause is
embedded and scored against every class's prototypes (refinery.signals.complaint_prototypes):
a class's score is the mean of its `TOP_K` most similar prototypes, plus `CUE_BONUS` when the
clause holds a word that names that class alone ("verbose", "bullet"), which separates antonyms
the embedding puts close together ("too long" / "too short"). A clause counts for its best class
when that score reaches `MIN_SIMILARITY` and beats the next class by `MIN_MARGIN`; a clause that
negates a behaviour ("not too long", "nicht zu lang", "no es demasiado largo", "the length is
fine") counts for no class: sentence embeddings barely see a "not". A comment's label is its
most confident clause's class, "other" when no clause is confident, so a vague comment is never
filed under a behaviour it does not name.

The embedder (refinery.embed.embedder contract) loads lazily, once per process, from the settings;
tests may `set_embedder` a different one. Labels are cached per text (bounded), since the cluster
stage and drafting classify the same stored comments on every refine.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from refinery.signals.complaint_prototypes import PROTOTYPES

CLASSES = (
    "length",
    "detail",
    "tone",
    "format",
    "language",
    "wrong_facts",
    "refusal",
    "outdated",
    "other",
)
OTHER = "other"

TOP_K = 2
MIN_SIMILARITY = 0.35
MIN_MARGIN = 0.02
CACHE_SIZE = 50_000

_CLAUSE_SPLIT = re.compile(
    r"[.;,!?:]+(?=\s|$)|[()\n]+|\s[-–—]\s|\b(?:but|however|though|just|rather|instead|aber|sondern|nur|"
    r"pero|sino|solo|sólo)\b",
    re.IGNORECASE,
)
# A negation whose scope is a behaviour's attribute ("not too long", "wasn't rude", "nicht zu
# lang", "no es demasiado largo", "length is not the problem"): the clause complains of nothing.
# "not ... enough" is itself a complaint ("not detailed enough") and is left to the prototypes.
_NEGATED_ATTRIBUTE = re.compile(
    r"(?:\bnot|n't|\bnever|\bno|\bnicht|\bkein\w*|\bnie|\bnunca|\btampoco|\bni)\s+"
    r"(?:\w+\s+){0,2}?"
    r"(?:too|overly|excessively|that|so|zu|allzu|demasiado|tan|muy|"
    r"long|lengthy|verbose|wordy|short|brief|rude|impolite|condescending|patronizing|"
    r"lang|kurz|unhöflich|largo|larga|corto|corta|grosero|grosera|"
    r"(?:the\s+|das\s+|el\s+)?(?:problem|issue|issues|problema))\b",
    re.IGNORECASE,
)
_ENOUGH = re.compile(r"\b(enough|genug|suficiente|suficientemente)\b", re.IGNORECASE)
# "The length is fine": a behaviour named as acceptable.
_ACCEPTED = re.compile(
    r"\b(?:length|tone|format|formatting|language|länge|ton|sprache|formatierung|longitud|largo|"
    r"tono|formato|idioma)\s+(?:\w+\s+){0,2}?(?:is|was|are|were|ist|war|passt|está|es|fue)?\s*"
    r"(?:fine|ok|okay|good|great|alright|right|correct|perfect|not the problem|not an issue|"
    r"in ordnung|gut|okay|bien|correcto|correcta|perfecto)\b",
    re.IGNORECASE,
)
# Words that name one class and no other: they add CUE_BONUS to its similarity, so antonyms the
# embedding places close together ("too long" / "too short") are told apart. The similarity
# still decides; a cue alone does not make a clause confident.
CUE_BONUS = 0.1
_CUES = {
    "length": r"too long|verbose|wordy|rambl|concise|shorter|tl;?dr|wall of text|zu lang|"
    r"demasiado larg|kürzer|más breve",
    "detail": r"too short|more detail|not enough detail|elaborate|too vague|zu kurz|"
    r"mehr details|más detalle|demasiado cort",
    "tone": r"\brude|condescend|patroni[sz]|impolite|unhöflich|grosero|maleducad",
    "format": r"bullet|numbered|\btable\b|markdown|formatting|viñeta|tabelle|aufzählung",
    "language": r"wrong language|in english|in spanish|in german|in french|my language|"
    r"falsche sprache|auf englisch|en inglés|mi idioma",
    "wrong_facts": r"\bwrong\b|incorrect|inaccurate|untrue|\bfalse\b|falsch|incorrect|\bfals[oa]\b",
    "refusal": r"refus|declin|won't help|verweiger|se negó|se niega",
    "outdated": r"outdated|out of date|no longer|veraltet|nicht mehr aktuell|desactualizad",
}
_CUE_PATTERNS = {name: re.compile(p, re.IGNORECASE) for name, p in _CUES.items()}


@dataclass(frozen=True)
class Complaint:
    """The class of one comment: `label` is its most confident clause's class (OTHER when none
    is confident); `labels` every class a clause is confident of, most confident first."""

    label: str
    score: float  # similarity of the deciding clause to its class (0.0 for OTHER by default)
    margin: float  # over the next class
    labels: tuple[str, ...] = ()


def clauses(text: str) -> list[str]:
    parts = [" ".join(p.split()) for p in _CLAUSE_SPLIT.split(text)]
    return [p for p in parts if p and re.search(r"\w", p)] or [text.strip()]


def negated_attribute(clause: str) -> bool:
    """The clause says a behaviour is not a problem ("not too long", "the length is fine")."""
    if _ACCEPTED.search(clause):
        return True
    return bool(_NEGATED_ATTRIBUTE.search(clause)) and not _ENOUGH.search(clause)


class ComplaintClassifier:
    """Nearest-prototype classification over an embedder (`embed(texts) -> (n, dim)`, float32,
    L2-normalized)."""

    def __init__(self, embedder, prototypes: Mapping[str, Sequence[str]] = PROTOTYPES) -> None:  # type: ignore[no-untyped-def]
        self._embedder = embedder
        self._prototype_texts = [t for texts in prototypes.values() for t in texts]
        self._prototype_labels = np.array(
            [label for label, texts in prototypes.items() for _ in texts]
        )
        self._class_names = list(prototypes)
        self._prototype_vectors: np.ndarray | None = None
        self._cache: OrderedDict[str, Complaint] = OrderedDict()
        self._lock = threading.Lock()

    def _prototypes(self) -> np.ndarray:
        if self._prototype_vectors is None:
            self._prototype_vectors = self._embedder.embed(self._prototype_texts)
        return self._prototype_vectors

    def _class_scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n clauses, n classes): mean of each class's TOP_K most similar prototypes."""
        sims = vectors @ self._prototypes().T
        out = np.empty((len(vectors), len(self._class_names)), dtype=np.float32)
        for j, name in enumerate(self._class_names):
            block = sims[:, self._prototype_labels == name]
            k = min(TOP_K, block.shape[1])
            out[:, j] = np.sort(block, axis=1)[:, -k:].mean(axis=1)
        return out

    def classify(self, texts: list[str]) -> list[Complaint]:
        with self._lock:
            known = {t: self._cache[t] for t in texts if t in self._cache}
        todo = [t for t in dict.fromkeys(texts) if t not in known]
        fresh: dict[str, Complaint] = {}
        if todo:
            split = [clauses(t) for t in todo]
            flat = [c for cs in split for c in cs]
            scores = self._class_scores(self._embedder.embed(flat))
            for i, clause in enumerate(flat):
                for j, name in enumerate(self._class_names):
                    cue = _CUE_PATTERNS.get(name)
                    if cue is not None and cue.search(clause):
                        scores[i, j] += CUE_BONUS
            row = 0
            for text, cs in zip(todo, split, strict=True):
                fresh[text] = self._decide(cs, scores[row : row + len(cs)])
                row += len(cs)
            with self._lock:
                for text, complaint in fresh.items():
                    self._cache[text] = complaint
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        known.update(fresh)
        return [known[t] for t in texts]

    def _decide(self, clause_texts: list[str], scores: np.ndarray) -> Complaint:
        confident: list[tuple[float, float, str]] = []
        for clause, row in zip(clause_texts, scores, strict=True):
            order = np.argsort(-row)
            best, second = self._class_names[order[0]], float(row[order[1]])
            score = float(row[order[0]])
            if score < MIN_SIMILARITY or score - second < MIN_MARGIN:
                continue
            if best != OTHER and negated_attribute(clause):
                continue
            confident.append((score, score - second, best))
        confident.sort(reverse=True)
        labels = tuple(dict.fromkeys(label for _, _, label in confident if label != OTHER))
        if not labels:
            top = confident[0] if confident else (0.0, 0.0, OTHER)
            return Complaint(OTHER, top[0], top[1], ())
        score, margin, label = next(c for c in confident if c[2] != OTHER)
        return Complaint(label, score, margin, labels)


_DEFAULT: ComplaintClassifier | None = None
_DEFAULT_LOCK = threading.Lock()


def set_embedder(embedder) -> None:  # type: ignore[no-untyped-def]
    """Use this embedder for the process's classifier from now on (None: back to the default)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = ComplaintClassifier(embedder) if embedder is not None else None


def classifier() -> ComplaintClassifier:
    """The process's classifier, over the configured embedding model (loaded on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            from refinery.embed.embedder import get_embedder
            from refinery.settings import get_settings

            _DEFAULT = ComplaintClassifier(get_embedder(get_settings()))
        return _DEFAULT


def classify(texts: list[str]) -> list[Complaint]:
    """One Complaint per text, in order (see the module docstring)."""
    return classifier().classify(texts) if texts else []
