"""The FAISS backend: the vectors in the generation folder's own files.

  vectors.npy     full-dim L2-normalised vectors (float16 by default), memory-mapped for re-ranking
  dim{N}.faiss    one inner-product index per stored dim over renormalised prefixes; ids = chunk rows
  binary.faiss    sign codes of the full vectors (a faiss binary index): the fast tier's binary
                  candidate stage; the manifest's `fast` says which stage and how many candidates
                  reach the recall target (funnel.py)

The index type is a faiss factory string recorded in the manifest (`Flat`, `HNSW32,Flat`).
Rows are never removed from a faiss index here: a search gets the rows it may return (live and
matching the filters) as an IDSelector evaluated inside faiss, for flat and HNSW alike;
`compact` rebuilds the indexes without the dead rows. A write appends rows to copies of the
files; a delete-only write links them (a committed generation's files never change).
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from medsearch.errors import BadInputError, DamagedIndexError, MedsearchError, reason
from medsearch.index import layout
from medsearch.index.backends.base import Ranked, collapse, prefix
from medsearch.index.backends.funnel import calibrate
from medsearch.index.backends.funnel import rerank as rerank_rows
from medsearch.index.generations import link_file

if TYPE_CHECKING:
    from medsearch.index.filters import Filter
    from medsearch.index.manifest import Manifest

# Above this many chunks the fast tier's 64-dim candidate index is HNSW instead of exact flat.
HNSW_MIN_CHUNKS = 200_000
# The binary stage scans every code (exact Hamming distance): at 1M x 1024 bits that takes 6.1-7.3 ms
# a query for 500-2000 candidates, where an HNSW graph over the codes took 3.3-12.8 ms (its cost grows
# with the candidates), found fewer of the true neighbours and took 182 s to build
# (bench/binary_index.py; docs/guides/speed.md).
BINARY_INDEX = "flat"
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
    `ubinary` quantisation (48 bytes for 384 dims, 128 for 1024). Its one line is written here,
    because importing sentence-transformers for it costs a query seconds (tests/test_backend_faiss.py
    checks that both agree)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.packbits(vectors > 0, axis=-1).reshape(vectors.shape[0], -1)


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
    """One generation's vectors in its folder's files (backends/base.py's VectorBackend). Tier
    indexes load lazily, so a query touches only its own tier."""

    name = "faiss"
    keeps_dead_rows = True
    filters_natively = False  # the filters' rows (from SQLite) become an IDSelector
    in_folder = True

    @classmethod
    def describe_settings(cls, settings: dict) -> str:
        return "faiss (this folder's files)"

    def __init__(self, folder: Path, manifest: "Manifest"):
        self.folder = folder
        self.manifest = manifest
        self._tiers: dict[int, FaissTier] = {}

    def tier(self, dim: int) -> FaissTier:
        """One stored dim's index (loaded on first use)."""
        if dim not in self._tiers:
            self._tiers[dim] = self._opened(layout.tier_file(dim), lambda path: FaissTier.load(path, self.manifest.index_type(dim)))
        return self._tiers[dim]

    @cached_property
    def binary(self) -> BinaryTier | None:
        """The binary candidate stage, when the generation has one."""
        path = self.folder / layout.BINARY
        if not path.is_file():
            return None
        return self._opened(layout.BINARY, lambda path: BinaryTier.load(path, self.manifest.fast.get("binary_index", BINARY_INDEX)))

    @cached_property
    def vectors(self) -> np.ndarray:
        """The stored full-dim vectors (memory-mapped), the re-ranking's input."""
        return self._opened(layout.VECTORS, lambda path: np.load(path, mmap_mode="r"))

    def _opened(self, name: str, read):
        """read(path of `name`); a file that cannot be read is one DamagedIndexError line (its cause
        kept), and faiss running out of memory a MedsearchError that says so (the file may be whole)."""
        try:
            return read(self.folder / name)
        except MemoryError:
            raise MedsearchError(f"not enough memory to load {self.folder / name}") from None
        except Exception as err:  # noqa: BLE001 (numpy and faiss raise many kinds for a damaged file)
            if "bad_alloc" in str(err):
                raise MedsearchError(f"not enough memory to load {self.folder / name}") from None
            raise DamagedIndexError(f"{self.folder}: {name} is unreadable ({reason(err)}): run medsearch verify; "
                                    "restore a snapshot or rebuild to repair it") from err

    def load(self) -> None:
        """Every part a search reads, now (each a DamagedIndexError line when it cannot be read)."""
        for dim in self.manifest.dims:
            self.tier(dim)
        self.vectors  # noqa: B018 (cached on first use)
        if self.manifest.fast_stage == "binary" and self.binary is None:
            raise DamagedIndexError(f"{self.folder}: {layout.BINARY} is missing (the fast tier's stage): run medsearch "
                                    "verify; restore a snapshot or rebuild to repair it")

    def close(self) -> None:
        self._tiers.clear()
        for name in ("vectors", "binary"):
            self.__dict__.pop(name, None)

    def verify(self, skip: set[str] = frozenset()) -> list[str]:
        """vectors.npy, every tier index and the binary codes hold one row per chunk row, at their dim
        (files in `skip`, known to be damaged, are not parsed)."""
        chunks, full_dim = self.manifest.chunks, self.manifest.full_dim
        parts = [(layout.VECTORS, lambda: self.vectors.shape, (chunks, full_dim))]
        parts += [(layout.tier_file(d), lambda d=d: (self.tier(d).index.ntotal, self.tier(d).index.d), (chunks, d))
                  for d in self.manifest.dims]
        if (self.folder / layout.BINARY).is_file() or self.manifest.fast_stage == "binary":
            parts.append((layout.BINARY, lambda: (self.binary.index.ntotal, self.binary.index.d), (chunks, full_dim)))
        problems = []
        for name, shape, expected in parts:
            if name in skip:
                continue
            try:
                found = tuple(int(n) for n in shape())
            except Exception as err:  # noqa: BLE001 (numpy and faiss raise many kinds for a damaged file)
                problems.append(f"{name}: unreadable ({reason(err.__cause__ or err)})")
                continue
            if found != expected:
                problems.append(f"{name}: {found[0]} rows of {found[1]} dims; the manifest says {expected[0]} of {expected[1]}")
        self.close()
        return problems

    # ---- writes ----

    @classmethod
    def build(cls, folder: Path, vectors: np.ndarray, manifest: "Manifest", *, settings: dict,
              stored: np.ndarray | None = None, hnsw_min_chunks: int = HNSW_MIN_CHUNKS,
              target_recall: float, progress: bool = False) -> "FaissBackend":
        """vectors.npy, a tier index per stored dim (HNSW for the fast tier's prefix from
        `hnsw_min_chunks` rows, flat otherwise), the binary codes and the funnel's calibration."""
        dims, full_dim = manifest.tier_dims, manifest.full_dim
        manifest["index_types"] = {
            d: "hnsw" if int(d) == dims["fast"] and int(d) != full_dim and len(vectors) >= hnsw_min_chunks else "flat"
            for d in manifest["index_types"]}
        manifest["faiss_factories"] = {d: FACTORIES[kind] for d, kind in manifest["index_types"].items()}
        manifest["backend"] = {"name": cls.name}
        stored = (vectors if stored is None else stored).astype(manifest.vector_dtype, copy=False)
        np.save(folder / layout.VECTORS, stored)
        written = cls(folder, manifest)
        for dim in manifest.dims:
            tier = FaissTier.build(prefix(vectors, dim), manifest.index_type(dim))
            tier.save(folder / layout.tier_file(dim))
            if dim in (dims["fast"], full_dim):  # the calibration's tiers stay in memory, the others are freed
                written._tiers[dim] = tier
        if dims["fast"] != full_dim and full_dim % 8 == 0:  # the binary stage (faiss codes are whole bytes)
            written.binary = BinaryTier.build(vectors, BINARY_INDEX)
            written.binary.save(folder / layout.BINARY)
        if dims["fast"] != full_dim:
            written.vectors = stored
            manifest["fast"] = written.calibrate(None, target_recall, vectors)
        return written

    def append(self, folder: Path, vectors: np.ndarray, manifest: "Manifest", *, removed: list[str],
               progress: bool = False) -> "FaissBackend":
        """Copies of this generation's files with `vectors` appended (the fast and deep tiers, and
        the binary codes, are kept in memory for the calibration)."""
        np.save(folder / layout.VECTORS, np.concatenate([self.vectors, vectors.astype(self.vectors.dtype)]))
        written = FaissBackend(folder, manifest)
        for dim in self.manifest.dims:
            tier = FaissTier.load(self.folder / layout.tier_file(dim), self.manifest.index_type(dim))  # a copy of its own
            tier.add(prefix(vectors, dim))
            tier.save(folder / layout.tier_file(dim))
            if dim in (manifest.tier_dims["fast"], manifest.full_dim):
                written._tiers[dim] = tier
        binary = self.folder / layout.BINARY
        codes = BinaryTier.load(binary, BINARY_INDEX) if binary.is_file() else None  # a copy of its own
        if codes is not None:
            codes.add(vectors)
            codes.save(folder / layout.BINARY)
        written.binary = codes
        return written

    def carry_over(self, folder: Path, manifest: "Manifest", *, removed: list[str]) -> "FaissBackend":
        """The same files, hard-linked (never written again)."""
        names = [layout.VECTORS, *(layout.tier_file(d) for d in self.manifest.dims),
                 *([layout.BINARY] if (self.folder / layout.BINARY).is_file() else [])]
        for name in names:
            link_file(self.folder / name, folder / name)
        return FaissBackend(folder, manifest)

    def calibrate(self, live: np.ndarray | None, target: float, vectors: np.ndarray | None = None) -> dict | None:
        """The funnel's stage and candidate count for `target` recall@10 against deep (funnel.py),
        measured with this generation's own tier indexes on its `live` rows (`vectors`: the exact
        full-dim vectors when at hand, else the stored ones)."""
        dims = self.manifest.tier_dims
        if dims["fast"] == self.manifest.full_dim:
            return None
        allowed = None if live is None else Allowed(live)
        fast, deep = self.tier(dims["fast"]), self.tier(dims["deep"])
        stages = {"prefix": lambda q, n: fast.search(prefix(q, dims["fast"]), n, allowed)[1]}
        codes = {}
        if self.binary is not None:  # an index written before binary codes has the prefix stage only
            stages["binary"] = lambda q, n: self.binary.search(q, n, allowed)[1]
            codes = {"binary_index": BINARY_INDEX, "binary_factory": BINARY_FACTORIES[BINARY_INDEX]}
        settings = calibrate(self.vectors if vectors is None else vectors,
                             deep=lambda q, n: deep.search(q, n, allowed)[1], stages=stages,
                             rerank_vectors=self.vectors, target=target, rows=None if live is None else allowed.rows())
        return {**codes, **settings}

    def committed(self) -> None:
        """Nothing: the files are the generation."""

    def replaced_by(self, manifest: "Manifest") -> None:
        """Nothing: the files go with the folder."""

    def abandon(self, current: "Manifest | None") -> None:
        """Nothing: the files go with the folder."""

    def outdated(self) -> bool:
        """A generation built before the funnel's calibration or its binary codes gains them when
        it is rewritten."""
        full_dim = self.manifest.full_dim
        return self.manifest.tier_dims["fast"] != full_dim and (
            not self.manifest.fast or (full_dim % 8 == 0 and not (self.folder / layout.BINARY).is_file()))

    def read_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact vectors come from the full-dim flat index, which holds them in float32
        (vectors.npy may be float16), so a compacted index answers with the same scores."""
        stored = np.asarray(self.vectors[rows])
        if self.manifest.index_type(self.manifest.full_dim) == "flat":
            return self.tier(self.manifest.full_dim).vectors(rows), stored
        return np.asarray(stored, dtype=np.float32), stored

    # ---- searches ----

    def search(self, queries: np.ndarray, *, dim: int, rerank: bool, k: int, candidates: int,
               allowed: np.ndarray | None, filters: list["Filter"], chunk_doc: np.ndarray) -> tuple[Ranked, dict[str, float]]:
        """Dead rows and rows that fail a filter are excluded inside faiss (an IDSelector over the
        allowed rows; `filters` are already in them); when fewer candidates than needed come back,
        the search widens, and once it would cover every allowed row it ranks them all exactly: k
        documents whenever k exist."""
        total = self.manifest.chunks if allowed is None else int(allowed.sum())
        n = min(total, candidates)
        timings = {"search": 0.0, "rerank": 0.0}
        results: Ranked = [[] for _ in range(len(queries))]
        pending = np.arange(len(queries) if total else 0)  # nothing allowed: every query gets no hits
        selector = Allowed(allowed) if allowed is not None else None
        while len(pending):
            if selector is not None and n >= total:  # every allowed row: rank them all exactly
                rows, scores = self._exhaustive(queries[pending], selector.rows(), dim, rerank, timings)
            else:
                rows, scores = self._ranked(queries[pending], dim, rerank, n, timings, selector)
            still = []
            for q, r, s in zip(pending, rows, scores):
                hits = collapse(r, s, chunk_doc, k)
                if len(hits) < k and n < total:
                    still.append(q)
                else:
                    results[q] = hits
            pending, n = np.array(still, dtype=int), min(total, 2 * n)
        return results, timings

    def _exhaustive(self, vectors, rows, dim, rerank, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rank every row in `rows` exactly: as re-rank candidates (fast tier), or against the tier
        index's own vectors (read back from it), so the scores are those a search would give."""
        if rerank:
            return self._rerank(vectors, [rows] * len(vectors), timings)
        started = time.perf_counter()
        scores, ranked = self.tier(dim).rank(prefix(vectors, dim), rows)
        timings["search"] += (time.perf_counter() - started) * 1000
        return list(ranked), list(scores)

    def _ranked(self, vectors, dim, rerank, n, timings, allowed=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        started = time.perf_counter()
        if rerank and self.manifest.fast_stage == "binary":  # candidates by Hamming distance of the full vectors' signs
            scores, rows = self.binary.search(vectors, n, allowed)
        else:
            scores, rows = self.tier(dim).search(prefix(vectors, dim), n, allowed)
        timings["search"] += (time.perf_counter() - started) * 1000
        if not rerank:
            return list(rows), list(scores)
        return self._rerank(vectors, rows, timings)

    def _rerank(self, vectors, rows, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each query's candidate rows ranked exactly with the stored full-dim vectors."""
        started = time.perf_counter()
        ranked = rerank_rows(vectors, list(rows), self.vectors)
        timings["rerank"] += (time.perf_counter() - started) * 1000
        return ranked

