"""The index folder: build it from one encoding pass as a new committed generation, open the
current generation, refuse a mismatched one.

Layout of `indexes/<name>/` (generations.py): CURRENT names the committed `gen-NNNNNN/`, which holds
  manifest.json   the config: model, dims, tiers, index types (faiss factory strings), counts
  docs.db         documents, chunks, FTS5 (store.py); chunks of deleted or replaced documents are gone
  vectors.npy     full-dim L2-normalised vectors (float16 by default), memory-mapped for re-ranking
  chunk_doc.npy   document ordinal of each chunk row (collapses chunk hits to documents)
  dim{N}.faiss    one inner-product index per tier dim over renormalised prefixes; ids = chunk rows
  binary.faiss    sign codes of the full vectors (faiss binary index): the fast tier's binary
                  candidate stage; the manifest's `fast` says which stage and how many candidates
                  reach the recall target (funnel.py)
  lexical/        BM25 over each chunk's title + text (lexical.py); row = chunk row
Rows whose chunk is gone from docs.db are dead: searches exclude them inside faiss (an IDSelector
over the live rows) until `compact` rewrites the generation without them (updates.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np
import sqlite_utils

from medsearch import __version__
from medsearch.corpus import Document, read_corpus
from medsearch.encoder import Encoder, runtime_for_index
from medsearch import generations
from medsearch.backends.base import VectorBackend, prefix
from medsearch.backends.faiss import BINARY_FACTORIES, FACTORIES, Allowed, BinaryTier, FaissBackend, FaissTier
from medsearch.backends.qdrant import QdrantBackend, store_payloads
from medsearch.funnel import DEFAULT_TARGET_RECALL, calibrate
from medsearch.filters import filter_sql, parse_filters
from medsearch import lexical
from medsearch.errors import BadInputError, IndexFormatError, MedsearchError, IndexNotFoundError, ModelMismatchError
from medsearch.store import DocStore, write_store

FORMAT_VERSION = 2  # 2: generations (CURRENT + gen-NNNNNN/), dead rows, faiss factory strings
DEFAULT_INDEX = Path("indexes") / "default"
TIERS = ("fast", "light", "standard", "deep")
TIER_TARGET_DIMS = {"fast": 64, "light": 128, "standard": 512}
# Above this many chunks the fast tier's 64-dim candidate index is HNSW instead of exact flat.
HNSW_MIN_CHUNKS = 200_000
VECTOR_DTYPES = ("float16", "float32")
BINARY_FILE = "binary.faiss"  # sign codes of the full vectors: the fast tier's binary candidate stage
# The binary stage scans every code (exact Hamming distance): at 1M x 1024 bits that takes 6.1-7.3 ms
# a query for 500-2000 candidates, where an HNSW graph over the codes took 3.3-12.8 ms (its cost grows
# with the candidates), found fewer of the true neighbours and took 182 s to build
# (bench/binary_index.py; docs/guides/speed.md).
BINARY_INDEX = "flat"


def tier_dims(full_dim: int) -> dict[str, int]:
    """Tier -> prefix dim for a model of `full_dim` dims (never above the model's own size)."""
    dims = {tier: min(target, full_dim) for tier, target in TIER_TARGET_DIMS.items()}
    dims["deep"] = full_dim
    return dims


def corpus_fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """Hash of (document id, content hash) pairs in order."""
    digest = hashlib.sha256()
    for doc_id, content_hash in pairs:
        digest.update(f"{doc_id}\t{content_hash}\n".encode())
    return digest.hexdigest()[:16]


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    encoder: Encoder,
    *,
    vector_dtype: str = "float16",
    chunk_overlap: int | None = None,
    hnsw_min_chunks: int = HNSW_MIN_CHUNKS,
    extra_dims: tuple[int, ...] = (),
    target_recall: float = DEFAULT_TARGET_RECALL,
    backend: dict | None = None,
    progress: bool = False,
) -> dict:
    """Read, chunk, encode once at full dim, and write every tier's index (and one for each of
    `extra_dims`, e.g. every Matryoshka dim for an evaluation) as a new generation; return the manifest."""
    _check_target(Path(index_dir), vector_dtype)
    started = time.perf_counter()
    documents = read_corpus(corpus)
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
    return write_index(
        index_dir, vectors, np.array([c.doc for c in chunks], dtype=np.int32), manifest,
        write_docs=lambda path: write_store(path, documents, chunks), vector_dtype=vector_dtype,
        hnsw_min_chunks=hnsw_min_chunks, extra_dims=extra_dims, target_recall=target_recall, started=started,
        backend=backend, progress=progress,
    )


def _check_target(target: Path, vector_dtype: str) -> None:
    if vector_dtype not in VECTOR_DTYPES:
        raise BadInputError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got '{vector_dtype}'")
    if target.is_file():
        raise BadInputError(f"{target} is a file, not an index folder")
    ours = (target / generations.POINTER).is_file() or (target / "manifest.json").is_file()  # format 2, 1
    leftovers = (generations.LOCK, ".tmp-")  # a lock file, and what a killed first build left
    if target.exists() and not ours and any(not p.name.startswith(leftovers) for p in target.iterdir()):
        raise BadInputError(f"{target} exists and is not a medsearch index: choose another index folder")


def write_index(
    index_dir: str | Path,
    vectors: np.ndarray,
    chunk_doc: np.ndarray,
    manifest: dict,
    *,
    write_docs: Callable[[Path], None] | None = None,
    vector_dtype: str = "float16",
    hnsw_min_chunks: int = HNSW_MIN_CHUNKS,
    extra_dims: tuple[int, ...] = (),
    started: float | None = None,
    locked: bool = False,
    stored_vectors: np.ndarray | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    backend: dict | None = None,
    progress: bool = False,
) -> dict:
    """Write full-dim normalised `vectors` (one per chunk) as an index folder, atomically.

    `manifest` brings the model and corpus fields; this adds dims, index types and counts.
    `write_docs` writes docs.db (benchmarks on synthetic vectors have none). `locked`: the caller
    already holds the writer lock (a compaction), which also passes `stored_vectors`: the rows of
    vectors.npy as they are, so that re-ranking scores do not move by a float16 rounding. `backend`:
    where the vectors go (None: the FAISS files; backends.qdrant.settings(...): a new Qdrant collection,
    the one of the generation it replaces dropped after the switch)."""
    target = Path(index_dir)
    _check_target(target, vector_dtype)
    check_target_recall(target_recall)
    started = time.perf_counter() if started is None else started
    full_dim = vectors.shape[1]
    dims = tier_dims(full_dim)
    if any(not 0 < d <= full_dim for d in extra_dims):
        raise BadInputError(f"extra dims must be between 1 and the model's {full_dim}; got {list(extra_dims)}")
    manifest = {
        "format_version": FORMAT_VERSION,
        "medsearch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **manifest,
        "full_dim": full_dim,
        "tier_dims": dims,
        "index_types": {
            str(d): "hnsw" if d == dims["fast"] and d != full_dim and len(vectors) >= hnsw_min_chunks else "flat"
            for d in sorted(set(dims.values()) | set(extra_dims))
        },
        "vector_dtype": vector_dtype,
        "chunks": len(vectors),
    }
    qdrant = backend is not None and backend.get("name") == "qdrant"
    if qdrant:
        manifest["index_types"] = {d: "qdrant" for d in manifest["index_types"]}
        manifest["backend"] = {**backend, "collection": f"{backend['collection_name']}-{uuid.uuid4().hex[:8]}"}
    else:
        manifest["faiss_factories"] = {d: FACTORIES[kind] for d, kind in manifest["index_types"].items()}
        manifest["backend"] = {"name": "faiss"}
    manifest["dead_chunks"] = 0
    with (contextlib.nullcontext() if locked else generations.writer_lock(target)):
        previous = generations.current(target)
        tmp = generations.new_folder(target)
        written = None
        try:
            if write_docs:
                write_docs(tmp / "docs.db")
                write_lexical_from_store(tmp, len(vectors))
                manifest["lexical"] = lexical.settings()
            np.save(tmp / "chunk_doc.npy", np.asarray(chunk_doc, dtype=np.int32))
            if qdrant:
                written = _write_qdrant(tmp, vectors, manifest, target_recall, progress)
            else:
                stored = (vectors if stored_vectors is None else stored_vectors).astype(vector_dtype, copy=False)
                _write_faiss(tmp, vectors, stored, manifest, target_recall)
            manifest["build_seconds"] = round(time.perf_counter() - started, 3)
            write_manifest(tmp, manifest)
            generations.commit(target, tmp)
        except BaseException:
            generations.discard(tmp)
            if written is not None and _current_collection(target) != written.collection:  # not switched to
                written.drop()
            raise
        _drop_replaced_collection(previous, manifest)
        _remove_format1_files(target)
    return manifest


def _write_faiss(tmp: Path, vectors: np.ndarray, stored: np.ndarray, manifest: dict, target_recall: float) -> None:
    """The FAISS backend's files: vectors.npy (re-ranking), a tier index per stored dim, binary codes
    and the fast tier's calibration (into `manifest`)."""
    dims, full_dim = manifest["tier_dims"], manifest["full_dim"]
    np.save(tmp / "vectors.npy", stored)
    tiers = {}  # the fast and deep tiers stay in memory for the calibration, the others are freed
    for dim_str, kind in manifest["index_types"].items():
        tier = FaissTier.build(prefix(vectors, int(dim_str)), kind)
        tier.save(tmp / f"dim{dim_str}.faiss")
        if int(dim_str) in (dims["fast"], dims["deep"]):
            tiers[int(dim_str)] = tier
    if dims["fast"] != full_dim:  # the funnel: a binary candidate stage beside the prefix one, calibrated
        binary = BinaryTier.build(vectors, BINARY_INDEX) if full_dim % 8 == 0 else None  # faiss: whole bytes
        if binary is not None:
            binary.save(tmp / BINARY_FILE)
        codes = {"binary_index": BINARY_INDEX, "binary_factory": BINARY_FACTORIES[BINARY_INDEX]} if binary else {}
        manifest["fast"] = {**codes, **calibrate_fast(vectors, stored, tiers, binary, dims, target_recall)}


def _write_qdrant(tmp: Path, vectors: np.ndarray, manifest: dict, target_recall: float, progress: bool) -> QdrantBackend:
    """A new collection holding every chunk of the generation in `tmp` (its docs.db gives the
    payloads), and the fast tier's calibration (the prefix stage, measured through Qdrant)."""
    dims, full_dim = manifest["tier_dims"], manifest["full_dim"]
    backend = QdrantBackend(manifest["backend"], full_dim, sorted(int(d) for d in manifest["index_types"]))
    backend.create()
    try:
        points = store_payloads(tmp / "docs.db")
        if len(points) != len(vectors):
            raise BadInputError(f"the qdrant backend needs a document store: {len(vectors)} vectors, {len(points)} chunks")
        backend.upsert(vectors, points, progress=progress)
        backend.index_fields(manifest.get("metadata_fields", []))
        if dims["fast"] != full_dim:
            manifest["fast"] = calibrate(vectors, deep=lambda q, c: backend.rows(q, full_dim, c),
                                         stages={"prefix": lambda q, c: backend.rows(q, dims["fast"], c)},
                                         rerank_vectors=vectors, target=target_recall)
    except BaseException:
        backend.drop()
        raise
    return backend


def _backend_of(folder: Path | None) -> dict:
    """The manifest's `backend` entry of a generation folder ({} when there is none)."""
    if folder is None or not (folder / "manifest.json").is_file():
        return {}
    return json.loads((folder / "manifest.json").read_text()).get("backend") or {}


def _current_collection(target: Path) -> str | None:
    return _backend_of(generations.current(target)).get("collection")


def _drop_replaced_collection(previous: Path | None, manifest: dict) -> None:
    """After a rebuild commits, the Qdrant collection of the generation it replaced goes (a write
    to the same index keeps its collection; another index's is never touched)."""
    old = _backend_of(previous)
    if old.get("name") == "qdrant" and old.get("collection") != manifest["backend"].get("collection"):
        with contextlib.suppress(MedsearchError):
            QdrantBackend(old, manifest["full_dim"], []).drop()


def check_target_recall(target: float) -> None:
    if not 0 < target <= 1:
        raise BadInputError(f"target recall must be above 0 and at most 1; got {target}")


def calibrate_fast(vectors: np.ndarray, stored: np.ndarray, tiers: dict[int, FaissTier], binary: BinaryTier | None,
                   dims: dict[str, int], target: float, live: np.ndarray | None = None) -> dict:
    """The fast tier's stage and candidate count for `target` recall@10 against deep (funnel.py),
    measured on the generation's own vectors (`live`: which rows are live, as Index.live gives it;
    None: every row) with its own tier indexes."""
    allowed = None if live is None else Allowed(live)
    stages = {"prefix": lambda q, n: tiers[dims["fast"]].search(prefix(q, dims["fast"]), n, allowed)[1]}
    if binary is not None:  # an index written before binary codes has the prefix stage only
        stages["binary"] = lambda q, n: binary.search(q, n, allowed)[1]
    return calibrate(vectors, deep=lambda q, n: tiers[dims["deep"]].search(q, n, allowed)[1], stages=stages,
                     rerank_vectors=stored, target=target, rows=None if live is None else allowed.rows())


def write_lexical_from_store(folder: Path, rows: int) -> None:
    """The lexical index of a generation folder, from its docs.db (dead rows: empty passages)."""
    db = sqlite_utils.Database(folder / "docs.db")
    try:
        lexical.write_lexical(folder, lexical.store_passages(db, rows))
    finally:
        db.close()


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _remove_format1_files(root: Path) -> None:
    """A format-1 index kept its files in the folder itself; once a generation replaces it, drop them."""
    if (root / "manifest.json").is_file():
        for path in root.iterdir():
            if path.is_file() and path.name not in (generations.POINTER, generations.LOCK):
                path.unlink()


@dataclass
class Index:
    """One committed generation of an index folder (`path` is the folder users name; `folder` the
    generation's). Tier indexes load lazily, so a query touches only its own tier."""

    path: Path
    manifest: dict
    folder: Path | None = None
    _faiss: dict[int, faiss.Index] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.folder = self.folder or self.path

    @property
    def full_dim(self) -> int:
        return self.manifest["full_dim"]

    @property
    def dims(self) -> list[int]:
        return sorted(int(d) for d in self.manifest["index_types"])

    @property
    def chunks(self) -> int:
        """Rows in the vectors and tier indexes, dead ones included."""
        return self.manifest["chunks"]

    @property
    def generation(self) -> int:
        return generations.number(self.folder)

    def check_dim(self, dim: int) -> None:
        if dim not in self.dims:
            stored = ", ".join(map(str, self.dims))
            raise BadInputError(f"dim {dim} is not stored in {self.path} (stored: {stored})")

    @property
    def backend_name(self) -> str:
        """Where the vectors live: `faiss` (this folder's files) or `qdrant` (a collection)."""
        return (self.manifest.get("backend") or {}).get("name", "faiss")

    @cached_property
    def backend(self) -> VectorBackend:
        """The dense search of this generation's vectors (backends/base.py)."""
        return self.qdrant if self.backend_name == "qdrant" else FaissBackend()

    @cached_property
    def qdrant(self) -> QdrantBackend:
        return QdrantBackend(self.manifest["backend"], self.full_dim, self.dims)

    @property
    def live_chunks(self) -> int:
        return self.chunks - self.manifest.get("dead_chunks", 0)

    def faiss_index(self, dim: int) -> faiss.Index:
        if dim not in self._faiss:
            self.check_dim(dim)
            self._faiss[dim] = faiss.read_index(str(self.folder / f"dim{dim}.faiss"))
        return self._faiss[dim]

    def index_type(self, dim: int) -> str:
        return self.manifest["index_types"][str(dim)]

    def tier(self, dim: int) -> FaissTier:
        """The backend's view of one stored dim: search with allowed rows, stored vectors."""
        return FaissTier(self.faiss_index(dim), self.index_type(dim))

    @property
    def fast(self) -> dict:
        """The fast tier's calibrated settings (funnel.py); empty for an index built before them."""
        return self.manifest.get("fast") or {}

    @property
    def fast_stage(self) -> str:
        return self.fast.get("stage", "prefix")

    @cached_property
    def binary(self) -> BinaryTier:
        return BinaryTier.load(self.folder / BINARY_FILE, self.fast["binary_index"])

    @cached_property
    def vectors(self) -> np.ndarray:
        return np.load(self.folder / "vectors.npy", mmap_mode="r")

    @cached_property
    def chunk_doc(self) -> np.ndarray:
        return np.load(self.folder / "chunk_doc.npy", mmap_mode="r")

    @cached_property
    def store(self) -> DocStore:
        return DocStore(self.folder / "docs.db")

    @cached_property
    def lexical(self) -> lexical.Lexical:
        if "lexical" not in self.manifest:
            raise IndexFormatError(f"{self.path} has no lexical index (it was built by an older medsearch)", self.path)
        return lexical.Lexical(self.folder)

    @cached_property
    def live(self) -> np.ndarray | None:
        """Which rows are live (bool per row), or None when every row is."""
        if not self.manifest.get("dead_chunks"):
            return None
        return self._mask(self.store.chunk_rows())

    def allowed(self, filters=None) -> np.ndarray | None:
        """Which rows a search may return (bool per row): live, and matching every filter
        (`field=value` strings or filters.Filter); None when that is every row."""
        if not filters:
            return self.live
        where, params = filter_sql(parse_filters(filters), self.manifest.get("metadata_fields", []))
        return self._mask(self.store.rows_where(where, params))  # live rows only: dead ones left docs.db

    def _mask(self, rows: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.chunks, dtype=bool)
        mask[rows] = True
        return mask

    def load(self) -> "Index":
        """Load every tier's index, the live rows and the vector map now (a service's new generation);
        for a Qdrant index, connect to its collection."""
        if self.backend_name == "qdrant":
            self.qdrant.count()  # noqa: B018 (fails now, not at the first query, when it is unreachable)
        else:
            for dim in self.dims:
                self.faiss_index(dim)
            self.vectors  # noqa: B018 (cached on first use)
            if self.fast_stage == "binary":
                self.binary  # noqa: B018
        self.live, self.chunk_doc  # noqa: B018
        if "lexical" in self.manifest:
            self.lexical  # noqa: B018
        return self

    def close(self) -> None:
        """Let go of the generation's files: SQLite connections, tier indexes, memory maps (a
        searcher that has moved to a newer generation; the files of a pruned one free their space)."""
        store = self.__dict__.pop("store", None)
        if store is not None:
            store.close()
        self._faiss.clear()
        for name in ("vectors", "chunk_doc", "binary", "lexical", "live"):
            self.__dict__.pop(name, None)

    def files(self) -> dict[str, int]:
        """Size in bytes of each file of the generation."""
        files = {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()}
        lexical_dir = self.folder / lexical.LEXICAL_DIR
        if lexical_dir.is_dir():
            files[lexical.LEXICAL_DIR + "/"] = sum(p.stat().st_size for p in lexical_dir.iterdir())
        return files


def index_exists(index_dir: str | Path) -> bool:
    """Whether the folder holds a committed index (of this format or another)."""
    return generations.current(Path(index_dir)) is not None


def open_index(index_dir: str | Path) -> Index:
    """The index folder's current generation."""
    path = Path(index_dir)
    folder = generations.current(path)
    if folder is None:
        if (path / "manifest.json").is_file():
            raise IndexFormatError(f"{path} has index format 1, this medsearch ({__version__}) reads format {FORMAT_VERSION}", path)
        if path.exists():
            raise IndexNotFoundError(f"{path} is not a medsearch index (no {generations.POINTER} file)", path)
        raise IndexNotFoundError(f"no index at {path}", path)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: {folder.name} has no manifest.json", path) from None
    except json.JSONDecodeError as err:
        raise IndexFormatError(f"{manifest_path}: unreadable manifest ({err.msg})", path) from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format {version}, this medsearch ({__version__}) reads format {FORMAT_VERSION}", path
        )
    return Index(path=path, manifest=manifest, folder=folder)


def model_fields(encoder: Encoder) -> dict:
    """The manifest's record of the encoder: which model, its fingerprint and the runtime that encoded."""
    return {"spec": encoder.spec, "name": encoder.name, "fingerprint": encoder.fingerprint, "weights": encoder.weights,
            "runtime": encoder.runtime, "precision": encoder.precision}


def index_encoder(index: Index, model: str | None = None, device: str | None = None, runtime: str | None = None) -> Encoder:
    """The encoder for queries and writes to an index: its model, and the runtime it was built with
    (or an installed one of the same precision) unless `runtime` names one."""
    return Encoder(model or index.manifest["model"]["spec"], device=device,
                   runtime=runtime or runtime_for_index(index.manifest["model"].get("runtime")))


def same_model(index: Index, encoder: Encoder) -> bool:
    """Whether the encoder's vectors match the index's (same weights, same precision)."""
    model = index.manifest["model"]
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
    model = index.manifest["model"]
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
