"""`refinery review export ID --format openai|dpo|hf --out DIR`: a fine-tuning proposal's
dataset, ready to train on (refinery.propose.datasets)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refinery.settings import Settings


def add_export_parser(review: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = review.add_parser(
        "export",
        help="write a fine-tuning proposal's dataset: near-duplicates removed, PII re-checked,"
        " train/validation split seeded by its id, counts in manifest.json",
    )
    q.add_argument("id")
    q.add_argument(
        "--format",
        choices=["openai", "dpo", "hf"],
        default="openai",
        help="openai: chat fine-tuning JSONL; dpo: preference pairs (chosen = the correction,"
        " rejected = the app's answer); hf: a folder `datasets.load_dataset` reads",
    )
    q.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    q.set_defaults(func=cmd_export)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from refinery.propose.datasets import NotADataset, export_files, prepare_proposal
    from refinery.review.service import ProposalNotFound, get_proposal
    from refinery.store.db import require_current_schema, session_factory

    require_current_schema(settings.database_url)  # it only reads: never migrates
    with session_factory(settings.database_url)() as session:
        try:
            row = get_proposal(session, args.id)
        except ProposalNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 4
        kind, payload, title = row.kind, row.payload, row.title
    try:
        prepared = prepare_proposal(args.id, kind, payload, settings)
    except NotADataset as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, content in export_files(prepared, args.format, title).items():
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    summary = prepared.summary()
    print(
        f"{args.id}: {args.format} export in {args.out}: {summary['rows']['train']} train /"
        f" {summary['rows']['validation']} validation rows ({summary['duplicates_removed']}"
        f" near-duplicates removed, {sum(summary['pii_redactions'].values())} PII value(s)"
        f" redacted); ~{summary['tokens']['train'] + summary['tokens']['validation']} tokens by"
        f" the {summary['tokenizer']} (an estimate for the target model)"
    )
    if prepared.notes:
        print(json.dumps(prepared.notes), file=sys.stderr)
    return 0
