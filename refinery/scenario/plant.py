"""Plant failure modes of a labelled query set among healthy traffic (pure: no I/O).

A labelled set is `(text, intent)` pairs, e.g. a public intent dataset. N of its intents become
the app's failure modes, one of three kinds in turn, each with the evidence a real app's users
leave behind:

* knowledge gap: the assistant has no source and says it does not know; thumbs-down
  -> a RAG source proposal is expected;
* behaviour: a rambling answer; thumbs-down and a comment that it is far too long
  -> a system prompt edit is expected;
* correction: a wrong answer; a low rating and the user's correction -> a fine-tuning dataset.

Most (not all) of a failing intent's interactions get that feedback; the other intents are
healthy traffic, a few percent of which get a thumbs-down for no systematic reason (noise that
must not become a proposal). Every interaction is its own session, so that unrelated queries
are never read as rephrasings of each other. Event ids derive from the scenario's tag and seed:
producing a scenario twice changes nothing downstream.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

FAILURE_MODES = ("knowledge_gap", "behaviour", "correction")
EXPECTED_KIND = {
    "knowledge_gap": "rag_source",
    "behaviour": "system_prompt_edit",
    "correction": "fine_tune_dataset",
}
HEALTHY = "healthy"

PROMPT_NAME = "assistant"
PROMPT_VERSION = "v1"
PROMPT_TEXT = (
    "You are the assistant of this application.\n"
    "Answer the user's request using the retrieved documents when they are relevant.\n"
)
GAP_RESPONSES = (
    "I'm sorry, I don't have information about that.",
    "I'm not sure, I couldn't find anything about this.",
    "Unfortunately I don't know the answer to that question.",
)
TOO_LONG_COMMENTS = (
    "Way too long, just give me the answer.",
    "This answer is too long and rambles.",
    "Too verbose. I only needed one line.",
    "Please be more concise, this is a wall of text.",
    "tl;dr - far too long for a simple question",
)
WRONG_ANSWERS = (
    "That is not something you can do here.",
    "This has to be done in person at one of our offices.",
    "The answer depends on your plan; please check the settings page.",
)


@dataclass(frozen=True)
class PlantConfig:
    failing_intents: int = 8
    # Interactions of each failing intent (all of its queries when it has fewer).
    per_failing_intent: int = 40
    healthy: int = 1000
    # Share of a failing intent's interactions whose users leave the failure's feedback.
    failing_share: float = 0.85
    # Share of healthy interactions with a thumbs-down for no systematic reason.
    noise_rate: float = 0.03
    # Intents with fewer queries than this are never planted as failing (too few to cluster).
    min_queries_per_failing_intent: int = 15
    span: timedelta = timedelta(hours=2)
    seed: int = 11


@dataclass
class Scenario:
    """Events to produce, and the truth to score the queue against."""

    app_id: str
    interactions: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)
    # interaction_id -> its label: the intent, failing or healthy (noise keeps its own intent,
    # so a cluster of noise from several intents reads as impure, not as one "healthy" topic).
    truth: dict[str, str] = field(default_factory=dict)
    planted: dict[str, str] = field(default_factory=dict)  # failing intent -> expected kind
    modes: dict[str, str] = field(default_factory=dict)  # failing intent -> failure mode

    def timeline(self) -> list[tuple[str, dict]]:
        """("interaction" | "feedback", event) in order of occurrence, as an app would emit."""
        events = [("interaction", e) for e in self.interactions]
        events += [("feedback", e) for e in self.feedback]
        return sorted(events, key=lambda pair: (pair[1]["occurred_at"], pair[0] == "feedback"))


def plant(
    labelled: list[tuple[str, str]],
    *,
    app_id: str,
    config: PlantConfig = PlantConfig(),
    now: datetime | None = None,
) -> Scenario:
    """Build a scenario from `(text, intent)` pairs; see the module docstring."""
    rng = random.Random(config.seed)
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in labelled:
        if text.strip():
            by_intent[intent].append(text.strip())
    eligible = sorted(
        i for i, q in by_intent.items() if len(q) >= config.min_queries_per_failing_intent
    )
    # At least as many healthy intents as failing ones: a set of 7 intents plants 3.
    n_failing = min(config.failing_intents, len(by_intent) // 2, len(eligible))
    if n_failing < 1:
        raise ValueError(
            f"cannot plant a failure mode: {len(by_intent)} intents, {len(eligible)} with at least "
            f"{config.min_queries_per_failing_intent} queries"
        )
    failing = rng.sample(eligible, n_failing)
    scenario = Scenario(app_id=app_id)
    for n, intent in enumerate(failing):
        failure_mode = FAILURE_MODES[n % len(FAILURE_MODES)]
        scenario.modes[intent] = failure_mode
        scenario.planted[intent] = EXPECTED_KIND[failure_mode]

    # (query, intent, mode or None); the order of occurrence is shuffled below.
    traffic: list[tuple[str, str, str | None]] = []
    for intent in failing:
        queries = by_intent[intent]
        chosen = rng.sample(queries, min(len(queries), config.per_failing_intent))
        traffic += [(q, intent, scenario.modes[intent]) for q in chosen]
    healthy_pool = [
        (q, i) for i in sorted(by_intent) if i not in scenario.planted for q in by_intent[i]
    ]
    for q, intent in rng.sample(healthy_pool, min(config.healthy, len(healthy_pool))):
        traffic.append((q, intent, None))
    rng.shuffle(traffic)

    end = (now or datetime.now(UTC)) - timedelta(minutes=1)
    start = end - config.span
    step = config.span / max(1, len(traffic))
    tag = f"{app_id}-{config.seed}"
    for n, (query, intent, mode) in enumerate(traffic):
        at = start + step * n
        event = _interaction(tag, n, app_id, query, at, mode, rng)
        scenario.interactions.append(event)
        scenario.truth[event["interaction_id"]] = intent
        for kind, value, comment in _feedback_for(mode, rng, config):
            offset = timedelta(seconds=rng.randint(5, 300))
            scenario.feedback.append(
                _feedback(tag, len(scenario.feedback), event, kind, value, comment, at + offset)
            )
    return scenario


def load_labelled(path: Path) -> list[tuple[str, str]]:
    """`(text, intent)` pairs from a JSON file: a list of `[text, intent]` pairs, or an object
    of such lists by split (CLINC150's layout; every split is used, "oos" ones excepted)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        splits = [v for k, v in sorted(data.items()) if "oos" not in k and isinstance(v, list)]
        data = [pair for split in splits for pair in split]
    if not isinstance(data, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in data
    ):
        raise ValueError(f"{path}: expected a JSON list of [text, intent] pairs")
    return [(text, intent) for text, intent in data]


def from_labelled_events(
    app_id: str, interactions: list[dict], feedback: list[dict], planted: dict[str, str]
) -> Scenario:
    """A scenario from events that carry their label in `metadata.mode` (the demo's workload):
    labels in `planted` are failure modes, any other label is healthy traffic."""
    scenario = Scenario(app_id=app_id, interactions=interactions, feedback=feedback)
    scenario.planted = dict(planted)
    for event in interactions:
        scenario.truth[event["interaction_id"]] = event.get("metadata", {}).get("mode", HEALTHY)
    return scenario


def _feedback_for(
    mode: str | None, rng: random.Random, config: PlantConfig
) -> list[tuple[str, float | None, str | None]]:
    roll = rng.random()
    if mode is None:
        if roll < config.noise_rate:
            return [("thumbs_down", None, None)]
        if roll < 0.35:
            return [("thumbs_up", None, None)]
        return [("copy", None, None)] if roll < 0.45 else []
    if roll >= config.failing_share:
        return []  # this user let it pass
    if mode == "knowledge_gap":
        return [("thumbs_down", None, None)]
    if mode == "behaviour":
        return [("thumbs_down", None, None), ("comment", None, rng.choice(TOO_LONG_COMMENTS))]
    return [
        ("rating", float(rng.choice([1, 2])), None),
        (
            "correction",
            None,
            "No, that's wrong: you can do this yourself in the app, under "
            "Settings, in a couple of steps.",
        ),
    ]


def _interaction(
    tag: str, n: int, app_id: str, query: str, at: datetime, mode: str | None, rng: random.Random
) -> dict:
    if mode == "knowledge_gap":
        response, sources = rng.choice(GAP_RESPONSES), []
    else:
        sources = [
            {
                "source_id": f"kb-{rng.randint(1, 400)}",
                "title": "Help center article",
                "score": round(rng.uniform(0.6, 0.92), 3),
            }
        ]
        if mode == "behaviour":
            response = "Great question! There is a lot to say here. " + " ".join(
                f"Point {i}: consider every option carefully and read section {i} of the guide."
                for i in range(1, 25)
            )
        elif mode == "correction":
            response = rng.choice(WRONG_ANSWERS)
        else:
            response = "Here is what the help center says about that, step by step."
    return {
        "event_id": f"scn-{tag}-i{n}",
        "schema_version": "1.0",
        "app_id": app_id,
        "session_id": f"scn-{tag}-s{n}",
        "interaction_id": f"scn-{tag}-{n}",
        "turn_index": 0,
        "occurred_at": at.isoformat(),
        "query": query,
        "response": response,
        "system_prompt": {"id": PROMPT_NAME, "version": PROMPT_VERSION, "text": PROMPT_TEXT},
        "model": "scenario-chat",
        "retrieved_sources": sources,
        "latency_ms": round(rng.uniform(300, 2500), 1),
        "tokens": {"prompt": rng.randint(200, 900), "completion": len(response) // 4},
    }


def _feedback(
    tag: str,
    n: int,
    interaction: dict,
    kind: str,
    value: float | None,
    text: str | None,
    at: datetime,
) -> dict:
    return {
        "event_id": f"scn-{tag}-f{n}",
        "schema_version": "1.0",
        "app_id": interaction["app_id"],
        "interaction_id": interaction["interaction_id"],
        "session_id": interaction["session_id"],
        "occurred_at": at.isoformat(),
        "kind": kind,
        **({"value": value} if value is not None else {}),
        **({"text": text} if text is not None else {}),
    }
