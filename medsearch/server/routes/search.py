"""GET /search (one query in the URL) and POST /search (a batch, encoded together)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from medsearch.errors import BadInputError
from medsearch.server.access import access_fields
from medsearch.server.models import SearchQuery, SearchRequest, SearchResponse
from medsearch.server.service import ServiceDep

router = APIRouter(tags=["search"])


@router.get("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search_get(request: Request, service: ServiceDep, params: Annotated[SearchQuery, Query()]):
    """One query: the same JSON as `medsearch query --json`."""
    answer = await service.search([params.q], None, params, receive=request.receive, one=True,
                                  fields=access_fields(request))
    return Response(answer, media_type="application/json")


@router.post("/search", response_model=list[SearchResponse])
async def search_post(request: SearchRequest, http: Request, service: ServiceDep):
    """A batch of queries, encoded together: one object per query, in order (as `medsearch query --queries F --json`)."""
    if len(request.queries) > service.settings.max_queries:
        raise BadInputError(f"{len(request.queries)} queries in one request; the limit is {service.settings.max_queries}")
    ids = [str(q.id) if q.id is not None else str(i) for i, q in enumerate(request.queries, start=1)]
    texts = [q.text for q in request.queries]
    answer = await service.search(texts, ids, request, receive=http.receive, fields=access_fields(http))
    return Response(answer, media_type="application/json")
