"""The API's request and response models (the OpenAPI schema at /openapi.json), in one place:
the routers import them from here."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from medsearch.retrieval.options import OPTIONS, Option, SearchOptions

# The most one request may ask (options.OPTIONS' request_maximum), kept for the service's checks
MAX_K = next(o.request_maximum for o in OPTIONS if o.name == "k")
MAX_OVERSAMPLE = next(o.request_maximum for o in OPTIONS if o.name == "oversample")


def option_field(option: Option, alias: str | None = None) -> tuple[Any, Any]:
    """(annotation, Field) of one search option (options.OPTIONS) in a request model: its type,
    default, bounds and help text, written once for the CLI, the API and the library."""
    if option.choices:
        annotation: Any = Literal[option.choices]
    elif option.many:
        annotation = list[option.kind]
    else:
        annotation = option.kind | None if option.default is None else option.kind
    bounds = {key: value for key, value in (("ge", option.minimum), ("le", option.maximum)) if value is not None}
    if option.request_maximum is not None:
        bounds["le"] = option.request_maximum
    default = list(option.default) if option.many else option.default
    return annotation, Field(default, description=option.help, alias=alias, **bounds)


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Union[str, int, None] = Field(None, description="Returned as query_id; default: the query's position, from 1.")
    text: str = Field(..., description="The query text.")


class RequestOptions(BaseModel):
    """A request's search options, by OPTIONS' names (the fields come from options.OPTIONS)."""

    def options(self) -> SearchOptions:
        """The request's search options (checked: a bad combination is a BadInputError)."""
        return SearchOptions.flat(**{option.name: getattr(self, option.name) for option in OPTIONS})


# POST /search's body: the queries and every search option by its name
class _StrictOptions(RequestOptions):
    model_config = ConfigDict(extra="forbid")

    @field_validator(*(o.name for o in OPTIONS if o.kind in (int, float)), mode="before", check_fields=False)
    @classmethod
    def _no_booleans(cls, value):  # JSON's true is not 1 (pydantic's lax mode would take it as 1)
        if isinstance(value, bool):
            raise ValueError("a number, not true or false")
        return value


SearchRequest = create_model(
    "SearchRequest", __base__=_StrictOptions,
    queries=(list[QueryIn], Field(..., min_length=1, description="Queries, encoded together in one pass.")),
    **{option.name: option_field(option) for option in OPTIONS},
)
# GET /search's query parameters: the query text as `q`, each filter as a repeated `filter`
SearchQuery = create_model(
    "SearchQuery", __base__=RequestOptions,
    q=(str, Field(..., description="The query text.")),
    **{option.name: option_field(option, alias="filter" if option.name == "filters" else None) for option in OPTIONS},
)


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


class SnapshotOut(BaseModel):
    snapshot: str = Field(description="The archive's file name in the service's snapshot folder.")
    generation: int = Field(description="The generation it holds.")
    files: int
    bytes: int = Field(description="The archive's size.")
    seconds: float


class CitationOut(BaseModel):
    source: str = Field(description="The file the document came from (its path in the corpus folder), or a record file's name.")
    url: str = Field(description="The document's URL (a web page's canonical address, a record's url), or empty.")
    page: int | None = Field(None, description="PDF: the page (from 1) holding the quote.")
    section: str | None = Field(None, description="The heading path of the section holding the quote: 'Dosage > Children'.")


class QuoteOut(BaseModel):
    start: int = Field(description="Offset of the quote's first character in the document's text (GET /documents/{id}).")
    end: int = Field(description="Offset just past its last character.")
    text: str = Field(description="The quoted sentence: the document's text from start to end.")


class HitOut(BaseModel):
    id: str
    score: float = Field(..., description="What the list is ordered by (descending). Re-ranked: the cross-encoder's score for "
                         "the hits it scored; the first stage's, shifted below the last re-ranked one, for the rest.")
    title: str
    snippet: str
    url: str
    source: str
    metadata: dict
    found_by: dict[str, int] = Field(..., description="Each list that found the hit (dense, lexical) and its rank there.")
    first_stage_score: float = Field(..., description="The first stage's own score: dense similarity, BM25, or the fused score.")
    rerank_score: float | None = Field(None, description="The cross-encoder's score; null for a hit it did not score.")
    citation: CitationOut = Field(description="Where the hit comes from: file or URL, page, section.")
    span: list[int] = Field(description="[start, end): the matching chunk's characters in the document's text.")
    highlights: list[list[int]] = Field(description="[start, end) of each query term found in the chunk (as BM25 matches "
                                        "them: stemmed, in the index's language), offsets in the document's text.")
    quote: QuoteOut | None = Field(None, description="The chunk's sentence that best answers the query: the one with "
                                   "the most query terms, else the closest by meaning (quote_sentences), else the first.")


class SearchResponse(BaseModel):
    query_id: str | None = Field(None, description="POST only: the request's id for this query.")
    query: str
    results: list[HitOut]
    timings_ms: dict[str, float] = Field(..., description="encode (the shared encoder pass), search, rerank, lexical, fuse, cross_encoder, hydrate.")


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    url: str
    source: str
    metadata: dict


class ErrorOut(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 503, 507)}
