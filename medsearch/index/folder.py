"""The index folder's reader: open the current generation of an index folder (`Index`), tell
whether a folder holds one. What the folder holds: layout.py; how a generation is built: build.py;
how it is written to: writes.py; which encoder queries it: model_check.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from medsearch.errors import BadInputError, IndexFormatError, IndexNotFoundError
from medsearch.index import generations, layout, lexical
from medsearch.index.backends import open_backend
from medsearch.index.backends.base import VectorBackend
from medsearch.index.filters import filter_sql, parse_filters
from medsearch.index.manifest import (
    FORMAT_VERSION,
    TIERS,
    Manifest,
    format_error,
    tier_dims,
)
from medsearch.index.store import DocStore

__all__ = ["DEFAULT_INDEX", "FORMAT_VERSION", "TIERS", "VECTOR_DTYPES", "Index", "index_exists", "open_index",
           "tier_dims"]

DEFAULT_INDEX = Path("indexes") / "default"
VECTOR_DTYPES = ("float16", "float32")


@dataclass
class Index:
    """One committed generation of an index folder (`path` is the folder users name; `folder` the
    generation's): its manifest, document store, lexical index and its backend's vectors."""

    path: Path
    manifest: Manifest
    folder: Path | None = None
    lease: object = field(default=None, repr=False, compare=False)  # generations.lease: kept from prune while open

    def __post_init__(self):
        self.folder = self.folder or self.path
        if not isinstance(self.manifest, Manifest):
            self.manifest = Manifest(self.manifest)

    @property
    def full_dim(self) -> int:
        return self.manifest.full_dim

    @property
    def dims(self) -> list[int]:
        return self.manifest.dims

    @property
    def chunks(self) -> int:
        """Rows in the vectors, dead ones included."""
        return self.manifest.chunks

    @property
    def live_chunks(self) -> int:
        return self.manifest.live_chunks

    @property
    def generation(self) -> int:
        return generations.number(self.folder)

    @property
    def backend_name(self) -> str:
        """Where the vectors live: `faiss` (this folder's files) or `qdrant` (a collection)."""
        return self.manifest.backend_name

    def check_dim(self, dim: int) -> None:
        if dim not in self.dims:
            stored = ", ".join(map(str, self.dims))
            raise BadInputError(f"dim {dim} is not stored in {self.path} (stored: {stored})")

    @cached_property
    def backend(self) -> VectorBackend:
        """This generation's vectors and their search (backends/)."""
        return open_backend(self.folder, self.manifest)

    @cached_property
    def chunk_doc(self) -> np.ndarray:
        return np.load(self.folder / layout.CHUNK_DOC, mmap_mode="r")

    @cached_property
    def store(self) -> DocStore:
        return DocStore(self.folder / layout.DOCS)

    @cached_property
    def analysis(self) -> lexical.Analysis:
        """How the index's text becomes BM25 terms, as its manifest records it (queries and writes
        analyse the same way)."""
        return lexical.Analysis.from_manifest(self.manifest.get("lexical"), self.path)

    @cached_property
    def lexical(self) -> lexical.Lexical:
        if not self.manifest.has_lexical:
            raise IndexFormatError(f"{self.path} has no lexical index (it was built by an older medsearch)", self.path)
        return lexical.Lexical(self.folder, self.analysis)

    @cached_property
    def live(self) -> np.ndarray | None:
        """Which rows are live (bool per row), or None when every row is."""
        if not self.manifest.dead_chunks:
            return None
        return self._mask(self.store.chunk_rows())

    def allowed(self, filters=None) -> np.ndarray | None:
        """Which rows a search may return (bool per row): live, and matching every filter (parsed
        filters.Filter, as a search's options hold them; a `field=value` string is parsed here);
        None when that is every row."""
        if not filters:
            return self.live
        where, params = filter_sql(parse_filters(filters), self.manifest.metadata_fields)
        return self._mask(self.store.rows_where(where, params))  # live rows only: dead ones left the document store

    def _mask(self, rows: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.chunks, dtype=bool)
        mask[rows] = True
        return mask

    def search_dense(self, vectors: np.ndarray, *, dim: int, rerank: bool, k: int, oversample: int | None = None,
                     filters=(), candidates: int | None = None) -> tuple[list[list[tuple[int, float]]], dict[str, float]]:
        """The backend's dense top k lists (backends/base.py) at `dim` (`rerank`: the fast tier's
        candidates re-ranked at full dim) among the rows a search may return: the live rows matching
        `filters` (filters.Filter as a search's options hold them, or `field=value` strings), or the
        live rows and the filters for a backend that filters inside its own engine. The candidates
        are this generation's, from its manifest, handed down: the funnel's measured count (or
        k x `oversample`), else k, or 2k where chunks of one document may crowd the list; a caller's
        own `candidates` count replaces them."""
        from medsearch.index.backends.funnel import candidates_for

        if candidates is None:
            if rerank:
                candidates = candidates_for(self.manifest.fast, k, oversample)
            else:
                candidates = 2 * k if self.chunks != self.manifest.documents else k
        filters = parse_filters(filters)  # (Filter objects pass as they are)
        if self.backend.filters_natively:
            if filters:
                filter_sql(filters, self.manifest.metadata_fields)  # an unknown field: the error a search gives
            allowed = self.live
        else:
            allowed = self.allowed(filters)
        return self.backend.search(vectors, dim=dim, rerank=rerank, k=k, candidates=candidates, allowed=allowed,
                                   filters=filters, chunk_doc=self.chunk_doc)

    def load(self, vectors: bool = True) -> "Index":
        """Load everything a search needs now (a service's new generation): the backend's vectors
        (or its connection), the live rows, the vector map, the lexical index. `vectors=False`:
        all but the backend's, whose tiers then load as queries use them (a one-query process)."""
        if vectors:
            self.backend.load()
        self.live, self.chunk_doc  # noqa: B018 (cached on first use)
        if self.manifest.has_lexical:
            self.lexical  # noqa: B018
        return self

    def close(self) -> None:
        """Let go of the generation's files: SQLite connections, tier indexes, memory maps (a
        searcher that has moved to a newer generation; the files of a pruned one free their space)."""
        store = self.__dict__.pop("store", None)
        if store is not None:
            store.close()
        backend = self.__dict__.pop("backend", None)
        if backend is not None:
            backend.close()
        for name in ("chunk_doc", "lexical", "live"):
            self.__dict__.pop(name, None)
        if self.lease is not None:  # the generation may be pruned from now on
            self.lease.close()
            self.lease = None

    def files(self) -> dict[str, int]:
        """Size in bytes of each file of the generation."""
        files = {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()}
        lexical_dir = self.folder / layout.LEXICAL_DIR
        if lexical_dir.is_dir():
            files[layout.LEXICAL_DIR + "/"] = sum(p.stat().st_size for p in lexical_dir.iterdir())
        return files

    def describe(self) -> dict:
        """What `medsearch info --json` and the service's /info show: the manifest, what derives from
        it, the generation and its files' sizes."""
        return {**self.manifest.describe(), "generation": self.generation, "files": self.files()}


def index_exists(index_dir: str | Path) -> bool:
    """Whether the folder holds a committed index (of this format or another)."""
    return generations.current(Path(index_dir)) is not None


def open_index(index_dir: str | Path) -> Index:
    """The index folder's current generation."""
    path = Path(index_dir)
    folder = generations.current(path)
    if folder is None:
        if (path / layout.MANIFEST).is_file():
            raise IndexFormatError(format_error(path, 1), path)
        if path.exists():
            raise IndexNotFoundError(f"{path} is not a medsearch index (no {layout.POINTER} file)", path)
        raise IndexNotFoundError(f"no index at {path}", path)
    leased = generations.lease(path)
    if leased is None:
        raise IndexNotFoundError(f"{path} is not a medsearch index (no {layout.POINTER} file)", path)
    folder, handle = leased
    try:
        manifest = Manifest.read(folder, path)
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return Index(path=path, manifest=manifest, folder=folder, lease=handle)
