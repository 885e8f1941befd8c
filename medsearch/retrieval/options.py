"""The options of one search, written once: `SearchOptions` (what the library takes) and `OPTIONS`
(each option's flat name, default, bounds and help text, from which the CLI builds its flags and
the HTTP API its request model and query parameters).

A SearchOptions checks itself when it is made (a bad value is a BadInputError before anything is
encoded) and parses its filters there, once. `SearchOptions.resolve` fills in the index's defaults
ONCE per search, into a frozen `ResolvedSearch` that every later stage reads (Searcher.search,
search_encoded, retrieve and the index's dense search take it as it is); what depends on the index
(a stored dim, a lexical index, known filter fields) is checked on it by `Searcher.check`. A new
stage adds a field here and a row to OPTIONS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medsearch.errors import BadInputError
from medsearch.index.filters import Filter, parse_filters
from medsearch.index.manifest import MAX_DEFAULT_RERANK, TIERS
from medsearch.retrieval.fusion import (
    MAX_DEPTH,
    MAX_RRF_K,
    METHODS,
    MODES,
    Fusion,
    check_mode,
)
from medsearch.validation import check_text

if TYPE_CHECKING:
    from medsearch.index.manifest import Manifest

DEFAULT_TIER = "fast"
# Fast-tier candidates: k x oversample when a caller gives it; by default (None) the count that the
# index measured at build time for its recall target (funnel.py, the manifest's `fast`).
DEFAULT_OVERSAMPLE = None
DEFAULT_K = 10
DEFAULT_RERANK = 20  # documents a re-ranker re-scores when a query names no number
DEFAULT_QUOTE_SENTENCES = 16  # sentences encoded per query to quote the hits that share no term with it
MAX_QUOTE_SENTENCES = 64
_FUSION = Fusion()


@dataclass(frozen=True)
class Option:
    """One search option as the interfaces show it: `name` is the API's field (and the CLI's flag,
    with dashes); `minimum` and `maximum` bound its values, `request_maximum` what one HTTP request
    may ask (a service's bound, not the library's)."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    request_maximum: float | None = None
    many: bool = False  # repeated (a list of values)


OPTIONS = (
    Option("tier", str, DEFAULT_TIER, "fast: 64-dim candidates re-ranked at full dim; light: 128; standard: 512 "
           "(or full); deep: full dim, exact.", choices=TIERS),
    Option("k", int, DEFAULT_K, "Documents to return (per query).", minimum=1, request_maximum=1000),
    Option("dim", int, None, "Search this stored prefix dim directly (overrides the tier)."),
    Option("oversample", int, DEFAULT_OVERSAMPLE, "fast tier: candidates = k x oversample [default: the count the "
           "index measured for its recall target, scaled to k; see `medsearch info`].", minimum=1, request_maximum=1000),
    Option("filters", str, (), "Only documents whose field (source, url, title, id or a metadata field) matches: "
           "field=value, field!=value, field>=number, field<=number; several are ANDed.", many=True),
    Option("mode", str, None, "dense: the tier's vectors; lexical: BM25 over the same chunks (no model needed); "
           "hybrid: both lists fused [default: the index's: hybrid where it has a lexical index, else dense].",
           choices=MODES),
    Option("rerank", int, None, "Re-score the top N documents with a cross-encoder and return the best k of "
           "them; 0: off [default: 20 when a re-ranker is given, else 0].", minimum=0,
           request_maximum=MAX_DEFAULT_RERANK),
    Option("quote_sentences", int, None, "Each hit quotes its sentence that best answers the query: the one with the "
           "most query terms; for hits that share no term with it (found by meaning), up to this many of their "
           "sentences, in rank order, are encoded and the closest to the query is quoted (each costs about one "
           f"query's encoding; 0: quote their first sentence) [default: {DEFAULT_QUOTE_SENTENCES}; a service's "
           "--quote-sentences, 0 unless set].", minimum=0, maximum=MAX_QUOTE_SENTENCES),
    Option("fusion", str, None, "hybrid: reciprocal rank fusion (rrf) or a convex combination of normalised scores "
           f"[default: the index's, which its model's tuning chose, else {_FUSION.method}; giving any fusion option "
           "replaces the index's fusion, the options not given taking these defaults].", choices=METHODS),
    Option("rrf_k", int, None, f"hybrid rrf: each list adds 1 / (rrf_k + rank) [default: {_FUSION.rrf_k}].", minimum=0,
           request_maximum=MAX_RRF_K),
    Option("dense_weight", float, None, "hybrid convex: the dense scores' weight (the lexical ones get the rest) "
           f"[default: the index's, else {_FUSION.weight}].", minimum=0, maximum=1),
    Option("fusion_depth", int, None, f"hybrid: documents taken from each list (at least k) [default: {_FUSION.depth}].",
           minimum=1, request_maximum=MAX_DEPTH),
)
FUSION_OPTIONS = ("fusion", "rrf_k", "dense_weight", "fusion_depth")
# The flat names of the Fusion fields
_FUSION_FIELDS = {"fusion": "method", "rrf_k": "rrf_k", "dense_weight": "weight", "fusion_depth": "depth"}


@dataclass(frozen=True)
class SearchOptions:
    """How to search: which tier (or stored dim), how many documents, the fast tier's candidates,
    filters (`field=value`, `field!=value`, `field>=number`, `field<=number`, ANDed), the mode
    (dense, lexical, hybrid) and how hybrid fuses."""

    tier: str = DEFAULT_TIER
    k: int = DEFAULT_K
    dim: int | None = None
    oversample: int | None = DEFAULT_OVERSAMPLE
    filters: tuple[str, ...] = ()
    mode: str | None = None  # None: the index's default (Searcher.resolve)
    rerank: int | None = None  # None: the searcher's default (DEFAULT_RERANK with a re-ranker, else 0)
    fusion: Fusion | None = None  # None: the index's (its model's, else Fusion())
    quote_sentences: int | None = None  # citations.cite's budget for quotes by meaning (None: the searcher's)

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(self.filters or ()))
        if self.mode is not None:
            check_mode(self.mode)
        if self.fusion is not None:
            self.fusion.check()
        if self.dim is None and self.tier not in TIERS:
            raise BadInputError(f"unknown tier '{self.tier}' (choose from: {', '.join(TIERS)})")
        if self.k < 1:
            raise BadInputError(f"k must be at least 1; got {self.k}")
        if self.oversample is not None and self.oversample < 1:
            raise BadInputError(f"oversample must be at least 1; got {self.oversample}")
        if self.quote_sentences is not None and not 0 <= self.quote_sentences <= MAX_QUOTE_SENTENCES:
            raise BadInputError(f"quote_sentences must be between 0 and {MAX_QUOTE_SENTENCES}; got {self.quote_sentences}")
        if self.rerank is not None and self.rerank < 0:
            raise BadInputError(f"rerank must be 0 (off) or more; got {self.rerank}")
        for i, text in enumerate(self.filters, start=1):
            if isinstance(text, str):  # (or a parsed filters.Filter)
                check_text(text, f"filter {i}")
        # parsed here, once: the syntax; the fields are the index's (Searcher.check)
        object.__setattr__(self, "_parsed", tuple(parse_filters(self.filters)))

    @property
    def parsed_filters(self) -> tuple[Filter, ...]:
        """The filters, parsed (when these options were made)."""
        return self._parsed

    @classmethod
    def flat(cls, **values) -> "SearchOptions":
        """From OPTIONS' flat names (the CLI's flags, the API's fields); absent ones (or None) take their
        defaults. Any fusion option given makes a Fusion (the rest Fusion's defaults); none: the index's."""
        fusion = {_FUSION_FIELDS[name]: values.pop(name) for name in list(values) if name in _FUSION_FIELDS}
        given = {key: value for key, value in fusion.items() if value is not None}
        return cls(**values, fusion=Fusion(**given) if given else None)

    @classmethod
    def of(cls, options: "SearchOptions | None", fields: dict) -> "SearchOptions":
        """`options`, or one made of keyword `fields` (the library's `search(queries, k=5)`), not both."""
        if options is not None and fields:
            raise TypeError(f"give SearchOptions or keyword options, not both ({', '.join(fields)})")
        return options if options is not None else cls(**fields)

    def resolve(self, manifest: "Manifest", default_rerank: int = 0,
                default_quote_sentences: int = DEFAULT_QUOTE_SENTENCES) -> "ResolvedSearch":
        """These options against an index's `manifest` (its default mode and fusion, its tier dims)
        and its searcher's defaults (documents re-ranked, sentences encoded for quotes): every choice
        made, nothing checked (Searcher.check does that, on the result) and nothing raised."""
        if self.dim is not None:  # a stored dim, searched directly (Searcher.check: one the index stores)
            search_dim, funnel = self.dim, False
        else:
            search_dim = manifest.tier_dims[self.tier]
            funnel = self.tier == "fast" and search_dim != manifest.full_dim  # candidates re-ranked at full dim
        return ResolvedSearch(
            options=self, mode=self.mode if self.mode is not None else manifest.default_mode, tier=self.tier,
            dim=self.dim, search_dim=search_dim, funnel=funnel, k=self.k,
            rerank=self.rerank if self.rerank is not None else default_rerank,
            fusion=self.fusion if self.fusion is not None else manifest.fusion or Fusion(),
            oversample=self.oversample, filters=self.parsed_filters,
            quote_sentences=self.quote_sentences if self.quote_sentences is not None else default_quote_sentences)


@dataclass(frozen=True)
class ResolvedSearch:
    """One search's options with every default filled in, made once per search call
    (SearchOptions.resolve, from Searcher.resolve) and read as they are by every stage after it:
    the mode, the tier and the dim it searches (`funnel`: the fast tier's candidates re-ranked at
    full dim; the index turns `oversample`, or its measured count, into the candidates), k, the
    documents re-ranked by a cross-encoder, the fusion, the parsed filters and the quote budget."""

    options: SearchOptions  # as the caller gave them
    mode: str
    tier: str
    dim: int | None  # the stored dim asked for (None: the tier's)
    search_dim: int  # the prefix dim searched: `dim`, or the tier's
    funnel: bool
    k: int  # documents returned
    rerank: int  # documents the cross-encoder re-scores (0: off)
    fusion: Fusion
    oversample: int | None
    filters: tuple[Filter, ...]
    quote_sentences: int

    @property
    def first_stage(self) -> int:
        """Documents the stages before the cross-encoder rank: k, or the re-ranked N when that is more."""
        return max(self.k, self.rerank)

    def depth(self, k: int) -> int:
        """Documents each list gives for a ranking of k: k, or in hybrid mode the fusion's depth when
        that is more."""
        return max(k, self.fusion.depth) if self.mode == "hybrid" else k
