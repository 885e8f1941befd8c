"""The FAISS backend: one inner-product index per stored dim, ids = chunk rows, and one binary
index of the full vectors' sign codes (the fast tier's binary candidate stage, funnel.py).

The index type is a faiss factory string recorded in the manifest (`Flat`, `HNSW32,Flat`).
Rows are never removed from a faiss index here: a search gets the rows it may return (live and
matching the filters) as an IDSelector evaluated inside faiss, for flat and HNSW alike;
`compact` rebuilds the indexes without the dead rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from medsearch.backends.base import Ranked, collapse, prefix
from medsearch.errors import BadInputError
from medsearch.funnel import rerank as rerank_rows

if TYPE_CHECKING:
    from medsearch.filters import Filter
    from medsearch.index import Index

HNSW_M = 32
FACTORIES = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M},Flat"}
BINARY_FACTORIES = {"flat": "BFlat"}  # an exact scan: it beat BHNSW32 at 1M (bench/binary_index.py)


def limit_threads(threads: int) -> None:
    """faiss's OpenMP threads for the calling thread's searches (a service's search threads use 1:
    its concurrency comes from the threads, not from OpenMP inside one search)."""
    faiss.omp_set_num_threads(threads)


class Allowed:
    """The rows a search may return, as a faiss IDSelectorBitmap (it keeps the bitmap alive)."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.count = int(mask.sum())
        self.bitmap = np.packbits(mask, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self.bitmap))

    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask)


class FaissTier:
    """One stored dim's vectors in a faiss index of type `kind` (flat or hnsw)."""

    def __init__(self, index: faiss.Index, kind: str):
        self.index = index
        self.kind = kind

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str) -> "FaissTier":
        if kind not in FACTORIES:
            raise BadInputError(f"unknown index type '{kind}' (use flat or hnsw)")
        tier = cls(faiss.index_factory(vectors.shape[1], FACTORIES[kind], faiss.METRIC_INNER_PRODUCT), kind)
        tier.add(vectors)
        return tier

    @classmethod
    def load(cls, path: Path, kind: str) -> "FaissTier":
        return cls(faiss.read_index(str(path)), kind)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (ids continue from the current count)."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, n: int, allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the n best rows per query among `allowed` (all rows when None);
        rows are -1 where fewer were found (HNSW with a narrow selector)."""
        sel = allowed.selector if allowed is not None else None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(n, 16))
            if sel is not None:
                params.sel = sel
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        return self.index.search(queries, n, params=params)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows`, exactly as the index holds them."""
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def rank(self, queries: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row in `rows` ranked exactly for each query: (scores, rows)."""
        scores, order = faiss.knn(queries, self.vectors(rows), len(rows), metric=faiss.METRIC_INNER_PRODUCT)
        return scores, rows[order]


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """One bit a dim, set where the value is positive, packed 8 to a byte: sentence-transformers'
    `ubinary` quantisation (48 bytes for 384 dims, 128 for 1024)."""
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.quantization import quantize_embeddings

    return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="ubinary")


class BinaryTier(FaissTier):
    """The full vectors' sign codes in a faiss binary index (an exact scan), searched by Hamming
    distance; it takes and returns what FaissTier does (full-dim float queries in, rows out; the
    scores are minus the Hamming distance, so higher is better as everywhere else)."""

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str) -> "BinaryTier":
        if kind not in BINARY_FACTORIES:
            raise BadInputError(f"unknown binary index type '{kind}' (use {', '.join(BINARY_FACTORIES)})")
        tier = cls(faiss.index_binary_factory(vectors.shape[1], BINARY_FACTORIES[kind]), kind)
        tier.add(vectors)
        return tier

    @classmethod
    def load(cls, path: Path, kind: str) -> "BinaryTier":
        return cls(faiss.read_index_binary(str(path)), kind)

    def save(self, path: Path) -> None:
        faiss.write_index_binary(self.index, str(path))

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(binary_codes(vectors))

    def search(self, queries: np.ndarray, n: int, allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
        distances, rows = super().search(binary_codes(queries), n, allowed)
        return -distances.astype(np.float32), rows


class FaissBackend:
    """The dense search of an index folder's own files (backends/base.py's VectorBackend)."""

    name = "faiss"

    def search(self, index: "Index", queries: np.ndarray, *, dim: int, rerank: bool, k: int, candidates: int,
               filters: list["Filter"]) -> tuple[Ranked, dict[str, float]]:
        """Dead rows and rows that fail a filter are excluded inside faiss (an IDSelector over the
        allowed rows); when fewer candidates than needed come back, the search widens, and once it
        would cover every allowed row it ranks them all exactly: k documents whenever k exist."""
        allowed = index.allowed(filters)
        total = index.chunks if allowed is None else int(allowed.sum())
        n = min(total, candidates)
        timings = {"search": 0.0, "rerank": 0.0}
        results: Ranked = [[] for _ in range(len(queries))]
        pending = np.arange(len(queries) if total else 0)  # nothing allowed: every query gets no hits
        selector = Allowed(allowed) if allowed is not None else None
        while len(pending):
            if selector is not None and n >= total:  # every allowed row: rank them all exactly
                rows, scores = self._exhaustive(index, queries[pending], selector.rows(), dim, rerank, timings)
            else:
                rows, scores = self._ranked(index, queries[pending], dim, rerank, n, timings, selector)
            still = []
            for q, r, s in zip(pending, rows, scores):
                hits = collapse(r, s, index.chunk_doc, k)
                if len(hits) < k and n < total:
                    still.append(q)
                else:
                    results[q] = hits
            pending, n = np.array(still, dtype=int), min(total, 2 * n)
        return results, timings

    @classmethod
    def _exhaustive(cls, index, vectors, rows, dim, rerank, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rank every row in `rows` exactly: as re-rank candidates (fast tier), or against the tier
        index's own vectors (read back from it), so the scores are those a search would give."""
        if rerank:
            return cls._rerank(index, vectors, [rows] * len(vectors), timings)
        started = time.perf_counter()
        scores, ranked = index.tier(dim).rank(prefix(vectors, dim), rows)
        timings["search"] += (time.perf_counter() - started) * 1000
        return list(ranked), list(scores)

    @classmethod
    def _ranked(cls, index, vectors, dim, rerank, n, timings, allowed=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        started = time.perf_counter()
        if rerank and index.fast_stage == "binary":  # candidates by Hamming distance of the full vectors' signs
            scores, rows = index.binary.search(vectors, n, allowed)
        else:
            scores, rows = index.tier(dim).search(prefix(vectors, dim), n, allowed)
        timings["search"] += (time.perf_counter() - started) * 1000
        if not rerank:
            return list(rows), list(scores)
        return cls._rerank(index, vectors, rows, timings)

    @staticmethod
    def _rerank(index, vectors, rows, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each query's candidate rows ranked exactly with the stored full-dim vectors."""
        started = time.perf_counter()
        ranked = rerank_rows(vectors, list(rows), index.vectors)
        timings["rerank"] += (time.perf_counter() - started) * 1000
        return ranked
