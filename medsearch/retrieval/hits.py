"""What a search returns: a query's result (`QueryResult`), its hits (`Hit`: the document, its
scores, the lists that found it, its citation and quote) and their JSON, the shape the CLI's
--json, the API, the page and MCP print."""

from __future__ import annotations

from dataclasses import dataclass, field

SNIPPET_CHARS = 240


@dataclass
class Hit:
    id: str
    score: float
    title: str
    snippet: str
    url: str = ""
    source: str = ""
    chunk: int = 0
    metadata: dict = field(default_factory=dict)
    found_by: dict = field(default_factory=dict)  # list name ("dense", "lexical") -> rank there
    # `score` orders the list. Re-ranked: the cross-encoder's score for the hits it scored (also in
    # rerank_score), the first stage's shifted below them for the rest (rerank.rerank); first_stage_score
    # is the first stage's own (the dense similarity, BM25 score or fused score)
    first_stage_score: float | None = None
    rerank_score: float | None = None
    # where it comes from and what in it answers (citations.cite): citation {source, url, page,
    # section}; span, highlights and quote as offsets in the document's text
    citation: dict = field(default_factory=dict)
    span: list[int] = field(default_factory=list)
    highlights: list[list[int]] = field(default_factory=list)
    quote: dict | None = None


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]
    timings_ms: dict[str, float]
    query_id: str | None = None
    generation: int | None = None  # the index generation that answered (not in the JSON: the service logs it)

    def to_json(self) -> dict:
        out = {"query_id": self.query_id} if self.query_id is not None else {}
        out["query"] = self.query
        out["results"] = [
            {"id": h.id, "score": round(h.score, 6), "title": h.title, "snippet": h.snippet,
             "url": h.url, "source": h.source, "metadata": h.metadata, "found_by": h.found_by,
             "first_stage_score": _rounded(h.first_stage_score), "rerank_score": _rounded(h.rerank_score),
             "citation": h.citation, "span": h.span, "highlights": h.highlights, "quote": h.quote}
            for h in self.hits
        ]
        out["timings_ms"] = {key: round(value, 3) for key, value in self.timings_ms.items()}
        return out


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 6)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit] + " …"
