"""/v1/proposals: the review queue. Read with `viewer`; edit, approve, reject, mark applied with
`reviewer`. Writes name the version they read (optimistic versioning): of two concurrent writers
exactly one wins, the other gets 409, and both attempts are in the proposal's history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Concatenate, Literal, ParamSpec

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator
from sqlalchemy.orm import Session, sessionmaker

from refinery.api import views
from refinery.api.deps import (
    PrincipalDep,
    ProposalId,
    SessionsDep,
    SettingsDep,
    Viewer,
    refuse_below_reviewer,
    reviewer_acting_on,
)
from refinery.api.models import (
    AppliedAck,
    AuditPublic,
    BulkDecision,
    BulkResult,
    BulkResultPublic,
    ClaimRequest,
    ConflictPublic,
    Decision,
    ErrorPublic,
    ProposalDetail,
    ProposalListPublic,
    ProposalUpdate,
)
from refinery.api.tokens import NAME_PATTERN, Principal, Role
from refinery.review import decisions, service
from refinery.review.edits import ArtifactEdit
from refinery.review.errors import InvalidEdit, ProposalNotFound, Refused
from refinery.review.service import SEARCH_MAX_CHARS, ProposalFilter, Sort
from refinery.settings import TrendSettings
from schemas.events import AppId
from schemas.proposals import ProposalKind, ProposalStatus

router = APIRouter(prefix="/v1/proposals", tags=["proposals"])
P = ParamSpec("P")


def json_response(model: BaseModel) -> Response:
    """Serialize in the route's own thread. Returning the model would make FastAPI validate it
    again against `response_model` and serialize it in another thread-pool hop; the
    `response_model=` of each route still documents the body in the OpenAPI schema."""
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorPublic, "description": "The token's role is too low."},
}
_ONE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    404: {"model": ErrorPublic, "description": "No such proposal."},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ONE_ERRORS,
    409: {
        "model": ConflictPublic,
        "description": "Not allowed from its status, or another write won.",
    },
    413: {"model": ErrorPublic, "description": "Body larger than API_MAX_BODY_BYTES."},
}


def _bound(*, end: bool) -> Any:
    def parse(value: Any) -> Any:
        if isinstance(value, str):
            return views.time_bound(value, end=end)
        return value

    return BeforeValidator(parse)


# A date alone covers its whole day (UTC) at either end; a time without a zone is UTC.
StartTime = Annotated[datetime | None, _bound(end=False)]
EndTime = Annotated[datetime | None, _bound(end=True)]
Claim = Literal["mine", "unclaimed"]
ClusterId = Annotated[
    str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Cluster id (c_...).")
]


@router.get("", response_model=ProposalListPublic, responses=_AUTH_ERRORS)
def list_proposals(
    principal: Viewer,
    sessions: SessionsDep,
    app: Annotated[AppId | None, Query(description="Only this app's proposals.")] = None,
    kind: ProposalKind | None = None,
    status: ProposalStatus | None = None,
    cluster: ClusterId = None,
    created_after: Annotated[
        StartTime,
        Query(description="Created at or after (ISO 8601); a date alone: from its start (UTC)."),
    ] = None,
    created_before: Annotated[
        EndTime,
        Query(description="Created before (ISO 8601); a date alone includes that whole day (UTC)."),
    ] = None,
    search: Annotated[
        str | None,
        Query(
            max_length=SEARCH_MAX_CHARS,
            description="Text in the title, the cluster label or an example query (any case).",
        ),
    ] = None,
    sort: Annotated[
        Sort,
        Query(
            description="newest or oldest first, size: most failing first, or impact: highest"
            " expected impact first (evidence.expected_impact)."
        ),
    ] = "newest",
    claim: Annotated[
        Claim | None,
        Query(description="mine: claimed by you (the token's name); unclaimed: by nobody."),
    ] = None,
    claimed_by: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Claimed by this reviewer.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[
        int, Query(ge=0, le=1_000_000_000, description="Past the end: the last page.")
    ] = 0,
) -> Response:
    """A page of the queue, newest first unless `sort` says otherwise."""
    # `claim=mine` is the caller's own name; it wins over a `claimed_by` given with it.
    claims: dict[str, Any] = {"claimed_by": claimed_by} if claimed_by else {}
    claims |= service.claim_filter(claim, actor=principal.name)
    with sessions() as session:
        items, total, offset = views.list_summaries(
            session,
            ProposalFilter(
                app_id=app,
                kind=kind,
                status=status,
                cluster_id=cluster,
                created_after=created_after,
                created_before=created_before,
                search=search,
                **claims,
            ),
            limit=limit,
            offset=offset,
            sort=sort,
        )
    return json_response(
        ProposalListPublic(total=total, limit=limit, offset=offset, sort=sort, items=items)
    )


_STATUS_CODES = {None: 200, "not_found": 404, "conflict": 409, "invalid": 422}


@router.post(
    "/bulk",
    response_model=BulkResultPublic,
    responses={
        **_AUTH_ERRORS,
        413: {"model": ErrorPublic, "description": "Body larger than API_MAX_BODY_BYTES."},
    },
)
def bulk_decide(
    body: BulkDecision, principal: PrincipalDep, sessions: SessionsDep, settings: SettingsDep
) -> Response:
    """Approve or reject several proposals with one comment. Each is decided exactly as
    `POST /v1/proposals/{id}/approve` or `/reject` would (its own version check, transaction and
    audit entry), so some may succeed while others are refused: the answer is 200 with one
    result per proposal, its `status_code` what the single endpoint would have said (404, 409
    with who decided it, 422 for an invalid stored artifact). A role below reviewer: 403, and
    the refused attempt is audited on each proposal named."""
    ids = [item.id for item in body.proposals]
    seen: set[str] = set()
    for index, proposal_id in enumerate(ids):
        if proposal_id in seen:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "proposals", index, "id"),
                        "msg": f"{proposal_id} is named twice",
                        "type": "value_error",
                    }
                ]
            )
        seen.add(proposal_id)
    if not principal.role.allows(Role.REVIEWER):
        target = "approved" if body.action == "approve" else "rejected"
        reason = refuse_below_reviewer(sessions, ids, principal, action=body.action, target=target)
        raise HTTPException(403, reason)
    outcomes = decisions.bulk_decide(
        sessions,
        body.action,
        [(item.id, item.expected_version) for item in body.proposals],
        actor=principal.name,
        topic=settings.topic_approved,
        comment=body.comment,
    )
    results = [
        BulkResult(
            id=o.proposal_id,
            ok=o.error is None,
            status_code=_STATUS_CODES[o.error],
            detail=o.detail,
            loc=list(o.loc) or None,
            status=o.status,
            version=o.version,
        )
        for o in outcomes
    ]
    succeeded = sum(r.ok for r in results)
    return json_response(
        BulkResultPublic(
            action=body.action,
            succeeded=succeeded,
            failed=len(results) - succeeded,
            results=results,
        )
    )


@router.get("/{proposal_id}", response_model=ProposalDetail, responses=_ONE_ERRORS)
def get_proposal(
    proposal_id: ProposalId,
    _: Viewer,
    sessions: SessionsDep,
    settings: SettingsDep,
    max_rows: Annotated[int, Query(ge=0, le=10_000, description="Dataset rows to include.")] = 200,
) -> Response:
    """The proposal with its evidence, its artifact rendered, and its history."""
    with sessions() as session:
        row = service.get_proposal(session, proposal_id)
        detail = views.detail(
            session,
            row,
            service.proposal_history(session, proposal_id),
            settings,
            max_rows=max_rows,
        )
    return json_response(detail)


@router.get("/{proposal_id}/history", response_model=list[AuditPublic], responses=_ONE_ERRORS)
def get_history(proposal_id: ProposalId, _: Viewer, sessions: SessionsDep) -> list[AuditPublic]:
    """Every attempt on the proposal, allowed or refused, oldest first."""
    with sessions() as session:
        service.get_proposal(session, proposal_id)
        return [views.audit_public(h) for h in service.proposal_history(session, proposal_id)]


@router.get(
    "/{proposal_id}/artifact",
    responses={
        **_ONE_ERRORS,
        200: {
            "description": "Prompt diff, the RAG source manifest (JSON) or the dataset (JSONL).",
            "content": {"text/x-diff": {}, "application/json": {}, "application/x-ndjson": {}},
        },
    },
)
def download_artifact(proposal_id: ProposalId, _: Viewer, sessions: SessionsDep) -> Response:
    with sessions() as session:
        download = views.artifact_download(service.get_proposal(session, proposal_id))
    return Response(
        download.content,
        media_type=download.media_type,
        headers={"Content-Disposition": f'attachment; filename="{download.filename}"'},
    )


def _detail(sessions: sessionmaker[Session], settings: TrendSettings, proposal_id: str) -> Response:
    with sessions() as session:
        row = service.get_proposal(session, proposal_id)
        detail = views.detail(
            session, row, service.proposal_history(session, proposal_id), settings
        )
    return json_response(detail)


def _conflict(sessions: sessionmaker[Session], proposal_id: str, exc: Exception) -> JSONResponse:
    """409 saying what the proposal is now, and who decided it, when, and what they said."""
    with sessions() as session:
        row = service.get_proposal(session, proposal_id)
        body = ConflictPublic(
            detail=f"{exc}. {service.describe_state(row)}",
            status=row.status,
            version=row.version,
            decided_by=row.decided_by,
            decided_at=views.aware(row.decided_at) if row.decided_at else None,
            decision_comment=row.decision_comment,
            claimed_by=row.claimed_by,
        )
    return JSONResponse(body.model_dump(mode="json"), status_code=409)


def _write(
    action: Callable[Concatenate[sessionmaker[Session], str, P], object],
    sessions: sessionmaker[Session],
    settings: TrendSettings,
    proposal_id: str,
    *args: P.args,
    **kwargs: P.kwargs,
) -> Response:
    """`action(sessions, proposal_id, **kwargs)`, one of the review package's writes: the
    proposal as it is then, shown as GET shows it, or 409 when the write was refused."""
    try:
        action(sessions, proposal_id, *args, **kwargs)
    except Refused as exc:
        return _conflict(sessions, proposal_id, exc)
    return _detail(sessions, settings, proposal_id)


@router.patch("/{proposal_id}", response_model=ProposalDetail, responses={**_WRITE_ERRORS})
def edit_proposal(
    proposal_id: ProposalId,
    body: ProposalUpdate,
    principal: Annotated[Principal, Depends(reviewer_acting_on("edit", ProposalStatus.PENDING))],
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Any:
    """Edit a pending proposal's artifact before approving it. Give the fields of its kind:
    `proposed_text` (system_prompt_edit; the diff is recomputed), `topic` /
    `representative_queries` / `must_cover` (rag_source), `rows` (fine_tune_dataset). The edit
    bumps the version and is recorded, with a diff, in the audit log."""
    edit = ArtifactEdit.model_validate(
        body.model_dump(include=set(ArtifactEdit.model_fields), exclude_unset=True)
    )
    return _write(
        decisions.edit_proposal,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        edit=edit,
        expected_version=body.expected_version,
        comment=body.comment,
    )


@router.post("/{proposal_id}/approve", response_model=ProposalDetail, responses=_WRITE_ERRORS)
def approve_proposal(
    proposal_id: ProposalId,
    body: Decision,
    principal: Annotated[
        Principal, Depends(reviewer_acting_on("approve", ProposalStatus.APPROVED))
    ],
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Any:
    """pending -> approved. In the same transaction: the outbox row that `refinery relay`
    publishes downstream, and for a system prompt edit, the prompt registry's new version."""
    return _write(
        decisions.approve,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        topic=settings.topic_approved,
        comment=body.comment,
        expected_version=body.expected_version,
    )


@router.post("/{proposal_id}/reject", response_model=ProposalDetail, responses=_WRITE_ERRORS)
def reject_proposal(
    proposal_id: ProposalId,
    body: Decision,
    principal: Annotated[Principal, Depends(reviewer_acting_on("reject", ProposalStatus.REJECTED))],
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Any:
    """pending -> rejected."""
    return _write(
        decisions.reject,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        comment=body.comment,
        expected_version=body.expected_version,
    )


@router.post("/{proposal_id}/applied", response_model=ProposalDetail, responses=_WRITE_ERRORS)
def mark_applied(
    proposal_id: ProposalId,
    principal: Annotated[Principal, Depends(reviewer_acting_on("applied", ProposalStatus.APPLIED))],
    sessions: SessionsDep,
    settings: SettingsDep,
    body: Annotated[AppliedAck | None, Body()] = None,
) -> Any:
    """approved -> applied: a downstream system (prompt registry, RAG indexer, fine-tuning job)
    acknowledges that the refinement is live. The body is optional."""
    body = body or AppliedAck()
    return _write(
        decisions.mark_applied,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        comment=body.comment,
        expected_version=body.expected_version,
    )


@router.post(
    "/{proposal_id}/claim",
    response_model=ProposalDetail,
    responses={
        **_WRITE_ERRORS,
        422: {"description": "No active reviewer token has the assignee's name."},
    },
)
def claim_proposal(
    proposal_id: ProposalId,
    principal: Annotated[Principal, Depends(reviewer_acting_on("claim", None))],
    sessions: SessionsDep,
    settings: SettingsDep,
    body: Annotated[ClaimRequest | None, Body()] = None,
) -> Any:
    """Claim a pending proposal to review it (`assignee`: assign it to another reviewer). One
    claimed by someone else: 409 naming them, unless `force`. Audited; the version stays (a claim
    changes neither the artifact nor the status). The body is optional."""
    body = body or ClaimRequest()
    return _write(
        decisions.claim,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        assignee=body.assignee,
        force=body.force,
    )


@router.delete("/{proposal_id}/claim", response_model=ProposalDetail, responses=_WRITE_ERRORS)
def release_proposal(
    proposal_id: ProposalId,
    principal: Annotated[Principal, Depends(reviewer_acting_on("release", None))],
    sessions: SessionsDep,
    settings: SettingsDep,
    force: Annotated[bool, Query(description="Release someone else's claim.")] = False,
) -> Any:
    """Drop your claim (someone else's with `force`, else 409 naming them)."""
    return _write(
        decisions.release,
        sessions,
        settings,
        proposal_id,
        actor=principal.name,
        force=force,
    )


def not_found_handler(_request: Any, exc: ProposalNotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, status_code=404)


def invalid_edit_handler(_request: Any, exc: InvalidEdit) -> JSONResponse:
    # Shaped like FastAPI's own 422s, so clients parse one format; loc names the row and field.
    return JSONResponse(
        {"detail": [{"loc": ["body", *exc.loc], "msg": exc.message, "type": "value_error"}]},
        status_code=422,
    )
