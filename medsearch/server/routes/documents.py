"""/documents: read one document; add or replace documents, delete one (the writes: `--writable` only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medsearch.errors import BadInputError
from medsearch.server.access import access_fields
from medsearch.server.models import DocumentOut, DocumentsIn, ErrorOut, WriteOut
from medsearch.server.service import ReadOnly, ServiceDep
from medsearch.validation import check_text

router = APIRouter(tags=["documents"])


@router.get("/documents/{doc_id:path}", response_model=DocumentOut)
async def document(doc_id: str, service: ServiceDep):
    """The whole document: title, text, url, source, metadata."""
    return JSONResponse(await service.document(doc_id))


@router.post("/documents", response_model=WriteOut, responses={403: {"model": ErrorOut}})
async def add_documents(request: DocumentsIn, http: Request, service: ServiceDep):
    """Add or replace documents by id (`--writable` only): unchanged ones cost nothing, changed ones
    are re-encoded. Searches see the write as soon as this returns."""
    from medsearch.documents.corpus import documents_from_records
    from medsearch.index.writes import upsert

    settings = service.settings
    if not settings.writable:
        raise ReadOnly()
    if len(request.documents) > settings.max_documents:
        raise BadInputError(f"{len(request.documents)} documents in one request; the limit is {settings.max_documents}")
    fields = access_fields(http)
    fields.update(kind="upsert", documents=len(request.documents))
    documents = documents_from_records(request.documents)
    searcher = service.loaded()
    answer = await service.write(lambda: upsert(searcher.index.path, documents, searcher.encoder), kind="upsert")
    fields["generation"] = answer["generation"]
    return JSONResponse(answer)


@router.delete("/documents/{doc_id:path}", response_model=WriteOut, responses={403: {"model": ErrorOut}})
async def delete_document(doc_id: str, http: Request, service: ServiceDep):
    """Delete a document from every tier (`--writable` only)."""
    from medsearch.index.writes import delete

    if not service.settings.writable:
        raise ReadOnly()
    check_text(doc_id, "the document id")
    fields = access_fields(http)
    fields.update(kind="delete", documents=1)
    searcher = service.loaded()
    answer = await service.write(lambda: delete(searcher.index.path, [doc_id]), kind="delete")
    fields["generation"] = answer["generation"]
    return JSONResponse(answer)
