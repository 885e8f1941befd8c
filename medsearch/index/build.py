"""The full build of an index folder: read, chunk and encode a corpus once, and write every tier as
a new committed generation (writer.py). A compaction (writes.py) writes its generation the same
way, from the stored vectors of the live rows. The folder's files: layout.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.documents.corpus import Document, read_corpus
from medsearch.encoding.chunking import passage
from medsearch.encoding.encoder import Encoder
from medsearch.errors import BadInputError
from medsearch.index import generations, layout, lexical
from medsearch.index.backends import backend_class
from medsearch.index.backends.funnel import DEFAULT_TARGET_RECALL
from medsearch.index.folder import VECTOR_DTYPES
from medsearch.index.manifest import FORMAT_VERSION, Manifest, tier_dims
from medsearch.index.model_check import model_fields
from medsearch.index.store import corpus_fingerprint, write_store
from medsearch.index.writer import GenerationWriter
from medsearch.timestamps import utc_timestamp
from medsearch.version import __version__

__all__ = ["BuildOptions", "build_index", "check_target_recall", "write_index"]


@dataclass(frozen=True)
class BuildOptions:
    """How a generation's vectors and lexical index are built (write_index).

    `vector_dtype`: how the stored matrix holds them; `extra_dims`: dims stored beside the tiers' (e.g. every
    Matryoshka dim for an evaluation); `target_recall`: the fast tier's calibration target;
    `backend`: where the vectors go (None: the FAISS files; backends.qdrant.settings(...): a new
    Qdrant collection); `analysis`: the lexical index's (None: English)."""

    vector_dtype: str = "float16"
    extra_dims: tuple[int, ...] = ()
    target_recall: float = DEFAULT_TARGET_RECALL
    backend: dict | None = None
    analysis: lexical.Analysis | None = None
    progress: bool = False


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    encoder: Encoder,
    *,
    vector_dtype: str = "float16",
    chunk_overlap: int | None = None,
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
    options = BuildOptions(vector_dtype=vector_dtype, extra_dims=extra_dims,
                           target_recall=target_recall, backend=backend, analysis=analysis, progress=progress)
    return write_index(index_dir, vectors, np.array([c.doc for c in chunks], dtype=np.int32), manifest, options,
                       write_docs=lambda path: write_store(path, documents, chunks), started=started)


def _check_target(target: Path, vector_dtype: str) -> None:
    if vector_dtype not in VECTOR_DTYPES:
        raise BadInputError(f"vector dtype must be one of {', '.join(VECTOR_DTYPES)}; got '{vector_dtype}'")
    if target.is_file():
        raise BadInputError(f"{target} is a file, not an index folder")
    ours = (target / layout.POINTER).is_file() or (target / layout.MANIFEST).is_file()  # format 2, 1
    if not ours and generations.holds_other_files(target):
        raise BadInputError(f"{target} exists and is not a medsearch index: choose another index folder")


def write_index(
    index_dir: str | Path,
    vectors: np.ndarray,
    chunk_doc: np.ndarray,
    manifest: dict,
    options: BuildOptions | None = None,
    *,
    write_docs: Callable[[Path], None] | None = None,
    started: float | None = None,
    locked: bool = False,
    stored_vectors: np.ndarray | None = None,
) -> dict:
    """Write full-dim normalised `vectors` (one per chunk) as an index folder, atomically.

    `manifest` brings the model and corpus fields; this adds dims and counts, and the backend adds
    its own (index types, calibration). `options`: how the vectors and the lexical index are built
    (BuildOptions). `write_docs` writes the document store (benchmarks on synthetic vectors have none).
    `locked`: the caller already holds the writer lock (a compaction), which also passes
    `stored_vectors`: the stored rows as they are, so that re-ranking scores do not move by a
    float16 rounding. What the generation it replaces kept outside the folder (a Qdrant collection)
    goes after the switch."""
    options = options or BuildOptions()
    target = Path(index_dir)
    _check_target(target, options.vector_dtype)
    check_target_recall(options.target_recall)
    started = time.perf_counter() if started is None else started
    full_dim = vectors.shape[1]
    dims = tier_dims(full_dim)
    extra_dims = options.extra_dims
    if any(not 0 < d <= full_dim for d in extra_dims):
        raise BadInputError(f"extra dims must be between 1 and the model's {full_dim}; got {list(extra_dims)}")
    manifest = Manifest({
        "format_version": FORMAT_VERSION,
        "medsearch_version": __version__,
        "created": utc_timestamp(),
        **manifest,
        "full_dim": full_dim,
        "tier_dims": dims,
        "index_types": {str(d): None for d in sorted(set(dims.values()) | set(extra_dims))},  # the backend's kinds
        "vector_dtype": options.vector_dtype,
        "chunks": len(vectors),
    })
    settings = options.backend or {"name": "faiss"}
    backend_type = backend_class(settings["name"])
    manifest["dead_chunks"] = 0
    # (a compaction checked its base whole first: derived=False)
    with GenerationWriter(target, lock=not locked, derived=False, replaces=True) as gen:
        if write_docs:
            write_docs(gen.folder / layout.DOCS)
            analysis = options.analysis or lexical.Analysis()
            lexical.write_from_store(gen.folder, len(vectors), analysis)
            manifest["lexical"] = lexical.settings(analysis)
        np.save(gen.folder / layout.CHUNK_DOC, np.asarray(chunk_doc, dtype=np.int32))
        gen.written = backend_type.build(gen.folder, vectors, manifest, settings=settings, stored=stored_vectors,
                                         target_recall=options.target_recall, progress=options.progress)
        manifest["build_seconds"] = round(time.perf_counter() - started, 3)
        gen.commit(manifest)
    return manifest


def check_target_recall(target: float) -> None:
    if not 0 < target <= 1:
        raise BadInputError(f"target recall must be above 0 and at most 1; got {target}")
