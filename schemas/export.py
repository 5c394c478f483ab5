"""Write the contract as JSON Schema files into schemas/json/ (`python -m schemas.export`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from schemas.events import FeedbackEvent, InteractionEvent
from schemas.proposals import ApprovedRefinement, Proposal

JSON_DIR = Path(__file__).parent / "json"

EXPORTS = {
    "interaction-event.schema.json": InteractionEvent.model_json_schema(),
    "feedback-event.schema.json": FeedbackEvent.model_json_schema(),
    "proposal.schema.json": TypeAdapter(Proposal).json_schema(),
    "approved-refinement.schema.json": ApprovedRefinement.model_json_schema(),
}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, schema in EXPORTS.items():
        (JSON_DIR / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
