"""Inputs and outputs of refinements: an app's candidate corpus (`/v1/apps/{app_id}/corpus`:
register with `reviewer`, read with `viewer`) and the training files of a fine-tuning proposal
(`/v1/proposals/{id}/export`, `viewer`: the same redacted evidence the proposal shows)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from refinery.api.deps import ProposalId, Reviewer, SessionsDep, SettingsDep, Viewer
from refinery.api.models import ErrorPublic
from refinery.corpus.chunking import DOC_ID_MAX_CHARS, CorpusError, document
from refinery.corpus.store import add_documents, corpus_summary, list_documents
from refinery.review.service import get_proposal
from schemas.events import AppId

router = APIRouter()

AppPath = Annotated[AppId, Path(description="The app (tenant).")]
CORPUS_MAX_DOCUMENTS = 500  # per request; larger corpora: several requests, or the CLI
CORPUS_MAX_DOCUMENT_CHARS = 200_000

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorPublic, "description": "The token's role is too low."},
}


class CorpusDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1,
        max_length=DOC_ID_MAX_CHARS,
        description="The id the app's retriever reports as source_id for this document.",
    )
    text: str = Field(min_length=1, max_length=CORPUS_MAX_DOCUMENT_CHARS)
    title: str | None = Field(None, max_length=1000)
    format: Literal["markdown", "html", "text"] = "markdown"


class CorpusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[CorpusDocumentIn] = Field(min_length=1, max_length=CORPUS_MAX_DOCUMENTS)
    replace: bool = Field(False, description="Drop the app's other documents first.")


class CorpusDocumentPublic(BaseModel):
    doc_id: str
    title: str
    chunks: int


class CorpusPublic(BaseModel):
    app_id: str
    version: int = Field(description="Grows with every registration; 0: none yet.")
    documents: int
    chunks: int
    added_documents: int = 0
    added_chunks: int = 0


class CorpusListPublic(BaseModel):
    app_id: str
    version: int
    documents: list[CorpusDocumentPublic]


@router.post(
    "/v1/apps/{app_id}/corpus",
    tags=["corpus"],
    response_model=CorpusPublic,
    status_code=status.HTTP_201_CREATED,
    responses={**_ERRORS, 422: {"model": ErrorPublic, "description": "Invalid documents."}},
)
def add_corpus(
    app_id: AppPath, body: CorpusIn, _: Reviewer, sessions: SessionsDep, settings: SettingsDep
) -> CorpusPublic:
    """Chunk, embed and store documents in the app's candidate corpus (a document id registered
    before is replaced); knowledge-gap proposals name the ones that match their queries."""
    from refinery.embed.embedder import get_embedder

    try:
        docs = [document(d.id, d.text, d.title, d.format) for d in body.documents]
    except CorpusError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    with sessions.begin() as session:
        s = add_documents(
            session,
            app_id,
            docs,
            get_embedder(settings),
            max_chunk_chars=settings.corpus_chunk_max_chars,
            replace=body.replace,
        )
    return CorpusPublic(**s.__dict__)


@router.get(
    "/v1/apps/{app_id}/corpus", tags=["corpus"], response_model=CorpusListPublic, responses=_ERRORS
)
def get_corpus(app_id: AppPath, _: Viewer, sessions: SessionsDep) -> CorpusListPublic:
    with sessions() as session:
        summary = corpus_summary(session, app_id)
        docs = list_documents(session, app_id)
    return CorpusListPublic(
        app_id=app_id,
        version=summary.version,
        documents=[CorpusDocumentPublic(**d.__dict__) for d in docs],
    )


@router.get(
    "/v1/proposals/{proposal_id}/export",
    tags=["proposals"],
    responses={
        **_ERRORS,
        200: {
            "content": {"application/zip": {}, "application/jsonl": {}},
            "description": "A zip of the export folder; with `split`, that JSONL file alone.",
        },
        404: {"model": ErrorPublic, "description": "No such proposal."},
        409: {"model": ErrorPublic, "description": "Not a fine-tuning dataset proposal."},
    },
)
def export_dataset(
    proposal_id: ProposalId,
    _: Viewer,
    sessions: SessionsDep,
    settings: SettingsDep,
    format: Annotated[
        Literal["openai", "dpo", "hf"],
        Query(description="openai: chat fine-tuning JSONL; dpo: preference pairs; hf: datasets."),
    ] = "openai",
    split: Annotated[
        Literal["train", "validation"] | None,
        Query(description="openai/dpo: that split's JSONL alone instead of a zip."),
    ] = None,
) -> Response:
    """A fine-tuning proposal's dataset, ready to train on: near-duplicates removed, PII
    re-checked, split by a seed from the proposal id, counts in manifest.json."""
    from refinery.propose.datasets import (
        NotADataset,
        export_files,
        prepare_proposal,
        zip_files,
    )

    with sessions() as session:
        row = get_proposal(session, proposal_id)
        kind, payload, title = row.kind, row.payload, row.title
    try:
        prepared = prepare_proposal(proposal_id, kind, payload, settings)
    except NotADataset as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    files = export_files(prepared, format, title)
    if split is not None and format != "hf":
        name = f"{proposal_id}-{format}-{split}"
        return Response(
            files[f"{split}.jsonl"],
            media_type="application/jsonl",
            headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'},
        )
    folder = f"{proposal_id}-{format}"
    return Response(
        zip_files(files, folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{folder}.zip"'},
    )
