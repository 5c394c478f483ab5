"""An app's failure picture: `/v1/apps/{app_id}/impact` (JSON, `viewer`) and `/ui/apps/{app_id}`
(the same figures as a page with server-rendered SVG charts). Reads only (refinery.impact.figures).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from refinery.api.deps import SessionsDep, Viewer
from refinery.api.routes.ui import UiUserDep, render
from refinery.impact.figures import VERDICT_COLOURS, app_impact, chart_svg, sparkline_svg
from schemas.events import AppId

router = APIRouter(tags=["apps"])

AppPath = Annotated[AppId, Path(description="The app (tenant).")]
Days = Annotated[int, Query(ge=1, le=365, description="How many days back.")]


@router.get("/v1/apps/{app_id}/impact")
def impact(app_id: AppPath, _: Viewer, sessions: SessionsDep, days: Days = 30) -> dict[str, Any]:
    """The app's failing share of traffic per day and per prompt version, its top failure modes
    with their trends, and its approved refinements: when approved and shipped (reported or
    inferred from traffic), and the latest verdict (improved, no_change, regressed,
    not_enough_data, not_applied) with before/after counts and the 95% interval of the change."""
    with sessions() as session:
        return app_impact(session, app_id, days=days)


@router.get("/ui/apps/{app_id}", include_in_schema=False)
def page(app_id: AppPath, user: UiUserDep, sessions: SessionsDep, days: Days = 30) -> HTMLResponse:
    with sessions() as session:
        figures = app_impact(session, app_id, days=days)
    # Everything inside the SVG is numbers, ISO dates or escaped text (refinery.impact.figures).
    return render(
        "app.html",
        user=user,
        app_id=app_id,
        days=days,
        figures=figures,
        chart=Markup(chart_svg(figures)),  # noqa: S704
        sparklines={
            m["cluster_id"]: Markup(sparkline_svg(m["trend"])) for m in figures["failure_modes"]
        },  # noqa: S704
        colours=VERDICT_COLOURS,
    )
