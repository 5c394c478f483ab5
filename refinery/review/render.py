"""Plain-text and JSON views of proposals for the CLI."""

from __future__ import annotations

import json

from refinery.review.figures import evidence_figures, fold
from refinery.settings import TrendSettings
from refinery.store.models import AuditEntry, ProposalRow
from schemas.proposals import Evidence


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
        "claimed_by": row.claimed_by,
    }


def proposals_table(rows: list[ProposalRow], total: int, offset: int = 0) -> str:
    lines = [
        f"{'ID':<20} {'STATUS':<10} {'KIND':<19} {'SIZE':>4} {'APP':<16} {'CLAIMED':<12} TITLE"
    ]
    for row in rows:
        s = proposal_summary(row)
        lines.append(
            f"{s['id']:<20} {s['status']:<10} {s['kind']:<19} {s['size'] or 0:>4} "
            f"{s['app_id']:<16} {s['claimed_by'] or '-':<12} {s['title']}"
        )
    shown = f"{offset + 1}-{offset + len(rows)}" if rows else "0"
    lines.append(f"({shown} of {total})")
    return "\n".join(lines)


def proposals_json(rows: list[ProposalRow], total: int, offset: int = 0) -> str:
    items = [proposal_summary(r) for r in rows]
    return json.dumps({"total": total, "offset": offset, "items": items}, indent=2)


def _history(history: list[AuditEntry]) -> list[dict]:
    return [
        {
            "at": h.at.isoformat(),
            "actor": h.actor,
            "action": h.action,
            "from": h.from_status,
            "to": h.to_status,
            "outcome": h.outcome,
            "detail": h.detail,
        }
        for h in history
    ]


def proposal_json(row: ProposalRow, history: list[AuditEntry]) -> str:
    return json.dumps(
        {**proposal_summary(row), "proposal": row.payload, "history": _history(history)},
        indent=2,
        ensure_ascii=False,
    )


def proposal_text(row: ProposalRow, history: list[AuditEntry], settings: TrendSettings) -> str:
    """The proposal as the web UI shows it, in plain text: the same figures
    (refinery.review.figures), feedback once per kind, long responses cut."""
    p = row.payload
    ev = Evidence.model_validate(p["evidence"])
    fig = evidence_figures(ev, default_baseline_buckets=settings.trend_baseline_buckets)
    merged = f", the sum of {len(fig.parts)} clusters" if len(fig.parts) > 1 else ""
    out = [
        f"{row.id}  [{row.status}, version {row.version}]  {row.kind}",
        f"title:     {row.title}",
        f"app:       {row.app_id}    cluster: {row.cluster_id} ({ev.label})",
        f"size:      {fig.size} failing interactions when drafted{merged}",
        f"trend:     {fig.trend.summary if fig.trend else 'not stored with this proposal'}",
    ]
    if fig.region_failure_rate is not None:
        out.append(f"region:    {fig.region_failure_rate:.0%} of sampled interactions nearby fail")
    if len(fig.parts) > 1:
        out.append("parts:")
        for part in fig.parts:
            trend = (
                f"{part.trend.total} in the window, growth {part.trend.growth_rate:+.0%}"
                if part.trend
                else "trend not stored"
            )
            out.append(f"  - {part.cluster_id} {part.label}: {part.size} failing; {trend}")
    out += [
        f"why:       {p['rationale']}",
        f"signals:   {', '.join(f'{k}={v}' for k, v in ev.signal_counts.items())}",
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
        out += ["  " + fold(line).preview for line in art["jsonl"].splitlines()[:3]]
    out += ["", "examples:"]
    for ex, exf in zip(ev.examples, fig.examples, strict=True):
        chips = [
            f.kind
            + (f" {f.value:g}" if f.value is not None else "")
            + (f" x{f.count}" if f.count > 1 else "")
            for f in exf.feedback
        ]
        response = fold(ex.response)
        out.append(f"  - Q: {fold(ex.query).preview!r}")
        out.append(
            f"    A: {response.preview!r}"
            + (f" ({response.chars} characters; --json for all)" if response.folded else "")
        )
        out.append(f"    feedback: {', '.join(chips)}")
        out += [f"    comment: {t!r}" for t in exf.feedback_texts]
        if exf.reasons:
            out.append(f"    also: {', '.join(exf.reasons)}")
    out += ["", "history:"]
    out += [
        f"  {h['at']} {h['actor']} {h['action']} {h['from']}->{h['to']} {h['outcome']}"
        + (f" ({h['detail']})" if h["detail"] else "")
        for h in _history(history)
    ]
    return "\n".join(out)
