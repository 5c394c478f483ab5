"""Plain-text and JSON views of proposals for the CLI."""

from __future__ import annotations

import json

from refinery.store.models import AuditEntry, ProposalRow


def proposal_summary(row: ProposalRow) -> dict:
    return {
        "id": row.id,
        "app_id": row.app_id,
        "kind": row.kind,
        "status": row.status,
        "version": row.version,
        "cluster_id": row.cluster_id,
        "title": row.title,
        "size": row.payload.get("evidence", {}).get("size"),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def proposals_table(rows: list[ProposalRow], total: int) -> str:
    lines = [f"{'ID':<20} {'STATUS':<10} {'KIND':<19} {'SIZE':>4} {'APP':<16} TITLE"]
    for row in rows:
        s = proposal_summary(row)
        lines.append(f"{s['id']:<20} {s['status']:<10} {s['kind']:<19} {s['size'] or 0:>4} "
                     f"{s['app_id']:<16} {s['title']}")
    lines.append(f"({len(rows)} of {total})")
    return "\n".join(lines)


def proposals_json(rows: list[ProposalRow], total: int) -> str:
    return json.dumps({"total": total, "items": [proposal_summary(r) for r in rows]}, indent=2)


def _history(history: list[AuditEntry]) -> list[dict]:
    return [
        {
            "at": h.at.isoformat(), "actor": h.actor, "action": h.action, "from": h.from_status,
            "to": h.to_status, "outcome": h.outcome, "detail": h.detail,
        }
        for h in history
    ]


def proposal_json(row: ProposalRow, history: list[AuditEntry]) -> str:
    return json.dumps({**proposal_summary(row), "proposal": row.payload, "history": _history(history)},
                      indent=2, ensure_ascii=False)


def proposal_text(row: ProposalRow, history: list[AuditEntry]) -> str:
    p = row.payload
    ev = p["evidence"]
    out = [
        f"{row.id}  [{row.status}, version {row.version}]  {row.kind}",
        f"title:     {row.title}",
        f"app:       {row.app_id}    cluster: {row.cluster_id} ({ev['label']}), {ev['size']} failing",
        f"why:       {p['rationale']}",
        f"signals:   {', '.join(f'{k}={v}' for k, v in ev['signal_counts'].items())}",
        "",
        "artifact:",
    ]
    art = p["artifact"]
    if row.kind == "system_prompt_edit":
        out.append(art["diff"])
    elif row.kind == "rag_source":
        out.append(f"  topic: {art['topic']}")
        out += [f"  must cover: {m}" for m in art["must_cover"]]
        out.append(f"  gap signals: {art['gap_signals']}")
    else:
        out.append(f"  {art['rows']} rows, {art['format']}")
        out += ["  " + line for line in art["jsonl"].splitlines()[:3]]
    out += ["", "examples:"]
    for ex in ev["examples"]:
        fb = "; ".join(f"{f['kind']}" + (f" {f['value']:g}" if f.get("value") is not None else "")
                       + (f": {f['text']!r}" if f.get("text") else "") for f in ex["feedback"])
        out.append(f"  - Q: {ex['query']!r}")
        out.append(f"    A: {ex['response'][:160]!r}")
        out.append(f"    feedback: {fb}")
    out += ["", "history:"]
    out += [f"  {h['at']} {h['actor']} {h['action']} {h['from']}->{h['to']} {h['outcome']}"
            + (f" ({h['detail']})" if h["detail"] else "") for h in _history(history)]
    return "\n".join(out)
