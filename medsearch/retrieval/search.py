"""Answer queries over an index: tier -> prefix of the query vector -> tier index -> (re-rank) -> hits.

The `fast` tier is the funnel (funnel.py): a candidate stage (the 64-dim prefix index, or binary
sign codes of the full vectors, as the index's calibration chose) proposes chunk candidates (as many
as the build measured for its recall target, or k x oversample) and the full-dim vectors
(memory-mapped) re-rank them exactly. Chunk hits collapse to documents: the best chunk of a document
gives its score and its snippet.

Modes: dense (the above), lexical (BM25 over the same chunks, lexical.py; nothing is encoded) and
hybrid (the dense and lexical top lists fused, fusion.py). Filters and dead rows apply to both.

A search call resolves its SearchOptions against the index's defaults once (`resolve`: a frozen
options.ResolvedSearch, its filters parsed once when the options were made), checks it and its
queries once (`check`), and hands it down as it is: `retrieve` and the index's dense search read
it, and the index turns it into the backend's candidate count from its own manifest.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.encoding.chunking import passage
from medsearch.encoding.encoder import Encoder
from medsearch.errors import BadInputError, RerankerUnavailableError, reason
from medsearch.index import generations
from medsearch.index.backends.base import collapse, documents_of
from medsearch.index.filters import filter_sql
from medsearch.index.folder import DEFAULT_INDEX, Index, open_index
from medsearch.index.model_check import check_model, index_encoder
from medsearch.retrieval import citations
from medsearch.retrieval.fusion import fuse
from medsearch.retrieval.hits import Hit, QueryResult, snippet
from medsearch.retrieval.options import (
    DEFAULT_OVERSAMPLE,
    DEFAULT_QUOTE_SENTENCES,
    DEFAULT_RERANK,
    DEFAULT_TIER,
    ResolvedSearch,
    SearchOptions,
)
from medsearch.retrieval.rerank import (
    Reranker,
    RerankStopped,
    load_index_reranker,
    load_reranker,
    rerank,
    runtime_for,
)

__all__ = ["DEFAULT_OVERSAMPLE", "DEFAULT_TIER", "ResolvedSearch", "SearchOptions", "Searcher"]
log = logging.getLogger("medsearch")


def _load_alongside(index: Index, model: str | None, device: str | None, runtime: str | None,
                    encoding: dict | None) -> Encoder:
    """The index's encoder, loaded and run once (its first pass allocates: 50-120 ms on OpenVINO) on a
    thread while this one reads the index's shared parts (live rows, vector map, BM25; the tiers load
    as queries use them): a cold query pays the longer of the two, not both. The thread is a daemon
    that nobody waits for when this one fails or is interrupted (Ctrl-C during a first export)."""
    loading: Future = Future()

    def load() -> None:
        try:
            encoder = index_encoder(index, model, device, runtime, **(encoding or {}))
            encoder.encode_queries(["warm-up"])
        except BaseException as err:  # noqa: BLE001 (handed to the caller, who raises it)
            loading.set_exception(err)
        else:
            loading.set_result(encoder)

    threading.Thread(target=load, name="medsearch-model", daemon=True).start()
    index.load(vectors=False)
    return loading.result()


class Searcher:
    """Search one index with the model it was built with (`encoder=None`: vectors only, e.g. benchmarks).

    Every query runs on one committed generation of the index: `current()` moves to a newer one
    when a writer has committed it (a read of the CURRENT file per query), so a long-running
    process sees writes without a restart, and a query never mixes two generations. A generation it
    has left is closed (its SQLite connections, tier indexes and memory maps) once no query that
    `pinned` it is still reading it, so the files a writer prunes give their disk space back."""

    def __init__(self, index: Index, encoder: Encoder | None, reranker: Reranker | None = None,
                 device: str | None = None):
        if encoder is not None:
            check_model(index, encoder)
        self.index = index
        self.encoder = encoder
        # The cross-encoder of the re-ranking stage (rerank.py): one given here (re-ranking the top
        # DEFAULT_RERANK by default), else the index's own (its manifest's model and default N),
        # loaded when a query first re-ranks
        self.reranker = reranker
        self.device = device
        # sentences a query may encode to quote hits that share no term with it (options.quote_sentences'
        # default here; a service sets its own: they cost encoder time that all its requests share)
        self.quote_sentences = DEFAULT_QUOTE_SENTENCES
        self._reload = threading.Lock()  # guards index, _readers, _left (held briefly)
        self._loading = threading.Lock()  # one thread loads a new generation at a time
        self._readers: dict[int, int] = {}  # id(generation) -> queries reading it now
        self._left: list[Index] = []  # generations left while queries still read them
        self._refused: Path | None = None  # a newer generation that could not be read (logged once)

    @classmethod
    def open(cls, index_dir: str | Path = DEFAULT_INDEX, model: str | None = None, device: str | None = None,
             load_model: bool = True, runtime: str | None = None, reranker: str | None = None,
             encoding: dict | None = None) -> "Searcher":
        """The index's current generation and its model (`load_model=False`: none, lexical search only),
        run by `runtime` (default: the one the index was built with, or one of the same precision);
        `reranker`: a cross-encoder folder or model id for the re-ranking stage (default: the index's);
        `encoding`: the encoder's `threads` and `streams` (Encoder)."""
        index = open_index(index_dir)
        encoder = _load_alongside(index, model, device, runtime, encoding) if load_model else None
        given = load_reranker(reranker, device, runtime_for(encoder.runtime if encoder else index.manifest.runtime)) \
            if reranker else None
        searcher = cls(index, encoder, given, device)
        if given is None and index.manifest.default_rerank and load_model:
            try:  # queries will re-rank: load it now (a service before it listens)
                searcher.reranker_for(index)
            except RerankerUnavailableError as err:  # the queries that re-rank fail, the rest are served
                log.warning("%s", err)
        return searcher

    @classmethod
    def query(cls, index_dir: str | Path, queries: list[str], options: SearchOptions | None = None, *,
              query_ids: list[str] | None = None, model: str | None = None, device: str | None = None,
              runtime: str | None = None, reranker: str | None = None) -> list[QueryResult]:
        """One process's queries (`medsearch query`): checked before the index opens or a model loads,
        then searched with the index's model (none loaded for lexical mode) as `search` does."""
        options = options or SearchOptions()
        cls.check_queries(queries, query_ids)
        searcher = cls.open(index_dir, model=model, device=device, load_model=options.mode != "lexical",
                            runtime=runtime, reranker=reranker)
        return searcher._search(queries, searcher.check(options), query_ids)

    def describe(self, index: Index) -> dict:
        """The index's description (Index.describe) with this searcher's re-ranker, when it was
        given one (it then re-ranks DEFAULT_RERANK documents by default)."""
        out = index.describe()
        if self.reranker is not None:
            out["reranker"] = {"model": self.reranker.spec, "rerank": self.default_rerank(index)}
            out["default_rerank"] = self.default_rerank(index)
        return out

    def default_rerank(self, index: Index) -> int:
        """Documents a query re-ranks when it names no number: DEFAULT_RERANK with a re-ranker given
        to this searcher, else the index's (0 without one)."""
        return DEFAULT_RERANK if self.reranker is not None else index.manifest.default_rerank

    def reranker_for(self, index: Index, load: bool = True) -> Reranker | None:
        """The cross-encoder that re-ranks this index's queries: the searcher's, else the index's
        (loaded on first use, then shared: rerank.load_reranker), else None. `load=False`: only one
        loaded already (None otherwise: nothing is loaded, nothing raised)."""
        if self.reranker is not None:
            return self.reranker
        entry = index.manifest.reranker
        if entry is None:
            return None
        return load_index_reranker(entry, self.device,
                                   runtime_for(self.encoder.runtime if self.encoder else index.manifest.runtime), load)

    def current(self, wait: bool = True) -> Index:
        """The newest committed generation (loaded, and checked against the model, before use).
        Loading a new one takes no lock that queries need: they go on with the one before until it
        is loaded. `wait=False`: while another thread loads it, return the one before at once."""
        folder = generations.current(self.index.path)
        if folder is None or folder == self.index.folder or folder == self._refused:
            return self.index
        if not self._loading.acquire(blocking=wait):
            return self.index
        try:
            if self.index.folder != folder:
                newer = None
                try:
                    newer = open_index(self.index.path)
                    if self.encoder is not None:
                        check_model(newer, self.encoder)
                    newer.load()
                except Exception as err:  # noqa: BLE001 (a generation damaged, edited by hand, of another model)
                    self._refused = newer.folder if newer is not None else folder
                    if newer is not None:
                        newer.close()
                    log.error("the index's newest generation %s cannot be used, queries go on with %s (restart to "
                              "retry): %s", self._refused.name, self.index.folder.name, reason(err))
                    return self.index
                with self._reload:
                    left, self.index = self.index, newer
                    self._left.append(left)
                    self._close_unread()
            return self.index
        finally:
            self._loading.release()

    @contextmanager
    def pinned(self):
        """The newest loaded generation, held open for the block: a write that commits meanwhile does
        not close it under the caller (it is closed when its last reader leaves)."""
        self.current(wait=False)
        with self._reload:
            index = self.index
            self._readers[id(index)] = self._readers.get(id(index), 0) + 1
        try:
            yield index
        finally:
            with self._reload:
                left = self._readers.pop(id(index)) - 1
                if left:
                    self._readers[id(index)] = left
                self._close_unread()

    def _close_unread(self) -> None:
        """Close the generations this searcher has left that no query reads any more (lock held)."""
        still = []
        for old in self._left:
            if id(old) in self._readers:
                still.append(old)
            else:
                old.close()
        self._left = still

    def quote_sentences_for(self, options: SearchOptions | ResolvedSearch) -> int:
        """The sentences a query may encode for quotes: its options', else this searcher's default."""
        return self.quote_sentences if options.quote_sentences is None else options.quote_sentences

    def resolve(self, options: SearchOptions | ResolvedSearch, index: Index | None = None) -> ResolvedSearch:
        """The options with the index's defaults (and this searcher's) filled in where they leave the
        choice to it: the mode (hybrid where the index has a lexical index), the documents
        re-ranked, the fusion, the dim searched, the quote budget. Made once per search call; options
        already resolved are returned as they are. Nothing is checked here (`check`)."""
        if isinstance(options, ResolvedSearch):
            return options
        index = index or self.index
        return options.resolve(index.manifest, self.default_rerank(index), self.quote_sentences)

    def check(self, options: SearchOptions | ResolvedSearch, index: Index | None = None, *,
              queries: list[str] | None = None, query_ids: list[str] | None = None) -> ResolvedSearch:
        """The options resolved (`resolve`), after raising BadInputError for `queries` that cannot be
        searched (`check_queries`) and for options this index cannot serve (before any encoding): a
        lexical mode without a lexical index, a dim it does not store, a filter on a field it lacks,
        a mode that needs a model this searcher lacks, re-ranking without a cross-encoder."""
        if queries is not None:
            self.check_queries(queries, query_ids)
        index = index or self.index
        plan = self.resolve(options, index)
        if plan.mode != "dense":
            index.lexical  # noqa: B018 (an index without one fails here)
        self._check_index(plan, index)
        if plan.mode != "lexical" and self.encoder is None:
            raise BadInputError(f"{plan.mode} search needs a model to encode the queries; this searcher has none")
        if plan.rerank and self.reranker is None and index.manifest.reranker is None:
            raise BadInputError("re-ranking needs a cross-encoder: give one (--reranker MODEL), or record one in "
                                "the index (medsearch index ... --reranker MODEL)")
        return plan

    @staticmethod
    def _check_index(plan: ResolvedSearch, index: Index, dim: bool = True) -> None:
        """What the index's own contents decide: a dim it stores, filter fields it knows."""
        if dim and plan.dim is not None:
            index.check_dim(plan.dim)
        if plan.filters:
            filter_sql(list(plan.filters), index.manifest.metadata_fields)

    @staticmethod
    def check_queries(queries: list[str], query_ids: list[str] | None = None) -> None:
        if not queries:
            raise BadInputError("no queries given")
        for i, text in enumerate(queries):
            if not text or not text.strip():
                where = f" (query {query_ids[i]})" if query_ids else ""
                raise BadInputError(f"empty query{where}: give some text to search for")

    def search(self, queries: list[str], options: SearchOptions | None = None, *,
               query_ids: list[str] | None = None, **fields) -> list[QueryResult]:
        """Encode all queries in one pass, search, hydrate. Timings in batch mode are per query
        (amortised). `options` (or its fields as keywords: `search(queries, tier="deep", k=5)`):
        tier, k, dim, oversample, filters, mode (dense, lexical: BM25, nothing encoded; hybrid: both
        fused) and fusion (options.py)."""
        plan = self.check(SearchOptions.of(options, fields), queries=queries, query_ids=query_ids)
        return self._search(queries, plan, query_ids)

    def _search(self, queries: list[str], plan: ResolvedSearch, query_ids: list[str] | None) -> list[QueryResult]:
        """Encode (unless lexical) and search queries and options already checked."""
        started = time.perf_counter()
        vectors = None if plan.mode == "lexical" else self.encoder.encode_queries(queries)
        encode_ms = (time.perf_counter() - started) * 1000 / len(queries) if vectors is not None else 0.0
        return self.search_encoded(queries, vectors, plan, encode_ms=encode_ms, query_ids=query_ids)

    def search_encoded(self, queries: list[str], vectors: np.ndarray | None, options: ResolvedSearch | SearchOptions, *,
                       encode_ms: float = 0.0, query_ids: list[str] | None = None,
                       stop: Callable[[], bool] | None = None) -> list[QueryResult]:
        """Search and hydrate queries already encoded (`vectors`, one row per query, None in lexical
        mode; the service encodes concurrent requests together) with options already checked
        (`check`: its ResolvedSearch, used as it is). `encode_ms` is reported as each query's encoding time. `stop`: asked before each
        query and between the cross-encoder's forward passes; once it answers True the request ends
        with RerankStopped (its caller stopped waiting: a client gone, a deadline passed)."""
        with self.pinned() as index:  # one generation for the whole request, kept open until hydrated
            options = self._planned(options, index)
            k = options.k
            # the first stages rank the re-ranker's candidates too: the top N documents (options.first_stage)
            ranked, timings = self._retrieve(queries, vectors, options, index, options.first_stage)
            reranker = self.reranker_for(index) if options.rerank else None
            results, generation = [], index.generation
            reranking = hydrating = 0.0
            for i, hits in enumerate(ranked):
                if stop is not None and stop():
                    raise RerankStopped()
                started = time.perf_counter()
                first_stage = {row: score for row, score, _ in hits}
                found = index.store.hydrate([row for row, _, _ in hits])
                hydrating += time.perf_counter() - started
                if reranker is not None:
                    hits, ms = self.reranked(index, reranker, queries[i], hits, options.rerank, found, stop)
                    reranking += ms
                started = time.perf_counter()
                hits = hits[:k]
                docs = []
                cites = citations.cite([found[row] for row, _, _ in hits], citations.query_terms(index.analysis, queries[i]),
                                       index.analysis, self.encoder, None if vectors is None else vectors[i],
                                       self.quote_sentences_for(options))
                for (row, score, found_by), cited in zip(hits, cites):
                    info = found[row]
                    quoted = cited["quote"]["start"] - info["start"] if cited["quote"] else 0
                    docs.append(
                        Hit(
                            id=info["id"],
                            score=float(score),
                            title=info["title"],
                            snippet=snippet(info["chunk"][quoted:]),  # from the quote: the sentence that answers
                            url=info["url"],
                            source=info["source"],
                            chunk=info["position"],
                            metadata=info["metadata"],
                            found_by=found_by,
                            first_stage_score=float(first_stage[row]),
                            rerank_score=float(score) if "cross_encoder" in found_by else None,
                            **cited,
                        )
                    )
                hydrating += time.perf_counter() - started
                results.append(QueryResult(queries[i], docs, {}, query_ids[i] if query_ids else None, generation))
            if options.rerank:
                timings["cross_encoder"] = reranking
            timings["hydrate"] = hydrating * 1000  # the hits' chunks read from SQLite, their snippets and citations made
            per_query = {"encode": encode_ms, **{key: v / len(queries) for key, v in timings.items()}}
            for result in results:
                result.timings_ms = dict(per_query)
        return results

    @staticmethod
    def reranked(index: Index, reranker: Reranker, query: str, hits: list[tuple[int, float, dict[str, int]]], n: int,
                 found: dict[int, dict] | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[list[tuple[int, float, dict[str, int]]], float]:
        """`hits` (as `retrieve` ranks them) with the first `n` in the cross-encoder's order, and the
        ms it took; `found`: the hits' hydrated chunks, when the caller has them."""
        found = found or index.store.hydrate([row for row, _, _ in hits[:n]])
        passages = [passage(found[row]["title"], found[row]["chunk"]) for row, _, _ in hits[:n]]
        return rerank(reranker, query, hits, passages, n, stop)

    def retrieve(self, queries: list[str], vectors: np.ndarray | None, options: SearchOptions | ResolvedSearch, *,
                 index: Index | None = None) -> tuple[list[list[tuple[int, float, dict[str, int]]]], dict[str, float]]:
        """Ranked (chunk row, score, {list: rank}) per query, one document per hit, in any mode, with
        options already checked: dense ranks `vectors` in the tier, lexical ranks the query text by
        BM25, hybrid fuses the two top lists (`plan.depth(k)` documents each); k documents (the
        re-ranking stage is not run here)."""
        index = index or self.current()
        options = self._planned(options, index)
        return self._retrieve(queries, vectors, options, index, options.k)

    def _planned(self, options: SearchOptions | ResolvedSearch, index: Index) -> ResolvedSearch:
        """Options a caller resolved and checked, as they are; plain SearchOptions resolved here,
        with the checks of what the index stores (dim, filter fields)."""
        if isinstance(options, ResolvedSearch):
            return options
        plan = self.resolve(options, index)
        self._check_index(plan, index, dim=plan.mode != "lexical")  # (a lexical list searches no dim)
        return plan

    def _retrieve(self, queries: list[str], vectors: np.ndarray | None, plan: ResolvedSearch, index: Index,
                  k: int) -> tuple[list[list[tuple[int, float, dict[str, int]]]], dict[str, float]]:
        mode, depth = plan.mode, plan.depth(k)
        lists: dict[str, list[list[tuple[int, float]]]] = {}
        timings: dict[str, float] = {}
        if mode != "lexical":
            lists["dense"], timings = self._dense(index, vectors, plan, depth)
        if mode != "dense":
            lists["lexical"], timings["lexical"] = self._lexical(index, queries, depth, index.allowed(plan.filters))
        if mode != "hybrid":
            (name, ranked), = lists.items()
            return [[(row, score, {name: rank}) for rank, (row, score) in enumerate(hits, 1)] for hits in ranked], timings
        started = time.perf_counter()
        fused = []
        for dense, lexical in zip(lists["dense"], lists["lexical"]):
            per_list = {name: [(doc, row, score) for doc, (row, score) in
                               zip(documents_of(index.chunk_doc, [row for row, _ in hits]), hits)]
                        for name, hits in (("dense", dense), ("lexical", lexical))}
            fused.append(fuse(per_list, plan.fusion, k))
        timings["fuse"] = (time.perf_counter() - started) * 1000
        return fused, timings

    @staticmethod
    def _lexical(index: Index, queries: list[str], k: int,
                 allowed: np.ndarray | None) -> tuple[list[list[tuple[int, float]]], float]:
        started = time.perf_counter()
        results = []
        for query in queries:
            scores = index.lexical.scores(query)
            if allowed is not None:
                scores = np.where(allowed[: len(scores)], scores, 0)
            matching = np.flatnonzero(scores > 0)
            n = min(len(matching), 4 * k)
            while True:  # the best n rows by score (ties by row), widened until they give k documents
                top = matching if n == len(matching) else matching[np.argpartition(-scores[matching], n - 1)[:n]]
                top = top[np.lexsort((top, -scores[top]))]
                hits = collapse(top, scores[top], index.chunk_doc, k)
                if len(hits) == k or n == len(matching):
                    break
                n = min(len(matching), 2 * n)
            results.append(hits)
        return results, (time.perf_counter() - started) * 1000

    def search_vectors(self, vectors: np.ndarray, options: SearchOptions | None = None, *, index: Index | None = None,
                       **fields) -> tuple[list[list[tuple[int, float]]], dict[str, float]]:
        """Ranked (chunk row, score) lists, one document per hit, for full-dim query vectors (dense:
        the options' tier, k, dim, oversample and filters; keywords as in `search`)."""
        options = SearchOptions.of(options, fields)
        index = index or self.current()
        plan = self.resolve(options, index)
        self._check_index(plan, index, dim=True)  # (dense whatever the mode: the dim is searched)
        return self._dense(index, vectors, plan, plan.k)

    @staticmethod
    def _dense(index: Index, vectors: np.ndarray, plan: ResolvedSearch,
               k: int) -> tuple[list[list[tuple[int, float]]], dict[str, float]]:
        """The dense top k lists, from the index's backend (backends/base.py); the index makes the
        candidate count from its manifest."""
        return index.search_dense(vectors, dim=plan.search_dim, rerank=plan.funnel, k=k, oversample=plan.oversample,
                                  filters=plan.filters)
