"""The FAISS backend: one stored matrix in the generation folder, every tier a view of it.

  vectors.faiss   the full-dim L2-normalised vectors, one row per chunk row: a faiss flat-codes
                  index (`SQfp16` for float16, `Flat` for float32), memory-mapped by faiss, its
                  codes also read as a numpy matrix, so the tiers need no copies:
                    deep           faiss's exact scan of the index (SIMD float16 decoding)
                    a prefix dim   an exact scan of the first `dim` columns, renormalised, in blocks
                    re-ranking     the candidates' rows, decoded by faiss
  binary.faiss    sign codes of the full vectors (a faiss binary index): the fast tier's candidate
                  stage; the manifest's `fast` says which stage and how many candidates reach the
                  recall target (funnel.py)

Bytes a passage: 2 x dim (float16) + dim / 8 (sign codes); docs/guides/speed.md has the table.
An index larger than RAM still answers: the pages come from disk as a scan reads them.

A generation written before this layout (vectors.npy beside one `dim{N}.faiss` copy a stored dim)
is read through its vectors.npy, and `compact` rewrites it into this layout.

Rows are never removed here: a search gets the rows it may return (live and matching the filters)
as an IDSelector evaluated inside faiss (or a mask over each block); `compact` rewrites the files
without the dead rows. A write appends rows to a copy of the files; a delete-only write links them
(a committed generation's files never change).
"""

from __future__ import annotations

import time
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from medsearch.errors import DamagedIndexError, MedsearchError, reason
from medsearch.index import layout
from medsearch.index.backends.base import Ranked, collapse, prefix
from medsearch.index.backends.funnel import calibrate
from medsearch.index.backends.funnel import rerank as rerank_rows
from medsearch.index.generations import link_file

if TYPE_CHECKING:
    from medsearch.index.filters import Filter
    from medsearch.index.manifest import Manifest

MATRIX_FACTORIES = {"float16": "SQfp16", "float32": "Flat"}
BINARY_INDEX = "flat"
# The binary stage scans every code (exact Hamming distance): at 1M x 1024 bits it beat an HNSW graph
# over the codes, which found fewer of the true neighbours and took 182 s to build (bench/binary_index.py).
BINARY_FACTORIES = {"flat": "BFlat"}
BLOCK_ROWS = 65_536  # rows decoded at a time by a prefix scan (and written at a time by a build)


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


class Matrix:
    """The one stored matrix: `view` (rows x full dim, float16 or float32, memory-mapped) and, for
    this layout's file, `index`, the faiss index whose codes `view` is (None for a vectors.npy)."""

    def __init__(self, view: np.ndarray, index: faiss.Index | None = None):
        self.view = view
        self.index = index
        self.full_dim = view.shape[1]

    @classmethod
    def open(cls, path: Path) -> "Matrix":
        """vectors.faiss, memory-mapped once, by faiss; `view` is numpy's window on faiss's codes
        (mapping the file a second time would count every page twice in the resident memory).
        Checked: a row as faiss decodes it is the row numpy reads."""
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        dtype = np.float16 if isinstance(index, faiss.IndexScalarQuantizer) else np.float32
        view = np.asarray(_Codes(index, dtype)) if index.ntotal else np.empty((0, index.d), dtype)
        matrix = cls(view, index)
        n = index.ntotal
        if n and not np.array_equal(index.reconstruct(n - 1), matrix.rows(np.array([n - 1]))[0]):
            raise ValueError("its codes are not the rows this medsearch reads")
        return matrix

    @classmethod
    def legacy(cls, path: Path) -> "Matrix":
        """A vectors.npy of the layout before (float16 or float32), memory-mapped."""
        return cls(np.load(path, mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.view)

    def rows(self, rows: "np.ndarray | range", dim: int | None = None) -> np.ndarray:
        """float32 rows (a range of them, or any), their first `dim` columns when given, decoded by
        faiss's SIMD code."""
        columns = slice(0, dim)
        if isinstance(rows, range):
            return decode(np.asarray(self.view[rows.start:rows.stop, columns]))
        return decode(np.asarray(self.view[np.asarray(rows, dtype=np.int64), columns]))

    def search(self, queries: np.ndarray, dim: int, n: int, allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the n best rows per query by inner product with the rows' first `dim`
        columns, renormalised (the Matryoshka embedding at `dim`), among `allowed`; exact. Full dim:
        faiss's scan of the index; a prefix: the view decoded BLOCK_ROWS rows at a time."""
        queries = prefix(queries, dim)
        if dim == self.full_dim and self.index is not None:
            return self.index.search(queries, n, params=faiss.SearchParameters(sel=allowed.selector) if allowed is not None else None)
        heap = faiss.ResultHeap(len(queries), n, keep_max=True)
        for start in range(0, len(self), BLOCK_ROWS):
            stop = min(len(self), start + BLOCK_ROWS)
            rows, block = np.arange(start, stop), self.rows(range(start, stop), dim)
            if allowed is not None:
                keep = allowed.mask[start:stop]
                rows, block = rows[keep], block[keep]
                if not len(rows):
                    continue
            if dim < self.full_dim:  # a prefix is renormalised; full rows are scored as stored, as faiss's scan does
                faiss.normalize_L2(block)
            scores, found = faiss.knn(queries, block, min(n, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(found >= 0, rows[np.maximum(found, 0)], -1))
        heap.finalize()
        return heap.D, heap.I


class _Codes:
    """A read-only numpy window on a faiss flat-codes index's codes that keeps the index (and so its
    memory map) alive for as long as any array made from it lives."""

    def __init__(self, index: faiss.Index, dtype):
        self.index = index
        shape = (index.ntotal, index.d)
        raw = faiss.rev_swig_ptr(index.codes.data(), index.ntotal * index.code_size)
        if index.code_size != index.d * np.dtype(dtype).itemsize:
            raise ValueError(f"{index.code_size} bytes a row is not {index.d} dims of {np.dtype(dtype).name}")
        self.__array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str, "version": 3,
                                    "data": (raw.__array_interface__["data"][0], True)}  # True: read-only


def decode(stored: np.ndarray) -> np.ndarray:
    """float32 of stored rows: float16 by faiss (SIMD; numpy's conversion is about 3x slower)."""
    if stored.dtype != np.float16:
        return np.array(stored, dtype=np.float32)
    stored = np.ascontiguousarray(stored)
    return float16_codec(stored.shape[1]).decode(stored.view(np.uint8)) if len(stored) else np.empty(stored.shape, np.float32)


@lru_cache(maxsize=16)
def float16_codec(dim: int) -> faiss.ScalarQuantizer:
    """faiss's float16 codec for rows of `dim` (made once a dim: a query decodes with it several times)."""
    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def write_matrix(path: Path, vectors: np.ndarray, dtype: str, base: Matrix | None = None) -> None:
    """vectors.faiss of `base`'s rows (when given) and then `vectors` (any float dtype, a memory map
    included), written BLOCK_ROWS rows at a time: memory stays at one block, whatever the size.

    faiss writes an index only from memory (10M x 384 would hold 7.7 GB), so the file is streamed:
    faiss's own serialisation of the empty index, with its two counts (rows, and the codes' length)
    set, then the codes. tests/test_backend_faiss.py checks that the bytes are those faiss writes, and
    Matrix.open checks every file it reads."""
    if dtype not in MATRIX_FACTORIES:
        raise MedsearchError(f"vectors cannot be stored as {dtype} (use {', '.join(MATRIX_FACTORIES)})")
    dim = vectors.shape[1]
    rows = len(vectors) + (len(base) if base is not None else 0)
    header = bytearray(faiss.serialize_index(faiss.index_factory(dim, MATRIX_FACTORIES[dtype], faiss.METRIC_INNER_PRODUCT)))
    header[8:16] = rows.to_bytes(8, "little")  # after the fourcc and d: ntotal
    header[-8:] = (rows * dim * (2 if dtype == "float16" else 1)).to_bytes(8, "little")  # the codes' bytes (SQ) or floats (Flat)
    with path.open("wb") as out:
        out.write(header)
        for source in ([base.view] if base is not None else []) + [vectors]:
            for start in range(0, len(source), BLOCK_ROWS):
                out.write(encode(np.asarray(source[start:start + BLOCK_ROWS]), dtype).tobytes())


def encode(block: np.ndarray, dtype: str) -> np.ndarray:
    """Rows as the matrix stores them (float16 by faiss's SIMD code; rows already float16 as they are)."""
    if dtype == "float32" or block.dtype == np.float16:
        return np.ascontiguousarray(block, dtype=np.float16 if dtype == "float16" else np.float32)
    return float16_codec(block.shape[1]).compute_codes(np.ascontiguousarray(block, dtype=np.float32))


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """One bit a dim, set where the value is positive, packed 8 to a byte: sentence-transformers'
    `ubinary` quantisation (48 bytes for 384 dims, 128 for 1024). Its one line is written here,
    because importing sentence-transformers for it costs a query seconds (tests/test_backend_faiss.py
    checks that both agree)."""
    vectors = np.asarray(vectors)
    return np.packbits(vectors > 0, axis=-1).reshape(vectors.shape[0], -1)


class BinaryCodes:
    """The full vectors' sign codes in a faiss binary index (an exact scan), searched by Hamming
    distance: full-dim float queries in, (minus the Hamming distance, rows) out, so that higher is
    better as everywhere else."""

    def __init__(self, index: faiss.IndexBinary):
        self.index = index
        # Counting by distance instead of a heap: at 1M x 1024 bits a single query's 2,000 candidates
        # took 5.3 ms against 7.3 (500: 5.8 against 6.4), a batch of 32 108 ms against 132 (2 cores).
        index.use_heap = False

    @classmethod
    def build(cls, dim: int) -> "BinaryCodes":
        return cls(faiss.index_binary_factory(dim, BINARY_FACTORIES[BINARY_INDEX]))

    @classmethod
    def write(cls, folder: Path, dim: int, parts: list[np.ndarray], base: Path | None = None) -> "BinaryCodes":
        """The folder's binary.faiss: the codes of `base` (a copy of its own), when given, then of each part's rows."""
        codes = cls.load(base) if base is not None else cls.build(dim)
        for part in parts:
            codes.add(part)
        codes.save(folder / layout.BINARY)
        return codes

    @classmethod
    def load(cls, path: Path) -> "BinaryCodes":
        return cls(faiss.read_index_binary(str(path)))

    def save(self, path: Path) -> None:
        faiss.write_index_binary(self.index, str(path))

    def add(self, vectors: np.ndarray) -> None:
        for start in range(0, len(vectors), BLOCK_ROWS):
            self.index.add(binary_codes(vectors[start:start + BLOCK_ROWS]))

    def search(self, queries: np.ndarray, n: int, allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParameters(sel=allowed.selector) if allowed is not None else None
        distances, rows = self.index.search(binary_codes(queries), n, params=params)
        return -distances.astype(np.float32), rows


def wants_codes(manifest: "Manifest") -> bool:
    """Whether a generation has the binary stage: a fast tier below the full dim, whose sign codes are
    whole bytes (faiss's binary indexes)."""
    return manifest.tier_dims["fast"] != manifest.full_dim and manifest.full_dim % 8 == 0


def record_files(manifest: "Manifest", codes: bool) -> None:
    """The manifest's account of this layout: every stored dim an exact view of the matrix, and the
    faiss factory of each file."""
    manifest["index_types"] = {d: "flat" for d in manifest["index_types"]}
    manifest["faiss_factories"] = {"vectors": MATRIX_FACTORIES[manifest.vector_dtype],
                                   **({"binary": BINARY_FACTORIES[BINARY_INDEX]} if codes else {})}


class FaissBackend:
    """One generation's vectors in its folder's files (backends/base.py's VectorBackend), opened
    lazily, so that a query touches only what its tier reads."""

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

    @property
    def legacy(self) -> bool:
        """Whether the generation is of the layout before (a vectors.npy and a copy per stored dim):
        its manifest names no stored matrix."""
        return "vectors" not in (self.manifest.get("faiss_factories") or {})

    @cached_property
    def matrix(self) -> Matrix:
        """The stored vectors (memory-mapped): every tier's input."""
        if self.legacy:
            return self._opened(layout.LEGACY_VECTORS, Matrix.legacy)
        return self._opened(layout.MATRIX, Matrix.open)

    @property
    def vectors(self) -> np.ndarray:
        """The stored full-dim vectors, as stored (memory-mapped)."""
        return self.matrix.view

    @cached_property
    def binary(self) -> BinaryCodes | None:
        """The binary candidate stage, when the generation has one."""
        if not (self.folder / layout.BINARY).is_file():
            return None
        return self._opened(layout.BINARY, BinaryCodes.load)

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
        self.matrix  # noqa: B018 (cached on first use)
        if self.manifest.fast_stage == "binary" and self.binary is None:
            raise self._missing_codes()

    def _missing_codes(self) -> DamagedIndexError:
        return DamagedIndexError(f"{self.folder}: {layout.BINARY} is missing (the fast tier's stage): run medsearch "
                                 "verify; restore a snapshot or rebuild to repair it")

    def close(self) -> None:
        for name in ("matrix", "binary"):
            self.__dict__.pop(name, None)

    def verify(self, skip: set[str] = frozenset()) -> list[str]:
        """The matrix and the binary codes hold one row per chunk row, at the full dim (files in
        `skip`, known to be damaged, are not parsed)."""
        chunks, full_dim = self.manifest.chunks, self.manifest.full_dim
        matrix = layout.LEGACY_VECTORS if self.legacy else layout.MATRIX
        parts = [(matrix, lambda: self.matrix.view.shape, (chunks, full_dim))]
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
              stored: np.ndarray | None = None, target_recall: float, progress: bool = False) -> "FaissBackend":
        """vectors.faiss (the rows as `stored` when given, else `vectors` in the manifest's dtype),
        the binary codes and the funnel's calibration. `vectors` may be a memory map: it is read in blocks."""
        codes = wants_codes(manifest)
        record_files(manifest, codes)
        manifest["backend"] = {"name": cls.name}
        write_matrix(folder / layout.MATRIX, vectors if stored is None else stored, manifest.vector_dtype)
        written = cls(folder, manifest)
        if codes:
            written.binary = BinaryCodes.write(folder, manifest.full_dim, [vectors])
        if manifest.tier_dims["fast"] != manifest.full_dim:
            manifest["fast"] = written.calibrate(None, target_recall, vectors)
        return written

    def append(self, folder: Path, vectors: np.ndarray, manifest: "Manifest", *, removed: list[str],
               progress: bool = False) -> "FaissBackend":
        """This generation's rows and `vectors` after them, in this layout (a generation of the
        layout before is rewritten into it: its binary codes are made from its stored rows)."""
        kept = self.folder / layout.BINARY
        codes = kept.is_file() or (self.legacy and wants_codes(manifest))
        record_files(manifest, codes)
        write_matrix(folder / layout.MATRIX, vectors, manifest.vector_dtype, base=self.matrix)
        written = FaissBackend(folder, manifest)
        if codes:  # this generation's codes and the new rows' (a generation of the layout before: made from its rows)
            written.binary = BinaryCodes.write(folder, manifest.full_dim, [vectors] if kept.is_file() else [self.matrix.view, vectors],
                                               base=kept if kept.is_file() else None)
        return written

    def carry_over(self, folder: Path, manifest: "Manifest", *, removed: list[str]) -> "FaissBackend":
        """The same files, hard-linked (never written again)."""
        names = [layout.LEGACY_VECTORS, *(layout.tier_file(d) for d in self.manifest.dims)] if self.legacy else [layout.MATRIX]
        names += [layout.BINARY] if (self.folder / layout.BINARY).is_file() else []
        for name in names:
            link_file(self.folder / name, folder / name)
        return FaissBackend(folder, manifest)

    def calibrate(self, live: np.ndarray | None, target: float, vectors: np.ndarray | None = None) -> dict | None:
        """The funnel's stage and candidate count for `target` recall@10 against deep (funnel.py),
        measured on this generation's `live` rows (`vectors`: the exact full-dim vectors when at
        hand, else the stored ones). The stages: the binary codes when the generation has them, else
        the fast tier's prefix (a scan of the view: without codes there is nothing cheaper)."""
        dims = self.manifest.tier_dims
        if dims["fast"] == self.manifest.full_dim:
            return None
        allowed = None if live is None else Allowed(live)
        full = self.manifest.full_dim
        if self.binary is not None:
            stages = {"binary": lambda q, n: self.binary.search(q, n, allowed)[1]}
            codes = {"binary_index": BINARY_INDEX, "binary_factory": BINARY_FACTORIES[BINARY_INDEX]}
        else:
            stages = {"prefix": lambda q, n: self.matrix.search(q, dims["fast"], n, allowed)[1]}
            codes = {}
        settings = calibrate(self.vectors if vectors is None else vectors,
                             deep=lambda q, n: self.matrix.search(q, full, n, allowed)[1], stages=stages,
                             read=self.matrix.rows, target=target, rows=None if live is None else allowed.rows())
        return {**codes, **settings}

    def committed(self) -> None:
        """Nothing: the files are the generation."""

    def replaced_by(self, manifest: "Manifest") -> None:
        """Nothing: the files go with the folder."""

    def abandon(self, current: "Manifest | None") -> None:
        """Nothing: the files go with the folder."""

    def outdated(self) -> bool:
        """A generation of the layout before, or built before the funnel's calibration or its binary
        codes, is rewritten by `compact`."""
        return (self.legacy or (self.manifest.tier_dims["fast"] != self.manifest.full_dim and not self.manifest.fast)
                or (wants_codes(self.manifest) and not (self.folder / layout.BINARY).is_file()))

    def read_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored rows of `rows`, once, as both the vectors and the rows to keep: a compaction
        writes them again as they are (so its scores do not move), a block at a time."""
        stored = np.asarray(self.matrix.view[np.asarray(rows, dtype=np.int64)])
        return stored, stored

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
                rows, scores = self._exhaustive(queries[pending], selector, dim, rerank, timings)
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

    def _exhaustive(self, vectors, allowed: Allowed, dim, rerank, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rank every allowed row exactly, at full dim (the fast tier: what re-ranking them all would
        give) or at `dim`: the matrix's own scan, a block at a time, never the rows copied at once."""
        started = time.perf_counter()
        scores, rows = self.matrix.search(vectors, self.manifest.full_dim if rerank else dim, allowed.count, allowed)
        timings["rerank" if rerank else "search"] += (time.perf_counter() - started) * 1000
        return list(rows), list(scores)

    def _ranked(self, vectors, dim, rerank, n, timings, allowed=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        started = time.perf_counter()
        if rerank and self.manifest.fast_stage == "binary":  # candidates by Hamming distance of the full vectors' signs
            if self.binary is None:
                raise self._missing_codes()
            scores, rows = self.binary.search(vectors, n, allowed)
        else:
            scores, rows = self.matrix.search(vectors, dim, n, allowed)
        timings["search"] += (time.perf_counter() - started) * 1000
        if not rerank:
            return list(rows), list(scores)
        return self._rerank(vectors, rows, timings)

    def _rerank(self, vectors, rows, timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each query's candidate rows ranked exactly with the stored full-dim vectors."""
        started = time.perf_counter()
        ranked = rerank_rows(vectors, list(rows), self.matrix.rows)
        timings["rerank"] += (time.perf_counter() - started) * 1000
        return ranked
