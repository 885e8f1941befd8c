"""GET /search (one query in the URL) and POST /search (a batch, encoded together)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from medsearch.errors import BadInputError
from medsearch.fusion import DEFAULT_MODE, Fusion
from medsearch.search import DEFAULT_OVERSAMPLE, DEFAULT_TIER
from medsearch.server.models import (FUSION, MAX_K, MAX_OVERSAMPLE, MODE_HELP, Method, Mode, SearchRequest,
                                     SearchResponse, Tier)
from medsearch.server.service import ServiceDep

router = APIRouter(tags=["search"])


@router.get("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search_get(
    request: Request,
    service: ServiceDep,
    q: str = Query(..., description="The query text."),
    tier: Tier = DEFAULT_TIER,
    k: int = Query(10, ge=1, le=MAX_K, description="Documents to return."),
    dim: int | None = Query(None, description="Search this stored prefix dim instead of the tier's."),
    oversample: int | None = Query(DEFAULT_OVERSAMPLE, ge=1, le=MAX_OVERSAMPLE, description="fast tier: candidates = k x oversample [default: the count the index measured for its recall target]."),
    filter: list[str] = Query([], description="field=value, field!=value, field>=number or field<=number; repeat to AND them."),  # noqa: A002
    mode: Mode = Query(DEFAULT_MODE, description=MODE_HELP),
    fusion: Method = Query(FUSION.method, description="hybrid: reciprocal rank fusion or a convex combination of normalised scores."),
    rrf_k: int = Query(FUSION.rrf_k, ge=0, le=10_000, description="hybrid rrf: each list adds 1 / (rrf_k + rank)."),
    dense_weight: float = Query(FUSION.weight, ge=0, le=1, description="hybrid convex: the dense scores' weight."),
):
    """One query: the same JSON as `medsearch query --json`."""
    answer = await service.search([q], None, tier=tier, k=k, dim=dim, oversample=oversample, filters=filter,
                                  mode=mode, fusion=Fusion(fusion, rrf_k, dense_weight, FUSION.depth),
                                  receive=request.receive, one=True)
    return Response(answer, media_type="application/json")


@router.post("/search", response_model=list[SearchResponse])
async def search_post(request: SearchRequest, http: Request, service: ServiceDep):
    """A batch of queries, encoded together: one object per query, in order (as `medsearch query --queries F --json`)."""
    if len(request.queries) > service.settings.max_queries:
        raise BadInputError(f"{len(request.queries)} queries in one request; the limit is {service.settings.max_queries}")
    ids = [str(q.id) if q.id is not None else str(i) for i, q in enumerate(request.queries, start=1)]
    texts = [q.text for q in request.queries]
    answer = await service.search(texts, ids, tier=request.tier, k=request.k, dim=request.dim,
                                  oversample=request.oversample, filters=request.filters, mode=request.mode,
                                  fusion=Fusion(request.fusion, request.rrf_k, request.dense_weight, FUSION.depth),
                                  receive=http.receive)
    return Response(answer, media_type="application/json")
