"""The API's request and response models (the OpenAPI schema at /openapi.json), in one place:
the routers import them from here."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from medsearch.fusion import DEFAULT_MODE, METHODS, MODES, Fusion
from medsearch.index import TIERS
from medsearch.search import DEFAULT_OVERSAMPLE, DEFAULT_TIER

MAX_K = 1000
MAX_OVERSAMPLE = 1000
Tier = Literal["fast", "light", "standard", "deep"]
Mode = Literal["dense", "lexical", "hybrid"]
Method = Literal["rrf", "convex"]
assert set(Tier.__args__) == set(TIERS) and set(Mode.__args__) == set(MODES) and set(Method.__args__) == set(METHODS)
FUSION = Fusion()
MODE_HELP = "dense: the tier's vectors; lexical: BM25 over the same chunks; hybrid: both lists fused."


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Union[str, int, None] = Field(None, description="Returned as query_id; default: the query's position, from 1.")
    text: str = Field(..., description="The query text.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[QueryIn] = Field(..., min_length=1, description="Queries, encoded together in one pass.")
    tier: Tier = DEFAULT_TIER
    k: int = Field(10, ge=1, le=MAX_K, description="Documents per query.")
    dim: int | None = Field(None, description="Search this stored prefix dim instead of the tier's.")
    oversample: int | None = Field(DEFAULT_OVERSAMPLE, ge=1, le=MAX_OVERSAMPLE, description="fast tier: candidates = k x oversample [default: the count the index measured for its recall target].")
    filters: list[str] = Field([], description="field=value, field!=value, field>=number, field<=number; ANDed.")
    mode: Mode = Field(DEFAULT_MODE, description=MODE_HELP)
    fusion: Method = Field(FUSION.method, description="hybrid: reciprocal rank fusion or a convex combination of normalised scores.")
    rrf_k: int = Field(FUSION.rrf_k, ge=0, le=10_000, description="hybrid rrf: each list adds 1 / (rrf_k + rank).")
    dense_weight: float = Field(FUSION.weight, ge=0, le=1, description="hybrid convex: the dense scores' weight.")


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[dict] = Field(..., min_length=1, description="Documents to add or replace: id, text (required), title, url, source, any metadata field.")


class WriteOut(BaseModel):
    added: int
    updated: int
    unchanged: int
    deleted: int
    compacted: bool
    generation: int | None = Field(None, description="The new generation, or null when nothing changed.")
    documents: int


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    snippet: str
    url: str
    source: str
    metadata: dict
    found_by: dict[str, int] = Field(..., description="Each list that found the hit (dense, lexical) and its rank there.")


class SearchResponse(BaseModel):
    query_id: str | None = Field(None, description="POST only: the request's id for this query.")
    query: str
    results: list[HitOut]
    timings_ms: dict[str, float] = Field(..., description="encode (the shared encoder pass), search, rerank, lexical, fuse.")


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    url: str
    source: str
    metadata: dict


class ErrorOut(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 503)}
