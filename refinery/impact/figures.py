"""An app's failure picture, as the API returns it and the web UI draws it (reads only).

Failing share of traffic per day and per prompt version, the top failure modes (active clusters,
largest first, with their stored trends), and the approved refinements with when they were
approved and shipped and their latest verdict (refinement_impacts). `chart_svg` draws the daily
share with the refinements as marks: server-side SVG, no script, no external resource.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from refinery.store.models import Cluster, Interaction, ProposalRow, RefinementImpact, utcnow
from schemas.proposals import ProposalStatus

TOP_MODES = 5


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def app_impact(
    session: Session, app_id: str, *, days: int = 30, now: datetime | None = None
) -> dict[str, Any]:
    """The figures of one app over the last `days` days (JSON-ready)."""
    now = now or utcnow()
    since = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    failing = func.sum(case((Interaction.failing.is_(True), 1), else_=0))
    in_app = (Interaction.app_id == app_id, Interaction.occurred_at >= since)
    day = func.date(Interaction.occurred_at)
    per_day = [
        {"day": str(d), "failing": int(f or 0), "total": int(n), "share": round((f or 0) / n, 4)}
        for d, f, n in session.execute(
            select(day, failing, func.count(Interaction.id))
            .where(*in_app)
            .group_by(day)
            .order_by(day)
        )
    ]
    per_version = [
        {
            "prompt_name": name,
            "prompt_version": version,
            "first_seen": _iso(first),
            "failing": int(f or 0),
            "total": int(n),
            "share": round((f or 0) / n, 4),
        }
        for name, version, first, f, n in session.execute(
            select(
                Interaction.prompt_name,
                Interaction.prompt_version,
                func.min(Interaction.occurred_at),
                failing,
                func.count(Interaction.id),
            )
            .where(*in_app)
            .group_by(Interaction.prompt_name, Interaction.prompt_version)
            .order_by(func.min(Interaction.occurred_at))
        )
    ]
    modes = [
        {
            "cluster_id": c.id,
            "title": c.title or c.label,
            "size": c.size,
            "region_failure_rate": c.region_failure_rate,
            "growth_rate": c.growth_rate,
            "emerging": c.emerging,
            "trend": c.trend,
        }
        for c in session.scalars(
            select(Cluster)
            .where(Cluster.app_id == app_id, Cluster.active.is_(True))
            .order_by(Cluster.size.desc(), Cluster.id)
            .limit(TOP_MODES)
        )
    ]
    refinements = []
    for row, impact in session.execute(
        select(ProposalRow, RefinementImpact)
        .outerjoin(RefinementImpact, RefinementImpact.proposal_id == ProposalRow.id)
        .where(
            ProposalRow.app_id == app_id,
            ProposalRow.status.in_((ProposalStatus.APPROVED, ProposalStatus.APPLIED)),
        )
        .order_by(ProposalRow.decided_at, ProposalRow.id)
    ):
        detail = impact.detail if impact else {}
        refinements.append(
            {
                "proposal_id": row.id,
                "kind": row.kind,
                "title": row.title,
                "cluster_id": row.cluster_id,
                "status": row.status,
                "approved_at": _iso(row.decided_at),
                "applied_at": _iso(impact.applied_at) if impact else None,
                "applied_how": impact.applied_how if impact else None,
                "applied_version": impact.applied_version if impact else None,
                "verdict": impact.verdict if impact else "not_computed",
                "before": detail.get("before"),
                "after": detail.get("after"),
                "p_improved": detail.get("p_improved"),
                "diff_interval": (
                    [detail["diff_low"], detail["diff_high"]] if "diff_low" in detail else None
                ),
                "minimum_traffic": detail.get("minimum_traffic"),
                "by_version": impact.by_version if impact else {},
                "computed_at": _iso(impact.computed_at) if impact else None,
            }
        )
    return {
        "app_id": app_id,
        "since": since.isoformat(),
        "per_day": per_day,
        "per_prompt_version": per_version,
        "failure_modes": modes,
        "refinements": refinements,
    }


W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 240, 44, 16, 16, 44
VERDICT_COLOURS = {
    "improved": "#1a7f37",
    "regressed": "#cf222e",
    "no_change": "#6e7781",
    "not_enough_data": "#9a6700",
    "not_applied": "#8c959f",
    "not_computed": "#8c959f",
}


def chart_svg(figures: dict[str, Any]) -> str:
    """The failing share per day as a line, each refinement a vertical mark at the day it shipped
    (approved, dashed, while not shipped) labelled with its verdict."""
    days = [date.fromisoformat(d["day"]) for d in figures["per_day"]]
    marks = []
    for r in figures["refinements"]:
        at = r["applied_at"] or r["approved_at"]
        if at:
            marks.append((datetime.fromisoformat(at).date(), r))
    all_days = days + [d for d, _ in marks]
    if not all_days:
        return (
            f'<svg class="impact-chart" role="img" width="{W}" height="60" '
            f'xmlns="http://www.w3.org/2000/svg"><title>No traffic yet</title>'
            f'<text x="10" y="30">No traffic in this period.</text></svg>'
        )
    first, last = min(all_days), max(all_days)
    span = max((last - first).days, 1)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(d: date) -> float:
        return round(PAD_L + plot_w * (d - first).days / span, 1)

    def y(share: float) -> float:
        return round(PAD_T + plot_h * (1 - share), 1)

    out = [
        f'<svg class="impact-chart" role="img" aria-labelledby="impact-chart-title" width="{W}" '
        f'height="{H}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="impact-chart-title">Failing share of traffic per day, with refinements</title>',
    ]
    for share in (0, 0.25, 0.5, 0.75, 1):
        out.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(share)}" y2="{y(share)}" '
            f'stroke="#d0d7de" stroke-width="1"/>'
            f'<text x="{PAD_L - 6}" y="{y(share) + 4}" text-anchor="end" font-size="11">'
            f"{share:.0%}</text>"
        )
    out.append(
        f'<text x="{PAD_L}" y="{H - 24}" font-size="11">{first.isoformat()}</text>'
        f'<text x="{W - PAD_R}" y="{H - 24}" font-size="11" text-anchor="end">'
        f"{last.isoformat()}</text>"
    )
    points = [(x(d), y(p["share"]), p) for d, p in zip(days, figures["per_day"], strict=True)]
    if len(points) > 1:
        path = " ".join(f"{px},{py}" for px, py, _ in points)
        out.append(
            f'<polyline class="share" points="{path}" fill="none" stroke="#0969da" '
            'stroke-width="2"/>'
        )
    for px, py, p in points:
        out.append(
            f'<circle class="day" cx="{px}" cy="{py}" r="3" fill="#0969da"><title>{p["day"]}: '
            f"{p['failing']} of {p['total']} failing ({p['share']:.0%})</title></circle>"
        )
    for i, (d, r) in enumerate(marks):
        colour = VERDICT_COLOURS.get(r["verdict"], "#6e7781")
        dash = "" if r["applied_at"] else ' stroke-dasharray="4 3"'
        label = r["verdict"].replace("_", " ")
        mx = x(d)
        out.append(
            f'<g class="refinement verdict-{escape(r["verdict"])}">'
            f'<line x1="{mx}" x2="{mx}" y1="{PAD_T}" y2="{H - PAD_B}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
            f'<text x="{mx + 3}" y="{PAD_T + 12 + 13 * i}" font-size="11" fill="{colour}">'
            f"{escape(label)}</text>"
            f"<title>{escape(r['title'])} ({escape(r['kind'])}): {escape(label)}</title></g>"
        )
    out.append("</svg>")
    return "".join(out)


def sparkline_svg(trend: list[dict[str, Any]]) -> str:
    """A failure mode's failing interactions per trend bucket, oldest first."""
    counts = [int(b.get("count", 0)) for b in trend]
    if not counts:
        return ""
    top = max(max(counts), 1)
    step = 120 / max(len(counts) - 1, 1)
    path = " ".join(
        f"{round(i * step, 1)},{round(22 - 20 * c / top, 1)}" for i, c in enumerate(counts)
    )
    return (
        f'<svg class="sparkline" width="120" height="24" viewBox="0 0 120 24" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{", ".join(map(str, counts))}</title>'
        f'<polyline points="{path}" fill="none" stroke="#cf222e" stroke-width="1.5"/></svg>'
    )
