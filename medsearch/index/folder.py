"""The index folder: build it from one encoding pass as a new committed generation, open the
current generation, refuse a mismatched one.

Layout of `indexes/<name>/` (generations.py): CURRENT names the committed `gen-NNNNNN/`, which holds
  manifest.json   the config: model, dims, tiers, backend, counts (manifest.py)
  docs.db         documents, chunks, FTS5 (store.py); chunks of deleted or replaced documents are gone
  chunk_doc.npy   document ordinal of each chunk row (collapses chunk hits to documents)
  lexical/        BM25 over each chunk's title + text (lexical.py); row = chunk row
  ...             the vectors, as the manifest's backend keeps them (backends/: FAISS files here,
                  or a Qdrant collection)
Rows whose chunk is gone from docs.db are dead: searches exclude them (the allowed rows a backend
searches) until `compact` rewrites the generation without them (updates.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.index import generations

from medsearch.index import lexical
from medsearch.index.backends import backend_class, open_backend
from medsearch.index.backends.base import VectorBackend
from medsearch.index.backends.funnel import DEFAULT_TARGET_RECALL
from medsearch.encoding.chunking import passage
from medsearch.documents.corpus import Document, read_corpus
from medsearch.encoding.encoder import Encoder, resolve_runtime, runtime_for_index
from medsearch.errors import BadInputError, IndexFormatError, IndexNotFoundError, MedsearchError, ModelMismatchError
from medsearch.index.filters import filter_sql, parse_filters
from medsearch.index.manifest import FORMAT_VERSION, TIERS, Manifest, format_error, tier_dims
from medsearch.index.store import DocStore, corpus_fingerprint, write_store
from medsearch.version import __version__

__all__ = ["DEFAULT_INDEX", "FORMAT_VERSION", "TIERS", "VECTOR_DTYPES", "Index", "build_index", "check_model",
           "index_encoder", "index_exists", "open_index", "same_model", "tier_dims", "write_index"]

DEFAULT_INDEX = Path("indexes") / "default"
VECTOR_DTYPES = ("float16", "float32")


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    encoder: Encoder,
    *,
    vector_dtype: str = "float16",
    chunk_overlap: int | None = None,
    hnsw_min_chunks: int | None = None,
    extra_dims: tuple[int, ...] = (),
    target_recall: float = DEFAULT_TARGET_RECALL,
    backend: dict | None = None,
    language: "str | lexical.Analysis" = "auto",
    progress: bool = False,
    documents: list[Document] | None = None,
) -> dict:
    """Read, chunk, encode once at full dim, and write every tier's index (and one for each of
    `extra_dims`, e.g. every Matryoshka dim for an evaluation) as a new generation; return the manifest.
    `language`: the lexical analysis (lexical.choose_analysis: auto, a language code, none, or an Analysis).
    `documents`: the corpus already read (corpus.load_corpus), so that its files are not read twice."""
    _check_target(Path(index_dir), vector_dtype)
    started = time.perf_counter()
    documents = read_corpus(corpus) if documents is None else documents
    analysis = lexical.choose_analysis(language, [passage(d.title, d.text) for d in documents])
    chunks = encoder.chunk(documents, chunk_overlap)
    passages = [c.passage(documents[c.doc].title) for c in chunks]
    vectors = encoder.encode_passages(passages, progress=progress)
    manifest = {
        "model": model_fields(encoder),
        "query_prefix": encoder.profile.query_prefix,
        "passage_prefix": encoder.profile.passage_prefix,
        "max_tokens": encoder.max_tokens,
        "documents": len(documents),
        "corpus": str(corpus),
        "corpus_fingerprint": corpus_fingerprint((d.id, d.content_hash) for d in documents),
        "chunk_overlap": chunk_overlap,
        "metadata_fields": sorted({key for d in documents for key in d.metadata}),
        "encode_seconds": round(time.perf_counter() - started, 3),
    }
    if getattr(encoder, "search_defaults", None):  # the model's own, from its tuning
        manifest["search_defaults"] = encoder.search_defaults
    return write_index(
        index_dir, vectors, np.array([c.doc for c in chunks], dtype=np.int32), manifest,
        write_docs=lambda path: write_store(path, documents, chunks), vector_dtype=vector_dtype,
        hnsw_min_chunks=hnsw_min_chunks, extra_dims=extra_dims, target_recall=target_recall, started=started,
        backend=backend, analysis=analysis, progress=progress,
    )


def _check_target(target: Path, vector_dtype: str) -> None:
    if vector_dtype not in VECTOR_DTYPES:
        raise BadInputError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got '{vector_dtype}'")
    if target.is_file():
        raise BadInputError(f"{target} is a file, not an index folder")
    ours = (target / generations.POINTER).is_file() or (target / "manifest.json").is_file()  # format 2, 1
    if not ours and generations.holds_other_files(target):
        raise BadInputError(f"{target} exists and is not a medsearch index: choose another index folder")


def write_index(
    index_dir: str | Path,
    vectors: np.ndarray,
    chunk_doc: np.ndarray,
    manifest: dict,
    *,
    write_docs: Callable[[Path], None] | None = None,
    vector_dtype: str = "float16",
    hnsw_min_chunks: int | None = None,
    extra_dims: tuple[int, ...] = (),
    started: float | None = None,
    locked: bool = False,
    stored_vectors: np.ndarray | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    backend: dict | None = None,
    analysis: lexical.Analysis | None = None,
    progress: bool = False,
) -> dict:
    """Write full-dim normalised `vectors` (one per chunk) as an index folder, atomically.

    `manifest` brings the model and corpus fields; this adds dims and counts, and the backend adds
    its own (index types, calibration). `write_docs` writes docs.db (benchmarks on synthetic vectors
    have none). `locked`: the caller already holds the writer lock (a compaction), which also passes
    `stored_vectors`: the rows of vectors.npy as they are, so that re-ranking scores do not move by a
    float16 rounding. `backend`: where the vectors go (None: the FAISS files;
    backends.qdrant.settings(...): a new Qdrant collection); `hnsw_min_chunks`: from how many rows
    the FAISS fast tier is HNSW (None: its default); `analysis`: the lexical index's (None: English).
    What the generation it replaces kept outside the folder (a Qdrant collection) goes after the switch."""
    target = Path(index_dir)
    _check_target(target, vector_dtype)
    check_target_recall(target_recall)
    started = time.perf_counter() if started is None else started
    full_dim = vectors.shape[1]
    dims = tier_dims(full_dim)
    if any(not 0 < d <= full_dim for d in extra_dims):
        raise BadInputError(f"extra dims must be between 1 and the model's {full_dim}; got {list(extra_dims)}")
    manifest = Manifest({
        "format_version": FORMAT_VERSION,
        "medsearch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **manifest,
        "full_dim": full_dim,
        "tier_dims": dims,
        "index_types": {str(d): None for d in sorted(set(dims.values()) | set(extra_dims))},  # the backend's kinds
        "vector_dtype": vector_dtype,
        "chunks": len(vectors),
    })
    settings = backend or {"name": "faiss"}
    backend_type = backend_class(settings["name"])
    build_options = {} if hnsw_min_chunks is None else {"hnsw_min_chunks": hnsw_min_chunks}
    manifest["dead_chunks"] = 0
    with (contextlib.nullcontext() if locked else generations.writer_lock(target)):
        previous = generations.current(target)
        replaced = Manifest.peek(previous)
        tmp = generations.new_folder(target)
        written = None
        try:
            if write_docs:
                write_docs(tmp / "docs.db")
                analysis = analysis or lexical.Analysis()
                lexical.write_from_store(tmp, len(vectors), analysis)
                manifest["lexical"] = lexical.settings(analysis)
            np.save(tmp / "chunk_doc.npy", np.asarray(chunk_doc, dtype=np.int32))
            written = backend_type.build(tmp, vectors, manifest, settings=settings, stored=stored_vectors,
                                         target_recall=target_recall, progress=progress, **build_options)
            manifest["build_seconds"] = round(time.perf_counter() - started, 3)
            manifest.write(tmp)
            generations.commit(target, tmp, derived=False)  # (a compaction checked its base whole first)
        except BaseException:
            generations.discard(tmp)
            if written is not None:
                written.abandon(Manifest.peek(generations.current(target)))
            raise
        if replaced is not None and replaced.get("format_version") == FORMAT_VERSION:
            with contextlib.suppress(MedsearchError):  # the old generation's collection; its files stay for readers
                open_backend(previous, replaced).replaced_by(manifest)
        _remove_format1_files(target)
    return manifest


def check_target_recall(target: float) -> None:
    if not 0 < target <= 1:
        raise BadInputError(f"target recall must be above 0 and at most 1; got {target}")


def _remove_format1_files(root: Path) -> None:
    """A format-1 index kept its files in the folder itself; once a generation replaces it, drop them."""
    if (root / "manifest.json").is_file():
        for path in root.iterdir():
            if path.is_file() and path.name not in (generations.POINTER, generations.LOCK):
                path.unlink()


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
        return np.load(self.folder / "chunk_doc.npy", mmap_mode="r")

    @cached_property
    def store(self) -> DocStore:
        return DocStore(self.folder / "docs.db")

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
        return self._mask(self.store.rows_where(where, params))  # live rows only: dead ones left docs.db

    def _mask(self, rows: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.chunks, dtype=bool)
        mask[rows] = True
        return mask

    def search_dense(self, vectors: np.ndarray, *, dim: int, rerank: bool, k: int, oversample: int | None = None,
                     filters=()) -> tuple[list[list[tuple[int, float]]], dict[str, float]]:
        """The backend's dense top k lists (backends/base.py) at `dim` (`rerank`: the fast tier's
        candidates re-ranked at full dim) among the rows a search may return: the live rows matching
        `filters` (parsed filters.Filter, their fields checked by the caller: Searcher.check), or the
        live rows and the filters for a backend that filters inside its own engine. The candidates
        are this generation's, from its manifest, handed down: the funnel's measured count (or
        k x `oversample`), else k, or 2k where chunks of one document may crowd the list."""
        from medsearch.index.backends.funnel import candidates_for

        if rerank:
            candidates = candidates_for(self.manifest.fast, k, oversample)
        else:
            candidates = 2 * k if self.chunks != self.manifest.documents else k
        allowed = self.live if self.backend.filters_natively else self.allowed(filters)
        return self.backend.search(vectors, dim=dim, rerank=rerank, k=k, candidates=candidates, allowed=allowed,
                                   filters=list(filters), chunk_doc=self.chunk_doc)

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
        lexical_dir = self.folder / lexical.LEXICAL_DIR
        if lexical_dir.is_dir():
            files[lexical.LEXICAL_DIR + "/"] = sum(p.stat().st_size for p in lexical_dir.iterdir())
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
        if (path / "manifest.json").is_file():
            raise IndexFormatError(format_error(path, 1), path)
        if path.exists():
            raise IndexNotFoundError(f"{path} is not a medsearch index (no {generations.POINTER} file)", path)
        raise IndexNotFoundError(f"no index at {path}", path)
    leased = generations.lease(path)
    if leased is None:
        raise IndexNotFoundError(f"{path} is not a medsearch index (no {generations.POINTER} file)", path)
    folder, handle = leased
    try:
        manifest = Manifest.read(folder, path)
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return Index(path=path, manifest=manifest, folder=folder, lease=handle)


def model_fields(encoder: Encoder) -> dict:
    """The manifest's record of the encoder: which model, its fingerprint and the runtime that encoded."""
    return {"spec": encoder.spec, "name": encoder.name, "fingerprint": encoder.fingerprint, "weights": encoder.weights,
            "runtime": encoder.runtime, "precision": encoder.precision}


def index_runtime(index: Index, runtime: str | None = None, model: str | None = None) -> str:
    """The runtime that encodes for an index: the one it was built with (or an installed one of the
    same precision) unless `runtime` names one (`auto`: this CPU's choice for the model)."""
    if runtime:
        return resolve_runtime(runtime, model or index.manifest.model["spec"])
    return runtime_for_index(index.manifest.model.get("runtime"))


def index_encoder(index: Index, model: str | None = None, device: str | None = None, runtime: str | None = None,
                  threads: int | None = None, streams: int | None = None) -> Encoder:
    """The encoder for queries and writes to an index: its model, run by index_runtime's runtime;
    `threads` and `streams` as Encoder takes them."""
    return Encoder(model or index.manifest.model["spec"], device=device, runtime=index_runtime(index, runtime, model),
                   threads=threads, streams=streams)


def same_model(index: Index, encoder: Encoder) -> bool:
    """Whether the encoder's vectors match the index's (same weights, same precision)."""
    model = index.manifest.model
    if "runtime" not in model:  # built before runtimes were recorded: the fingerprint hashed torch parameters
        same = encoder.runtime == "torch" and encoder.parameters_fingerprint == model["fingerprint"]
    else:
        same = encoder.fingerprint == model["fingerprint"]
    return same and encoder.dim == index.full_dim


def check_model(index: Index, encoder: Encoder) -> None:
    """Refuse to search an index with vectors from another model, or from the same weights computed
    in another precision (int8 vs fp32). Runtimes of one precision share a fingerprint: their vectors
    agree to float tolerance, so an index built with torch is searched with OpenVINO and back."""
    if same_model(index, encoder):
        return
    model = index.manifest.model
    if model.get("weights") and model["weights"] == encoder.weights:
        raise ModelMismatchError(
            f"{index.path} was built with runtime {model['runtime']} ({model['precision']} vectors); queries encoded by "
            f"{encoder.runtime} ({encoder.precision}) would not match them: use a {model['precision']} runtime",
            index.path, encoder.spec, runtime=model["runtime"],
        )
    raise ModelMismatchError(
        f"{index.path} was built with model '{model['name']}' (fingerprint {model['fingerprint']}), "
        f"not '{encoder.name}' (fingerprint {encoder.fingerprint}): its vectors cannot be searched with that model",
        index.path, encoder.spec,
    )
