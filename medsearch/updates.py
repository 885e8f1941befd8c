"""Writes to a living index: upsert documents by content, delete them, compact dead rows away.

Every write holds the index's writer lock and commits one new generation (generations.py), so
readers keep answering from the previous one until the switch and a crash leaves it whole.

- upsert: a document whose id exists with the same content hash costs nothing; a changed one is
  re-chunked and re-encoded and its old chunks die; new ones are added. Only new and changed text
  is encoded, and the model loads only if there is some.
- delete: the documents and their chunks leave docs.db; their rows in the vectors and tier
  indexes are dead, excluded inside every search (Index.allowed) until a compaction.
- compact: rewrites the generation from the stored vectors of the live rows (no encoding); runs
  by itself after a write that leaves more than AUTO_COMPACT_DEAD_FRACTION of the rows dead.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import sqlite_utils

from medsearch import generations
from medsearch.backends.faiss import BinaryTier, FaissTier
from medsearch.backends.qdrant import store_payloads
from medsearch.corpus import Document, read_corpus
from medsearch.encoder import Encoder
from medsearch.errors import BadInputError, IndexFormatError, IndexNotFoundError, MedsearchError, NotFoundError
from medsearch.index import (
    BINARY_FILE,
    HNSW_MIN_CHUNKS,
    Index,
    calibrate_fast,
    check_target_recall,
    build_index,
    check_model,
    corpus_fingerprint,
    open_index,
    prefix,
    same_model,
    write_index,
    write_lexical_from_store,
    write_manifest,
)
from medsearch import lexical
from medsearch.funnel import DEFAULT_TARGET_RECALL
from medsearch.lexical import LEXICAL_DIR
from medsearch.store import counts, index_metadata_keys, insert_chunks, insert_documents, metadata_keys, write_store

# Past this share of dead rows a write compacts the index (dead rows cost search time: the
# selector skips them inside faiss, but flat indexes still scan them; bench/living.py measures it).
AUTO_COMPACT_DEAD_FRACTION = 0.3
# Qdrant: the documents whose old points a generation's write deletes after its switch (manifest key)
PENDING_DELETE = "qdrant_pending_delete"
log = logging.getLogger("medsearch")
EncoderSource = Encoder | Callable[[], Encoder]


@dataclass
class WriteReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    compacted: bool = False
    moved_to: str | None = None  # a FAISS index's vectors moved to this backend (nothing encoded)
    generation: int | None = None  # None: nothing to write, no new generation
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.manifest
        head = (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, deleted {self.deleted}"
                + ("; compacted" if self.compacted else "")
                + (f"; vectors moved to {self.moved_to}, nothing re-encoded" if self.moved_to else ""))
        where = f"generation {self.generation}" if self.generation is not None else "nothing to write"
        return (f"{head} -> {where}: {m.get('documents', 0)} documents, {m.get('chunks', 0)} chunk rows "
                f"({m.get('dead_chunks', 0)} dead), {self.seconds:.1f}s")


def upsert(index_dir: str | Path, documents: Iterable[Document] | str | Path, encoder: EncoderSource, *,
           delete_missing: bool = False, progress: bool = False, target_recall: float | None = None) -> WriteReport:
    """Add new documents and replace changed ones (by id and content hash); with `delete_missing`,
    also delete the documents that `documents` does not have (the index then mirrors a corpus).
    `documents`: Document records, or a corpus path as `medsearch index` reads it. `encoder`: an
    Encoder, or a function that loads one (called only when there is text to encode). A write that
    adds rows measures the fast tier's candidate count again (for `target_recall`, default the
    index's own), as does a new `target_recall` alone."""
    started = time.perf_counter()
    docs = read_corpus(documents) if isinstance(documents, (str, Path)) else list(documents)
    root = Path(index_dir)
    with _locked_base(root) as base:
        hashes = base.store.hashes()
        new = [d for d in docs if d.id not in hashes]
        changed = [d for d in docs if d.id in hashes and hashes[d.id] != d.content_hash]
        gone = set(hashes) - {d.id for d in docs} if delete_missing else set()
        report = WriteReport(added=len(new), updated=len(changed), unchanged=len(docs) - len(new) - len(changed),
                             deleted=len(gone), manifest=base.manifest)
        if target_recall is not None:
            check_target_recall(target_recall)
        retarget = (target_recall is not None and target_recall != base.fast.get("target_recall")
                    and base.backend_name == "faiss")  # Qdrant: the build's calibration stays (docs/guides/scale-out.md)
        if new or changed or gone or retarget:
            _write(root, base, new + changed, [d.id for d in changed] + sorted(gone), encoder, progress, report,
                   target_recall if target_recall is not None else base.fast.get("target_recall", DEFAULT_TARGET_RECALL))
    report.seconds = time.perf_counter() - started
    return report


def delete(index_dir: str | Path, ids: Iterable[str]) -> WriteReport:
    """Delete documents by id from every tier at once; unknown ids are an error (nothing is written)."""
    started = time.perf_counter()
    ids = list(dict.fromkeys(str(i) for i in ids))
    if not ids:
        raise BadInputError("no document ids given")
    root = Path(index_dir)
    with _locked_base(root) as base:
        hashes = base.store.hashes()
        unknown = [i for i in ids if i not in hashes]
        if unknown:
            shown = ", ".join(f"'{i}'" for i in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise NotFoundError(f"no document with id {shown} in {root}; nothing was deleted")
        report = WriteReport(deleted=len(ids), manifest=base.manifest)
        _write(root, base, [], ids, None, False, report)
    report.seconds = time.perf_counter() - started
    return report


def compact(index_dir: str | Path) -> WriteReport:
    """Rewrite the index without its dead rows, from the stored vectors (nothing is encoded); an index
    built before the fast tier's calibration gets its binary codes and candidate count this way."""
    started = time.perf_counter()
    root = Path(index_dir)
    with _locked_base(root) as base:
        report = WriteReport(manifest=base.manifest)
        funnel_missing = base.manifest["tier_dims"]["fast"] != base.full_dim and (
            not base.fast or (base.full_dim % 8 == 0 and not (base.folder / BINARY_FILE).is_file()))
        # Qdrant deletes the points of dead rows after each write (a failed delete is retried here):
        # nothing to rewrite there
        retry_pending_delete(base)
        live = len(base.store.chunk_rows()) if base.backend_name == "faiss" else 0
        if live and (base.manifest.get("dead_chunks") or funnel_missing):  # an index from before the funnel gains it here
            _compact(root, base, report)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def _locked_base(root: Path):
    """The current generation, under the writer lock (another writer may have committed before the
    lock was taken), closed after the write: its SQLite connection is not left to the collector."""
    open_index(root)  # no index: fail before the lock file is created
    with generations.writer_lock(root):
        base = open_index(root)
        try:
            yield base
        finally:
            base.close()


def _compact_current(root: Path, report: WriteReport, **options) -> None:
    base = open_index(root)
    try:
        _compact(root, base, report, **options)
    finally:
        base.close()


def sync(corpus: str | Path, index_dir: str | Path, encoder: Encoder, *, rebuild: bool = False,
         progress: bool = False, **build_options) -> WriteReport:
    """`medsearch index`: make the index mirror the corpus. An existing index of the same model
    (and chunking) is updated in place, encoding only new and changed documents; otherwise, or
    with `rebuild`, the corpus is encoded whole into a new generation."""
    started = time.perf_counter()
    try:
        base = open_index(index_dir)
    except (IndexNotFoundError, IndexFormatError):
        base = None
    backend = build_options.get("backend")
    same = not rebuild and base is not None and _same_vectors(base, encoder, build_options)
    if same and backend is not None and not same_backend(base.manifest.get("backend"), backend):
        same = base.backend_name == "faiss"
        if same:  # the stored vectors move to the other backend (a new generation): nothing is encoded
            with generations.writer_lock(Path(index_dir)):
                _compact_current(Path(index_dir), WriteReport(), backend=backend, progress=progress)
    if not same:
        if backend is None and base is not None:  # a rebuild keeps the index's backend
            backend = base.manifest.get("backend")
        options = {**build_options, "backend": backend}
        manifest = build_index(corpus, index_dir, encoder, progress=progress, **options)
        return WriteReport(added=manifest["documents"], generation=open_index(index_dir).generation,
                           manifest=manifest, seconds=time.perf_counter() - started)
    report = upsert(index_dir, corpus, encoder, delete_missing=True, progress=progress,
                    target_recall=build_options.get("target_recall"))
    if backend is not None and base.backend_name != backend["name"]:
        moved = open_index(index_dir)
        report.moved_to, report.manifest = backend["name"], moved.manifest
        report.generation = report.generation or moved.generation
    return report


def _same_vectors(base: Index, encoder: Encoder, build_options: dict) -> bool:
    """Whether `base` holds the vectors a build with this encoder and these options would make."""
    return (same_model(base, encoder)
            and build_options.get("vector_dtype", base.manifest["vector_dtype"]) == base.manifest["vector_dtype"]
            and build_options.get("chunk_overlap") in (None, base.manifest.get("chunk_overlap")))


def same_backend(current: dict | None, wanted: dict) -> bool:
    """Whether an index's backend (its manifest's entry) is the one `wanted` names (the collection
    name's build suffix aside)."""
    current = {key: value for key, value in (current or {"name": "faiss"}).items() if key != "collection"}
    return current == {key: value for key, value in wanted.items() if key != "collection"}


def _write(root: Path, base: Index, write: list[Document], remove: list[str], encoder: EncoderSource | None,
           progress: bool, report: WriteReport, target_recall: float | None = None) -> None:
    """One new generation: `remove` (ids) leave docs.db, `write` documents are (re)inserted with
    new chunk rows appended to the vectors and every tier index (and the binary codes); with new
    rows or a new `target_recall`, the fast tier is calibrated again on the live rows."""
    vectors, chunks = None, []
    if write:
        encoder = encoder if isinstance(encoder, Encoder) else encoder()
        check_model(base, encoder)
        chunks = encoder.chunk(write, base.manifest.get("chunk_overlap"))
        vectors = encoder.encode_passages([c.passage(write[c.doc].title) for c in chunks], progress=progress)
    tmp = generations.new_folder(root)
    try:
        shutil.copyfile(base.folder / "docs.db", tmp / "docs.db")
        db = sqlite_utils.Database(tmp / "docs.db")
        with db.conn:
            first_ordinal = db.execute("SELECT coalesce(max(ordinal), -1) + 1 FROM documents").fetchone()[0]
            for start in range(0, len(remove), 500):
                batch = remove[start:start + 500]
                marks = ",".join("?" * len(batch))
                db.execute(f"DELETE FROM chunks WHERE doc IN (SELECT ordinal FROM documents WHERE id IN ({marks}))", batch)
                db.execute(f"DELETE FROM documents WHERE id IN ({marks})", batch)
            if write:
                insert_documents(db, write, first_ordinal)
                insert_chunks(db, chunks, first_row=base.chunks, doc_offset=first_ordinal)
        index_metadata_keys(db)
        documents, live_chunks = counts(db)
        fingerprint = corpus_fingerprint(db.execute("SELECT id, content_hash FROM documents ORDER BY ordinal"))
        fields = metadata_keys(db)
        db.close()
        binary = base.folder / BINARY_FILE
        held: dict[int, FaissTier] = {}  # the fast and deep tiers as written: the calibration reuses them
        codes = None
        if vectors is None:  # a delete: the rows stay, so chunk_doc and BM25 do too (hard links; dead rows masked out)
            _link(base.folder / "chunk_doc.npy", tmp / "chunk_doc.npy")
            _link_lexical(base, tmp)
        else:
            np.save(tmp / "chunk_doc.npy", np.concatenate(
                [base.chunk_doc, first_ordinal + np.array([c.doc for c in chunks], dtype=np.int32)]))
            write_lexical_from_store(tmp, base.chunks + len(chunks))
        qdrant = base.backend_name == "qdrant"
        if qdrant:  # new points before the switch (rows past base.chunks: unseen until then), old ones after
            retry_pending_delete(base)  # what the write before this one could not delete after its switch
            base.qdrant.delete_rows_from(base.chunks)  # a write that died before its switch left these
            if vectors is not None:
                base.qdrant.upsert(vectors, store_payloads(tmp / "docs.db", first_row=base.chunks), progress=progress)
                base.qdrant.index_fields(sorted(set(fields) - set(base.manifest.get("metadata_fields", []))))
        elif vectors is None:  # the vectors and tier files stay too (never written again)
            for name in ["vectors.npy", *(f"dim{d}.faiss" for d in base.dims), *([BINARY_FILE] if binary.is_file() else [])]:
                _link(base.folder / name, tmp / name)
        else:
            np.save(tmp / "vectors.npy", np.concatenate([base.vectors, vectors.astype(base.vectors.dtype)]))
            for dim in base.dims:
                tier = FaissTier.load(base.folder / f"dim{dim}.faiss", base.index_type(dim))
                tier.add(prefix(vectors, dim))
                tier.save(tmp / f"dim{dim}.faiss")
                if dim in (base.manifest["tier_dims"]["fast"], base.full_dim):
                    held[dim] = tier
            if binary.is_file():
                codes = base.binary
                codes.add(vectors)
                codes.save(tmp / BINARY_FILE)
        total = base.chunks + len(chunks)
        manifest = {
            **base.manifest,
            "documents": documents,
            "chunks": total,
            "dead_chunks": total - live_chunks,
            "corpus_fingerprint": fingerprint,
            "metadata_fields": fields,
            **({"lexical": lexical.settings()} if (tmp / LEXICAL_DIR).is_dir() else {}),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest.pop(PENDING_DELETE, None)
        if qdrant and remove:  # due after the switch; recorded so that the next write retries a failed one
            manifest[PENDING_DELETE] = {"ids": list(remove), "below_row": base.chunks}
        if (vectors is not None or target_recall != base.fast.get("target_recall")) and target_recall is not None and not qdrant:
            manifest["fast"] = _recalibrate(tmp, manifest, base, target_recall, held, codes)
        write_manifest(tmp, manifest)
        committed = generations.commit(root, tmp)
    except BaseException:
        generations.discard(tmp)
        raise
    report.generation, report.manifest = generations.number(committed), manifest
    if qdrant:  # the replaced and deleted versions' points go now (dead rows here, skipped until then)
        try:
            base.qdrant.delete_documents(remove, below_row=base.chunks)
        except MedsearchError as err:  # committed: the points left are dead rows, skipped; retried later
            log.warning("the write is committed, but the old points of %d documents stay in the Qdrant collection "
                        "for now (%s); the next write or compact deletes them", len(remove), err)
        return  # the collection keeps no dead rows: nothing to compact
    if total and live_chunks and manifest["dead_chunks"] / total > AUTO_COMPACT_DEAD_FRACTION:  # nothing left: nothing to rewrite
        _compact_current(root, report)


def retry_pending_delete(index: Index) -> None:
    """Delete the points that the write of `index`'s generation had to delete after its switch (again:
    deleting is idempotent, and a failed delete is only retried this way)."""
    pending = index.manifest.get(PENDING_DELETE)
    if index.backend_name == "qdrant" and pending:
        index.qdrant.delete_documents(pending["ids"], below_row=pending["below_row"])


def _recalibrate(folder: Path, manifest: dict, base: Index, target: float, tiers: dict[int, FaissTier],
                 codes: BinaryTier | None) -> dict | None:
    """The fast tier's settings for a written generation folder, measured on its live rows, with the
    tiers and binary codes `_write` still holds (the files are read only when it holds none: a new
    target alone, whose files are links to the previous generation's)."""
    dims = manifest["tier_dims"]
    if dims["fast"] == manifest["full_dim"]:
        return None
    written = Index(path=base.path, manifest=manifest, folder=folder)
    if codes is None and (folder / BINARY_FILE).is_file():
        codes = BinaryTier.load(folder / BINARY_FILE, base.fast["binary_index"])
    tiers = {dim: tiers.get(dim) or written.tier(dim) for dim in (dims["fast"], dims["deep"])}
    try:
        live = written.live
    finally:
        written.store.close()
    settings = calibrate_fast(written.vectors, written.vectors, tiers, codes, dims, target, live)
    return {**({key: base.fast[key] for key in ("binary_index", "binary_factory")} if codes else {}), **settings}


def _compact(root: Path, base: Index, report: WriteReport, backend: dict | None = None, progress: bool = False) -> None:
    """Rewrite a FAISS index's live rows from its stored vectors as a new generation (no encoding):
    in FAISS again, or in `backend` (a move to Qdrant)."""
    rows = np.sort(base.store.chunk_rows())
    ordinals, documents = {}, []
    for ordinal, doc in base.store.documents():
        ordinals[ordinal] = len(documents)
        documents.append(doc)
    chunks = list(base.store.chunks())
    for chunk in chunks:  # document ordinals renumbered 0, 1, ... as write_store numbers them
        chunk.doc = ordinals[chunk.doc]
    keep = {"model", "query_prefix", "passage_prefix", "max_tokens", "corpus", "chunk_overlap", "encode_seconds", "created"}
    manifest = {key: value for key, value in base.manifest.items() if key in keep}
    manifest.update(documents=len(documents), corpus_fingerprint=corpus_fingerprint((d.id, d.content_hash) for d in documents),
                    metadata_fields=sorted({k for d in documents for k in d.metadata}),
                    compacted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    extra = tuple(d for d in base.dims if d not in set(base.manifest["tier_dims"].values()))
    hnsw_at = 0 if base.index_type(base.manifest["tier_dims"]["fast"]) == "hnsw" else HNSW_MIN_CHUNKS
    written = write_index(root, _full_vectors(base, rows),
                          np.array([c.doc for c in chunks], dtype=np.int32), manifest,
                          write_docs=lambda path: write_store(path, documents, chunks),
                          vector_dtype=base.manifest["vector_dtype"], hnsw_min_chunks=hnsw_at, extra_dims=extra, locked=True,
                          stored_vectors=np.asarray(base.vectors[rows]),
                          target_recall=base.fast.get("target_recall", DEFAULT_TARGET_RECALL), backend=backend,
                          progress=progress)
    report.compacted, report.manifest, report.generation = True, written, open_index(root).generation


def _full_vectors(base: Index, rows: np.ndarray) -> np.ndarray:
    """The float32 full-dim vectors of `rows`: read back from the full-dim flat index, which holds
    them exactly (vectors.npy may be float16), so a compacted index answers with the same scores."""
    if base.index_type(base.full_dim) == "flat":
        return base.tier(base.full_dim).vectors(rows)
    return np.asarray(base.vectors[rows], dtype=np.float32)


def _link_lexical(base: Index, tmp: Path) -> None:
    if (base.folder / LEXICAL_DIR).is_dir():
        (tmp / LEXICAL_DIR).mkdir()
        for path in (base.folder / LEXICAL_DIR).iterdir():
            _link(path, tmp / LEXICAL_DIR / path.name)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)
