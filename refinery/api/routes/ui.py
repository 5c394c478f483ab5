"""/ui/: the web UI. Server-rendered HTML (Jinja2, autoescape on), one stylesheet, and one small
script of keyboard shortcuts (static/review.js) that every page works without.

Log-in: the reviewer pastes an API token; it opens a server-side session (refinery.api.tokens)
whose random id is kept in an HttpOnly, SameSite=Strict cookie, Secure when the request came over
HTTPS (behind a proxy: `refinery api` runs uvicorn with proxy_headers, which trusts
X-Forwarded-Proto from the addresses in FORWARDED_ALLOW_IPS, 127.0.0.1 by default). The session
is checked on every request and ends at UI_SESSION_TTL_S, on log-out, or when its token is
revoked; the token itself never reaches the browser. Every form that changes something carries
a CSRF value derived from the session id, which another site cannot compute. User text
(queries, responses, feedback, comments) is escaped by the autoescaping templates, and the
Content-Security-Policy allows only that one script file (no inline script), so an injected tag
stays inert text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import StringConstraints, TypeAdapter, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from refinery.api import views
from refinery.api.deps import (
    PROPOSAL_ID_PATTERN,
    ProposalId,
    SessionsDep,
    SettingsDep,
    refuse_below_reviewer,
)
from refinery.api.middleware import STRICT_CSP
from refinery.api.models import ProposalDetail
from refinery.api.ratelimit import UI_LOGIN, client_of, limiter_for
from refinery.api.tokens import (
    NAME_PATTERN,
    Principal,
    Role,
    authenticate,
    close_ui_session,
    open_ui_session,
    ui_session_principal,
)
from refinery.review import decisions, service
from refinery.review.edits import ArtifactEdit, CleanText, DatasetRow
from refinery.review.errors import InvalidEdit, ProposalNotFound, Refused
from refinery.review.figures import fold
from refinery.review.service import SEARCH_MAX_CHARS, ProposalFilter
from refinery.settings import Settings, TrendSettings
from schemas.events import AppId
from schemas.proposals import ProposalKind, ProposalStatus

router = APIRouter(prefix="/ui", include_in_schema=False)

COOKIE = "refinery_token"  # the name of old; it holds a session id (rfs_...), not a token
PAGE_SIZE = 50
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_templates = Environment(
    loader=PackageLoader("refinery.api", "templates"),
    autoescape=True,  # every {{ }} is HTML-escaped; nothing in the templates uses |safe
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return views.aware(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_templates.filters["time"] = _fmt_time
_templates.filters["fold"] = fold

DONE_MESSAGES = {
    "approved": "Approved. The refinement goes downstream through the outbox.",
    "rejected": "Rejected.",
    "edited": "Edit saved; the proposal's version went up.",
    "applied": "Marked applied.",
    "claimed": "Claimed: it is in your queue (Mine).",
    "assigned": "Assigned: it is in their queue (Mine, for them).",
    "released": "Claim released.",
}


class LoginRequired(Exception):
    pass


def login_required_handler(_request: Request, _exc: LoginRequired) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@dataclass(frozen=True)
class UiUser:
    principal: Principal
    csrf: str

    @property
    def can_review(self) -> bool:
        return self.principal.role.allows(Role.REVIEWER)


def _csrf_for(token: str) -> str:
    return hashlib.sha256(b"refinery-ui-csrf:" + token.encode("utf-8", "replace")).hexdigest()


def ui_user(request: Request, sessions: SessionsDep) -> UiUser:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise LoginRequired
    with sessions() as session:
        principal = ui_session_principal(session, session_id)
    if principal is None:
        raise LoginRequired
    return UiUser(principal, _csrf_for(session_id))


UiUserDep = Annotated[UiUser, Depends(ui_user)]


# The pages load /ui/static/review.js (keyboard shortcuts): that file, and no inline script.
UI_CSP = f"{STRICT_CSP}; script-src 'self'"


def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(
        _templates.get_template(name).render(**context),
        status_code=status_code,
        headers={"content-security-policy": UI_CSP},
    )


def _cross_site(request: Request) -> bool:
    """A form posted from another site (its Origin names another host). The SameSite=Strict
    cookie and the CSRF value already stop forged actions; this also stops a forged log-in, which
    would leave the browser logged in as someone else."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the body size limit already bounds it)."""
    raw = await request.body()
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=100
        )
    except (UnicodeDecodeError, ValueError):
        return {}
    # Browsers send textarea line breaks as CRLF; store LF like everything else.
    return {key: value.replace("\r\n", "\n") for key, value in pairs}


def validation_error_page(_request: Request, exc: RequestValidationError) -> HTMLResponse:
    fields = ", ".join(
        ".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors()
    )
    return render(
        "error.html",
        422,
        title="Invalid request",
        message=f"Invalid value for: {fields}",
        user=None,
    )


# --- static and session --------------------------------------------------------------------


# The only files served from STATIC_DIR; any other name is 404, as no route.
STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}


@cache
def _static_bytes(name: str) -> bytes:
    """A packaged file, read on its first request and kept: it cannot change while we run."""
    return (STATIC_DIR / name).read_bytes()


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404)
    return Response(
        _static_bytes(name),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("/login")
def login_page() -> HTMLResponse:
    return render("login.html", user=None, error=None)


@router.post("/login")
async def login(request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    if _cross_site(request):
        return render(
            "error.html", 403, title="Forbidden", message="Cross-site log-in refused.", user=None
        )
    limiter, client = limiter_for(request.app, settings), client_of(request)
    retry_after = limiter.retry_after(UI_LOGIN, client)
    if retry_after is not None:
        page = render(
            "login.html",
            429,
            user=None,
            error=f"Too many failed log-ins; retry in {retry_after} s.",
        )
        page.headers["Retry-After"] = str(retry_after)
        return page
    token = (await _form(request)).get("token", "").strip()

    def check() -> str | None:
        with sessions.begin() as session:
            principal = authenticate(session, token) if token else None
            if principal is None:
                return None
            return open_ui_session(session, principal, ttl_s=settings.ui_session_ttl_s)

    session_id = await run_in_threadpool(check)
    if session_id is None:
        limiter.failed(UI_LOGIN, client)
        return render("login.html", 401, user=None, error="Unknown or revoked token.")
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(settings.ui_session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, user: UiUserDep, sessions: SessionsDep) -> Response:
    csrf = (await _form(request)).get("csrf", "")
    if _cross_site(request) or not hmac.compare_digest(csrf, user.csrf):
        return render(
            "error.html", 403, title="Forbidden", message="Stale form; reload the page.", user=user
        )
    session_id = request.cookies.get(COOKIE, "")

    def close() -> None:
        with sessions.begin() as session:
            close_ui_session(session, session_id)

    await run_in_threadpool(close)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- queue ---------------------------------------------------------------------------------

_FILTERS: dict[str, TypeAdapter[Any]] = {
    "app": TypeAdapter(AppId),
    "kind": TypeAdapter(ProposalKind),
    "status": TypeAdapter(ProposalStatus),
    "cluster": TypeAdapter(Annotated[str, StringConstraints(pattern=PROPOSAL_ID_PATTERN)]),
    "created_after": TypeAdapter(str),
    "created_before": TypeAdapter(str),
    "search": TypeAdapter(Annotated[str, StringConstraints(max_length=SEARCH_MAX_CHARS)]),
    "sort": TypeAdapter(service.Sort),
    "claim": TypeAdapter(Literal["mine", "unclaimed"]),
    "offset": TypeAdapter(int),
}


def _parse_filters(params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, adapter in _FILTERS.items():
        raw = params.get(name, "").strip()
        if not raw:
            continue
        try:
            value = adapter.validate_python(raw)
            if name in ("created_after", "created_before"):
                # A date alone covers its whole day: "until 2026-02-01" includes that day.
                value = views.time_bound(value, end=name == "created_before")
            if name == "offset" and not 0 <= value <= 1_000_000_000:
                raise ValueError(name)
        except (ValidationError, ValueError, OverflowError):
            errors.append(name)
            continue
        values[name] = value
    return values, errors


@router.get("/")
def queue(request: Request, user: UiUserDep, sessions: SessionsDep) -> HTMLResponse:
    return _queue_page(sessions, user, dict(request.query_params.items()))


def _queue_page(
    sessions: sessionmaker[Session],
    user: UiUser,
    params: dict[str, str],
    *,
    report: BulkReport | None = None,
) -> HTMLResponse:
    values, errors = _parse_filters(params)
    offset = values.pop("offset", 0)
    sort = values.get("sort", "newest")
    with sessions() as session:
        items, total, offset = views.list_summaries(
            session,
            ProposalFilter(
                app_id=values.get("app"),
                kind=values.get("kind"),
                status=values.get("status"),
                cluster_id=values.get("cluster"),
                created_after=values.get("created_after"),
                created_before=values.get("created_before"),
                search=values.get("search"),
                **service.claim_filter(values.get("claim"), actor=user.principal.name),
            ),
            limit=PAGE_SIZE,
            offset=offset,
            sort=sort,
        )
    kept = {
        k: params[k]
        for k in _FILTERS
        if k != "offset" and params.get(k, "").strip() and k not in errors
    }

    def page_url(new_offset: int) -> str:
        return "/ui/?" + urlencode({**kept, "offset": new_offset})

    return render(
        "list.html",
        422 if errors else 200,
        user=user,
        items=items,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        filters=kept,
        errors=errors,
        kinds=[k.value for k in ProposalKind],
        statuses=[s.value for s in ProposalStatus],
        sorts=list(service.SORTS),
        claims=list(service.CLAIM_FILTERS),
        back=urlencode({**kept, "offset": offset}),
        report=report,
        prev_url=page_url(max(offset - PAGE_SIZE, 0)) if offset > 0 else None,
        next_url=page_url(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None,
    )


@dataclass(frozen=True)
class BulkReport:
    action: str
    outcomes: list[decisions.BulkOutcome]
    error: str | None = None  # the request as a whole was refused

    @property
    def decided(self) -> int:
        return sum(o.error is None for o in self.outcomes)

    @property
    def refused(self) -> list[decisions.BulkOutcome]:
        return [o for o in self.outcomes if o.error is not None]


def _picks(values: list[str]) -> list[tuple[str, int]]:
    """`id:version` values of the list's checkboxes; raises ValueError naming a malformed one."""
    picks: list[tuple[str, int]] = []
    for value in values:
        proposal_id, _, version = value.rpartition(":")
        try:
            valid = re.fullmatch(PROPOSAL_ID_PATTERN, proposal_id) and 0 < int(version) < 2**31
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"not a proposal and version: {value[:60]!r}")
        picks.append((proposal_id, int(version)))
    return picks


@router.post("/bulk")
async def bulk(
    request: Request, user: UiUserDep, sessions: SessionsDep, settings: SettingsDep
) -> Response:
    """Approve or reject the proposals ticked on the list page (one comment for all), each
    through the single-decision path; the list comes back saying what happened to each."""
    raw = (await request.body()).decode("utf-8", "replace")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=decisions.BULK_MAX_ITEMS + 10)
    except ValueError:  # more fields than a page of proposals
        message = f"At most {decisions.BULK_MAX_ITEMS} proposals at once."
        return render("error.html", 422, title="Too many", message=message, user=user)
    form = {k: v.replace("\r\n", "\n") for k, v in pairs}
    if _cross_site(request) or not hmac.compare_digest(form.get("csrf", ""), user.csrf):
        return render(
            "error.html", 403, title="Forbidden", message="Stale form; reload the page.", user=user
        )
    back = dict(parse_qsl(form.get("back", ""), max_num_fields=20))
    action = form.get("action", "")
    return await run_in_threadpool(_bulk, sessions, settings, user, form, pairs, back, action)


def _bulk(
    sessions: sessionmaker[Session],
    settings: Settings,
    user: UiUser,
    form: dict[str, str],
    pairs: list[tuple[str, str]],
    back: dict[str, str],
    action: str,
) -> HTMLResponse:
    def refused(status_code: int, message: str) -> HTMLResponse:
        page = _queue_page(sessions, user, back, report=BulkReport(action, [], message))
        page.status_code = status_code
        return page

    if action not in ("approve", "reject"):
        return refused(422, "action: choose approve or reject.")
    try:
        picks = _picks([v for k, v in pairs if k == "pick"])
        comment = form.get("comment", "").strip() or None
        if comment is not None:
            comment = TypeAdapter(CleanText).validate_python(comment[:4000])
    except (ValueError, ValidationError) as exc:
        return refused(422, f"Invalid bulk request: {exc}")
    if not picks:
        return refused(422, "Select at least one pending proposal.")
    if len(picks) > decisions.BULK_MAX_ITEMS:
        return refused(422, f"At most {decisions.BULK_MAX_ITEMS} proposals at once.")
    if not user.can_review:
        reason = refuse_below_reviewer(
            sessions,
            [proposal_id for proposal_id, _ in picks],
            user.principal,
            action=action,
            target=_TARGET[action],
        )
        return refused(403, f"Not allowed: {reason}.")
    outcomes = decisions.bulk_decide(
        sessions,
        "approve" if action == "approve" else "reject",
        picks,
        actor=user.principal.name,
        topic=settings.topic_approved,
        comment=comment,
    )
    return _queue_page(sessions, user, back, report=BulkReport(action, outcomes))


# --- one proposal --------------------------------------------------------------------------


def _load_detail(
    sessions: sessionmaker[Session], settings: TrendSettings, proposal_id: str
) -> ProposalDetail:
    with sessions() as session:
        row = service.get_proposal(session, proposal_id)
        return views.detail(session, row, service.proposal_history(session, proposal_id), settings)


def _edit_values(detail: ProposalDetail) -> dict[str, str]:
    art = detail.artifact
    if art.kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        return {"proposed_text": art.proposed_text}  # type: ignore[union-attr]
    if art.kind == ProposalKind.RAG_SOURCE:
        return {
            "topic": art.topic,  # type: ignore[union-attr]
            "representative_queries": "\n".join(art.representative_queries),  # type: ignore[union-attr]
            "must_cover": "\n".join(art.must_cover),  # type: ignore[union-attr]
        }
    return {"rows": "\n".join(json.dumps(r.model_dump(), ensure_ascii=False) for r in art.items)}  # type: ignore[union-attr]


def _detail_page(
    sessions: sessionmaker[Session],
    settings: TrendSettings,
    proposal_id: str,
    user: UiUser,
    *,
    status_code: int = 200,
    done: str | None = None,
    error: str | None = None,
    submitted: dict[str, str] | None = None,
) -> HTMLResponse:
    try:
        detail = _load_detail(sessions, settings, proposal_id)
    except ProposalNotFound:
        return render(
            "error.html", 404, title="Not found", message=f"No proposal {proposal_id}.", user=user
        )
    values = _edit_values(detail)
    if submitted:
        values.update({k: v for k, v in submitted.items() if k in values})
    return render(
        "detail.html",
        status_code,
        user=user,
        p=detail,
        done=DONE_MESSAGES.get(done or ""),
        error=error,
        edit=values,
        dataset_editable=detail.artifact.kind != ProposalKind.FINE_TUNE_DATASET
        or not detail.artifact.items_truncated,  # type: ignore[union-attr]
    )


@router.get("/proposals/{proposal_id}")
def proposal_page(
    proposal_id: ProposalId,
    user: UiUserDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    done: str | None = None,
) -> HTMLResponse:
    return _detail_page(sessions, settings, proposal_id, user, done=done)


@router.get("/proposals/{proposal_id}/artifact")
def proposal_artifact(proposal_id: ProposalId, _user: UiUserDep, sessions: SessionsDep) -> Response:
    with sessions() as session:
        try:
            download = views.artifact_download(service.get_proposal(session, proposal_id))
        except ProposalNotFound:
            return render(
                "error.html",
                404,
                title="Not found",
                message=f"No proposal {proposal_id}.",
                user=None,
            )
    return Response(
        download.content,
        media_type=download.media_type,
        headers={"Content-Disposition": f'attachment; filename="{download.filename}"'},
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _edit_from_form(kind: str, form: dict[str, str]) -> ArtifactEdit:
    if kind == ProposalKind.SYSTEM_PROMPT_EDIT:
        return ArtifactEdit(proposed_text=form.get("proposed_text", ""))
    if kind == ProposalKind.RAG_SOURCE:
        return ArtifactEdit(
            topic=form.get("topic", "").strip(),
            representative_queries=_lines(form.get("representative_queries", "")),
            must_cover=_lines(form.get("must_cover", "")),
        )
    rows = []
    for number, line in enumerate(form.get("rows", "").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(DatasetRow.model_validate_json(line))
        except ValidationError as exc:
            raise InvalidEdit(
                "rows", f"line {number} is not a valid chat row: {exc.errors()[0]['msg']}"
            ) from exc
    return ArtifactEdit(rows=rows)


def _act(
    sessions: sessionmaker[Session],
    settings: Settings,
    proposal_id: str,
    action: decisions.Action,
    actor: str,
    form: dict[str, str],
) -> str:
    """Carry out `action` from the page's form; returns what was done (a DONE_MESSAGES key)."""
    comment: str | None = None
    version: int | None = None
    edit: ArtifactEdit | None = None
    assignee: str | None = None
    if action == "claim" and form.get("assignee", "").strip():
        assignee = TypeAdapter(_Assignee).validate_python(form["assignee"].strip())
    if action not in ("claim", "release"):  # a claim has no comment and no version
        comment = form.get("comment", "").strip() or None
        if comment is not None:
            comment = TypeAdapter(CleanText).validate_python(comment[:4000])
        try:
            version = int(form.get("version", ""))
        except ValueError as exc:
            raise InvalidEdit("version", "missing; reload the page") from exc
        if action == "edit":
            with sessions() as session:
                edit = _edit_from_form(service.get_proposal(session, proposal_id).kind, form)
    decisions.act(
        sessions,
        proposal_id,
        action,
        actor=actor,
        topic=settings.topic_approved,
        comment=comment,
        expected_version=version,
        edit=edit,
        force=bool(form.get("force")),
        assignee=assignee,
    )
    return "assigned" if assignee else _DONE[action]


# A reviewer's name, as tokens name them (refinery.api.tokens).
_Assignee = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _state(sessions: sessionmaker[Session], proposal_id: str) -> str:
    with sessions() as session:
        return service.describe_state(service.get_proposal(session, proposal_id))


_DONE = {
    "approve": "approved",
    "reject": "rejected",
    "edit": "edited",
    "applied": "applied",
    "claim": "claimed",
    "release": "released",
}
_TARGET = {
    "approve": "approved",
    "reject": "rejected",
    "edit": "pending",
    "applied": "applied",
    "claim": "pending",
    "release": "pending",
}


@router.post("/proposals/{proposal_id}/{action}")
async def proposal_action(
    proposal_id: ProposalId,
    action: Literal["approve", "reject", "edit", "applied", "claim", "release"],
    request: Request,
    user: UiUserDep,
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Response:
    form = await _form(request)
    if _cross_site(request) or not hmac.compare_digest(form.get("csrf", ""), user.csrf):
        return render(
            "error.html", 403, title="Forbidden", message="Stale form; reload the page.", user=user
        )
    if not user.can_review:
        reason = await run_in_threadpool(
            refuse_below_reviewer,
            sessions,
            [proposal_id],
            user.principal,
            action=action,
            target=_TARGET[action],
        )
        return _detail_page(
            sessions, settings, proposal_id, user, status_code=403, error=f"Not allowed: {reason}."
        )
    try:
        done = await run_in_threadpool(
            _act, sessions, settings, proposal_id, action, user.principal.name, form
        )
    except ProposalNotFound:
        return render(
            "error.html", 404, title="Not found", message=f"No proposal {proposal_id}.", user=user
        )
    except Refused as exc:
        state = await run_in_threadpool(_state, sessions, proposal_id)
        return _detail_page(
            sessions,
            settings,
            proposal_id,
            user,
            status_code=409,
            error=f"{exc}. {state}",
            submitted=form,
        )
    except InvalidEdit as exc:
        return _detail_page(
            sessions, settings, proposal_id, user, status_code=422, error=str(exc), submitted=form
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "input"
        return _detail_page(
            sessions,
            settings,
            proposal_id,
            user,
            status_code=422,
            error=f"{where}: {first['msg']}",
            submitted=form,
        )
    if action in ("approve", "reject") and form.get("next"):
        following = await run_in_threadpool(_next_pending, sessions, proposal_id)
        if following is not None:
            return RedirectResponse(f"/ui/proposals/{following}?done={done}", status_code=303)
    return RedirectResponse(f"/ui/proposals/{proposal_id}?done={done}", status_code=303)


def _next_pending(sessions: sessionmaker[Session], after: str) -> str | None:
    """The next pending proposal in the queue's default order (newest first), for "and next"."""
    with sessions() as session:
        items, _, _ = views.list_summaries(
            session, ProposalFilter(status=ProposalStatus.PENDING), limit=2, offset=0
        )
    return next((i.id for i in items if i.id != after), None)
