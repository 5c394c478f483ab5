"""`refinery corpus add APP PATH` / `refinery corpus list APP`: an app's candidate corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refinery.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("corpus", help="candidate documents an app could add to its retrieval index")
    corpus = p.add_subparsers(dest="corpus_cmd", required=True)
    q = corpus.add_parser(
        "add",
        help="chunk, embed and store a folder of .md/.html/.txt files or a .jsonl of documents"
        ' ({"id", "text", "title"?, "format"?} per line); an id registered before is replaced',
    )
    q.add_argument("app")
    q.add_argument("path", type=Path)
    q.add_argument("--replace", action="store_true", help="drop the app's other documents first")
    q = corpus.add_parser("list", help="the app's candidate documents")
    q.add_argument("app")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corpus)


def cmd_corpus(settings: Settings, args: argparse.Namespace) -> int:
    from refinery.corpus.chunking import CorpusError
    from refinery.corpus.store import corpus_summary, list_documents, register_path
    from refinery.store.db import migrate, require_current_schema, session_factory

    # `list` only reads: it never migrates, and stops when the schema is not current.
    (require_current_schema if args.corpus_cmd == "list" else migrate)(settings.database_url)
    sessions = session_factory(settings.database_url)
    if args.corpus_cmd == "add":
        try:
            s = register_path(sessions, settings, args.app, args.path, replace=args.replace)
        except CorpusError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"{args.app}: added {s.added_documents} document(s) in {s.added_chunks} chunk(s);"
            f" corpus version {s.version}: {s.documents} document(s), {s.chunks} chunk(s)"
        )
        return 0
    with sessions() as session:
        summary = corpus_summary(session, args.app)
        docs = list_documents(session, args.app)
    if args.json:
        print(
            json.dumps(
                {
                    "app_id": args.app,
                    "version": summary.version,
                    "documents": [d.__dict__ for d in docs],
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.app}: corpus version {summary.version}, {len(docs)} document(s)")
    for d in docs:
        print(f"  {d.doc_id:<40} {d.chunks:>3} chunk(s)  {d.title}")
    return 0
