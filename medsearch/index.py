"""The index folder: build it atomically from one encoding pass, open it, refuse a mismatched one.

Layout of `indexes/<name>/` (see DESIGN.md):
  manifest.json   written last: a folder without it is not an index
  docs.db         documents, chunks, FTS5 (store.py)
  vectors.npy     full-dim L2-normalised vectors (float16 by default), memory-mapped for re-ranking
  chunk_doc.npy   document ordinal of each chunk row (collapses chunk hits to documents)
  dim{N}.faiss    one inner-product index per tier dim over renormalised prefixes; ids = chunk rows
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from medsearch import __version__
from medsearch.chunking import chunk_documents
from medsearch.corpus import Document, read_corpus
from medsearch.encoder import Encoder
from medsearch.errors import BadInputError, IndexFormatError, IndexNotFoundError, ModelMismatchError
from medsearch.store import DocStore, write_store

FORMAT_VERSION = 1
DEFAULT_INDEX = Path("indexes") / "default"
TIERS = ("fast", "light", "standard", "deep")
TIER_TARGET_DIMS = {"fast": 64, "light": 128, "standard": 512}
# Above this many chunks the fast tier's 64-dim candidate index is HNSW instead of exact flat.
HNSW_MIN_CHUNKS = 200_000
HNSW_M = 32
VECTOR_DTYPES = ("float16", "float32")


def tier_dims(full_dim: int) -> dict[str, int]:
    """Tier -> prefix dim for a model of `full_dim` dims (never above the model's own size)."""
    dims = {tier: min(target, full_dim) for tier, target in TIER_TARGET_DIMS.items()}
    dims["deep"] = full_dim
    return dims


def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dims of each vector, renormalised: the Matryoshka embedding at that dim."""
    out = np.array(vectors[:, :dim], dtype=np.float32, order="C")  # always a copy: normalised in place
    faiss.normalize_L2(out)
    return out


def build_faiss(vectors: np.ndarray, kind: str) -> faiss.Index:
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    else:
        raise BadInputError(f"unknown index type '{kind}' (use flat or hnsw)")
    index.add(vectors)
    return index


def corpus_fingerprint(documents: list[Document]) -> str:
    digest = hashlib.sha256()
    for d in documents:
        digest.update(f"{d.id}\t{d.content_hash}\n".encode())
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
    progress: bool = False,
) -> dict:
    """Read, chunk, encode once at full dim, and write every tier's index (and one for each of
    `extra_dims`, e.g. every Matryoshka dim for an evaluation); return the manifest."""
    _check_target(Path(index_dir), vector_dtype)
    started = time.perf_counter()
    documents = read_corpus(corpus)
    chunks = chunk_documents(documents, encoder.tokenizer, encoder.max_tokens, encoder.profile.passage_prefix, chunk_overlap)
    passages = [c.passage(documents[c.doc].title) for c in chunks]
    vectors = encoder.encode_passages(passages, progress=progress)
    manifest = {
        "model": {"spec": encoder.spec, "name": encoder.name, "fingerprint": encoder.fingerprint},
        "query_prefix": encoder.profile.query_prefix,
        "passage_prefix": encoder.profile.passage_prefix,
        "max_tokens": encoder.max_tokens,
        "documents": len(documents),
        "corpus": str(corpus),
        "corpus_fingerprint": corpus_fingerprint(documents),
        "encode_seconds": round(time.perf_counter() - started, 3),
    }
    return write_index(
        index_dir, vectors, np.array([c.doc for c in chunks], dtype=np.int32), manifest,
        write_docs=lambda path: write_store(path, documents, chunks), vector_dtype=vector_dtype,
        hnsw_min_chunks=hnsw_min_chunks, extra_dims=extra_dims, started=started,
    )


def _check_target(target: Path, vector_dtype: str) -> None:
    if vector_dtype not in VECTOR_DTYPES:
        raise BadInputError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got '{vector_dtype}'")
    if target.exists() and not (target / "manifest.json").is_file() and any(target.iterdir()):
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
) -> dict:
    """Write full-dim normalised `vectors` (one per chunk) as an index folder, atomically.

    `manifest` brings the model and corpus fields; this adds dims, index types and counts.
    `write_docs` writes docs.db (benchmarks on synthetic vectors have none)."""
    target = Path(index_dir)
    _check_target(target, vector_dtype)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if write_docs:
            write_docs(tmp / "docs.db")
        np.save(tmp / "vectors.npy", vectors.astype(vector_dtype, copy=False))
        np.save(tmp / "chunk_doc.npy", np.asarray(chunk_doc, dtype=np.int32))
        for dim_str, kind in manifest["index_types"].items():
            faiss.write_index(build_faiss(prefix(vectors, int(dim_str)), kind), str(tmp / f"dim{dim_str}.faiss"))
        manifest["build_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _remove_stale_temporaries(target: Path) -> None:
    """Leftovers of a killed build (`.NAME.tmp-*`, `.NAME.old-*`) are never loaded; clear them."""
    for stale in target.parent.glob(f".{target.name}.*-*"):
        if stale.is_dir() and (".tmp-" in stale.name or ".old-" in stale.name):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished build over the old index; the old one stays loadable until that moment."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Index:
    """An opened index folder. Tier indexes load lazily, so a query touches only its own tier."""

    path: Path
    manifest: dict
    _faiss: dict[int, faiss.Index] = field(default_factory=dict, repr=False)

    @property
    def full_dim(self) -> int:
        return self.manifest["full_dim"]

    @property
    def dims(self) -> list[int]:
        return sorted(int(d) for d in self.manifest["index_types"])

    @property
    def chunks(self) -> int:
        return self.manifest["chunks"]

    def faiss_index(self, dim: int) -> faiss.Index:
        if dim not in self._faiss:
            if dim not in self.dims:
                stored = ", ".join(map(str, self.dims))
                raise BadInputError(f"dim {dim} is not stored in {self.path} (stored: {stored})")
            self._faiss[dim] = faiss.read_index(str(self.path / f"dim{dim}.faiss"))
        return self._faiss[dim]

    def index_type(self, dim: int) -> str:
        return self.manifest["index_types"][str(dim)]

    @cached_property
    def vectors(self) -> np.ndarray:
        return np.load(self.path / "vectors.npy", mmap_mode="r")

    @cached_property
    def chunk_doc(self) -> np.ndarray:
        return np.load(self.path / "chunk_doc.npy", mmap_mode="r")

    @cached_property
    def store(self) -> DocStore:
        return DocStore(self.path / "docs.db")

    def files(self) -> dict[str, int]:
        """Size in bytes of each file in the folder."""
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}


def open_index(index_dir: str | Path) -> Index:
    path = Path(index_dir)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        if path.exists():
            raise IndexNotFoundError(f"{path} is not a medsearch index (no manifest.json)", path)
        raise IndexNotFoundError(f"no index at {path}", path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise IndexFormatError(f"{manifest_path}: unreadable manifest ({err.msg})", path) from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format {version}, this medsearch ({__version__}) reads format {FORMAT_VERSION}", path
        )
    return Index(path=path, manifest=manifest)


def check_model(index: Index, encoder: Encoder) -> None:
    """Refuse to search an index with vectors from another model."""
    model = index.manifest["model"]
    if encoder.fingerprint != model["fingerprint"] or encoder.dim != index.full_dim:
        raise ModelMismatchError(
            f"{index.path} was built with model '{model['name']}' (fingerprint {model['fingerprint']}), "
            f"not '{encoder.name}' (fingerprint {encoder.fingerprint}): its vectors cannot be searched with that model",
            index.path, encoder.spec,
        )
