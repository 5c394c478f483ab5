"""A synthetic workload for a fictional app, written by this project (no dataset sentences).

"Nimbus Gadgets" runs a support assistant. Its traffic is mostly healthy, with random noise,
and three planted failure modes, each of which should yield exactly one proposal:
  * knowledge gap   - refurbished-item warranty questions; no sources, "I don't know" -> RAG source
  * behaviour       - device setup how-tos answered at great length; "too long"      -> prompt edit
  * corrections     - restocking-fee questions answered wrongly; users correct them -> fine-tune set
Event ids are derived from the seed, so producing the workload twice changes nothing downstream.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

APP_ID = "nimbus-support"
PROMPT_NAME = "support-assistant"
PROMPT_VERSION = "v1"
PROMPT_TEXT = (
    "You are the support assistant of Nimbus Gadgets, an online electronics store.\n"
    "Answer questions about orders, products, accounts and returns.\n"
    "Use the retrieved help-center articles when they are relevant.\n"
)

PRODUCTS = ["laptop", "tablet", "phone", "smartwatch", "camera", "monitor", "headphones", "speaker"]
DEVICES = [
    "wireless earbuds",
    "smart speaker",
    "mesh router",
    "fitness band",
    "security camera",
    "smart thermostat",
    "streaming stick",
    "robot vacuum",
]
FOOD_FOR_THOUGHT = ["Thanks!", "", "", "Quick question.", "Hi there,"]

HEALTHY_TOPICS: dict[str, list[str]] = {
    "order_status": [
        "Where is my order {n}?",
        "Has order {n} shipped yet?",
        "Can you track order number {n} for me?",
        "When will order {n} arrive?",
    ],
    "payment": [
        "Which payment methods do you accept?",
        "Can I pay for a {product} in installments?",
        "Do you take gift cards for a {product}?",
        "Is paying by bank transfer possible?",
    ],
    "account": [
        "How do I change the email on my account?",
        "I want to update my shipping address.",
        "How can I delete my Nimbus account?",
        "Where do I see my past invoices?",
    ],
    "product_info": [
        "Does the {product} come with a charger?",
        "What colors does the new {product} come in?",
        "Is the {product} waterproof?",
        "How much storage does the {product} have?",
    ],
}

KNOWLEDGE_GAP = [
    "Is there a warranty on a refurbished {product}?",
    "How long is the warranty for refurbished {product}s?",
    "Does the extended warranty cover a refurbished {product}?",
    "My refurbished {product} broke after two months, is it under warranty?",
    "What does the refurbished warranty cover for a {product}?",
]
GAP_RESPONSES = [
    "I'm sorry, I don't have information about warranties for refurbished products.",
    "I'm not sure about the warranty terms for refurbished items.",
    "I couldn't find any details on refurbished warranty coverage.",
]

BEHAVIOUR = [
    "How do I set up my new {device}?",
    "How do I pair the {device} with my phone?",
    "How do I connect my {device} to wifi?",
    "Steps to reset the {device} to factory settings?",
    "How do I update the firmware on my {device}?",
]
BEHAVIOUR_COMMENTS = [
    "Way too long, just give me the steps.",
    "This answer is too long and rambles.",
    "Too verbose. I only needed three steps.",
    "Please be more concise, this is a wall of text.",
    "tl;dr - far too long for a simple question",
]

CORRECTION = [
    "What is the restocking fee if I return a {product} after {d} days?",
    "Do I pay a restocking fee on a {product} returned after {d} days?",
    "How much is the restocking fee for an opened {product} after {d} days?",
]


def _restocking_truth(days: int) -> str:
    if days <= 30:
        return (
            f"Returns within 30 days are free, so a return after {days} days has no restocking fee."
        )
    return (
        f"After 30 days a 15% restocking fee applies, so a return after {days} days costs "
        "15% of the price."
    )


@dataclass
class Workload:
    interactions: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)
    planted: dict[str, str] = field(default_factory=dict)  # failure mode -> expected kind


# After the approvals, the app ships fixes for these modes (refinery demo): a new prompt version
# for the behaviour mode, a new help-center source for the knowledge gap. The corrections mode's
# dataset is approved but never trained on.
SHIPPED_FIXES = frozenset({"behaviour", "knowledge_gap"})
FIXED_SUCCESS = 0.9  # share of a fixed mode's queries that now go well


def generate(
    seed: int = 7,
    healthy: int = 400,
    per_mode: int = 30,
    noise_rate: float = 0.03,
    *,
    start: datetime | None = None,
    spacing_s: float = 37.0,
    prompt: tuple[str, str] = (PROMPT_VERSION, PROMPT_TEXT),
    fixed: frozenset[str] = frozenset(),
    tag: str = "",
) -> Workload:
    """The traffic: by default a week back from now (event-time limits, MAX_EVENT_AGE_S, must
    accept the demo any day). After fixes shipped: `start` now, the app's `prompt` (version, text)
    and the `fixed` modes mostly succeeding; `tag` keeps the event ids apart."""
    rng = random.Random(f"{seed}{tag}" if tag else seed)
    if start is None:
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=7)
    work = Workload(
        planted={
            "knowledge_gap": "rag_source",
            "behaviour": "system_prompt_edit",
            "corrections": "fine_tune_dataset",
        }
    )
    counter = 0

    def interaction(query: str, response: str, sources: list[dict], mode: str) -> dict:
        nonlocal counter
        counter += 1
        at = start + timedelta(seconds=spacing_s * counter)
        event = {
            "event_id": f"demo-{seed}{tag}-i{counter}",
            "schema_version": "1.0",
            "app_id": APP_ID,
            "session_id": f"s{seed}{tag}-{counter // 3}",
            "interaction_id": f"int-{seed}{tag}-{counter}",
            "turn_index": counter % 3,
            "occurred_at": at.isoformat(),
            "query": query,
            "response": response,
            "system_prompt": {"id": PROMPT_NAME, "version": prompt[0], "text": prompt[1]},
            "model": "nimbus-chat-2",
            "retrieved_sources": sources,
            "latency_ms": round(rng.uniform(300, 2500), 1),
            "tokens": {"prompt": rng.randint(200, 900), "completion": len(response) // 4},
            "metadata": {"mode": mode},
        }
        work.interactions.append(event)
        return event

    def feedback(
        event: dict, kind: str, value: float | None = None, text: str | None = None
    ) -> None:
        n = len(work.feedback) + 1
        at = datetime.fromisoformat(event["occurred_at"]) + timedelta(seconds=rng.randint(5, 600))
        work.feedback.append(
            {
                "event_id": f"demo-{seed}{tag}-f{n}",
                "schema_version": "1.0",
                "app_id": APP_ID,
                "interaction_id": event["interaction_id"],
                "session_id": event["session_id"],
                "occurred_at": at.isoformat(),
                "kind": kind,
                **({"value": value} if value is not None else {}),
                **({"text": text} if text is not None else {}),
            }
        )

    def good_sources(topic: str) -> list[dict]:
        return [
            {
                "source_id": f"kb-{topic}-{rng.randint(1, 9)}",
                "title": f"Help: {topic}",
                "score": round(rng.uniform(0.62, 0.93), 3),
            }
        ]

    fill = {
        "product": lambda: rng.choice(PRODUCTS),
        "device": lambda: rng.choice(DEVICES),
        "n": lambda: str(rng.randint(100000, 999999)),
        "d": lambda: str(rng.choice([7, 14, 21, 35, 45, 60, 90])),
    }

    def render(template: str) -> tuple[str, dict[str, str]]:
        values = {k: f() for k, f in fill.items() if "{" + k + "}" in template}
        prefix = rng.choice(FOOD_FOR_THOUGHT)
        return (f"{prefix} {template.format(**values)}".strip(), values)

    for _ in range(healthy):
        topic = rng.choice(sorted(HEALTHY_TOPICS))
        query, _ = render(rng.choice(HEALTHY_TOPICS[topic]))
        event = interaction(
            query,
            f"Here is what I found about your {topic.replace('_', ' ')} "
            "question: the help center explains it step by step.",
            good_sources(topic),
            "healthy",
        )
        roll = rng.random()
        if roll < noise_rate:
            feedback(event, "thumbs_down")  # noise: unhappy for no systematic reason
        elif roll < 0.35:
            feedback(event, "thumbs_up")
        elif roll < 0.45:
            feedback(event, "copy")

    def now_fixed(mode: str) -> bool:
        return mode in fixed and rng.random() < FIXED_SUCCESS

    for _ in range(per_mode):
        query, _ = render(rng.choice(KNOWLEDGE_GAP))
        if now_fixed("knowledge_gap"):
            event = interaction(
                query,
                "Refurbished items carry a 12-month Nimbus warranty covering defects.",
                [{"source_id": "kb-refurbished-warranty", "title": "Refurbished warranty",
                  "score": round(rng.uniform(0.7, 0.95), 3)}],
                "knowledge_gap",
            )  # fmt: skip
            feedback(event, "thumbs_up")
            continue
        event = interaction(query, rng.choice(GAP_RESPONSES), [], "knowledge_gap")
        feedback(event, "thumbs_down")

    for _ in range(per_mode):
        query, values = render(rng.choice(BEHAVIOUR))
        if now_fixed("behaviour"):
            event = interaction(
                query,
                "1. Hold the power button for 3 s. 2. Open the Nimbus app. 3. Tap Add device.",
                good_sources("setup"),
                "behaviour",
            )
            feedback(event, "thumbs_up")
            continue
        steps = " ".join(
            f"Step {i}: on the {values.get('device', 'device')}, open the menu, review "
            f"every option carefully and read the manual section {i} in full."
            for i in range(1, 25)
        )
        event = interaction(
            query,
            "Great question! Setting up takes some care. " + steps,
            good_sources("setup"),
            "behaviour",
        )
        feedback(event, "thumbs_down")
        feedback(event, "comment", text=rng.choice(BEHAVIOUR_COMMENTS))

    for _ in range(per_mode):
        query, values = render(rng.choice(CORRECTION))
        days = int(values["d"])
        event = interaction(
            query,
            "A 25% restocking fee applies to every return.",
            good_sources("returns"),
            "corrections",
        )
        feedback(event, "rating", value=rng.choice([1, 2]), text=None)
        feedback(event, "correction", text=_restocking_truth(days))

    # Feedback often reaches Kafka before its interaction; shuffle to exercise the join.
    rng.shuffle(work.feedback)
    work.invalid = [
        b"{not json",
        json.dumps({"event_id": "demo-bad-1", "app_id": APP_ID}).encode(),  # missing fields
        json.dumps(
            {**work.interactions[0], "event_id": "demo-bad-2", "schema_version": "9.0"}
        ).encode(),
    ]
    return work
