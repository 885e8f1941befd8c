"""Writes to a living index: upsert documents by content, delete them, compact dead rows away.

Every write holds the index's writer lock and commits one new generation (generations.py), so
readers keep answering from the previous one until the switch and a crash leaves it whole.

- upsert: a document whose id exists with the same content hash costs nothing; a changed one is
  re-chunked and re-encoded and its old chunks die; new ones are added. Only new and changed text
  is encoded, and the model loads only if there is some.
- delete: the documents and their chunks leave the document store; their rows in the vectors and tier
  indexes are dead, excluded inside every search (Index.allowed) until a compaction.
- compact: rewrites the generation from the stored vectors of the live rows (no encoding); runs
  by itself after a write that leaves more than AUTO_COMPACT_DEAD_FRACTION of the rows dead.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from medsearch.documents.corpus import (
    Corpus,
    Document,
    load_corpus,
    normalised_ids,
    read_corpus,
)
from medsearch.encoding.encoder import Encoder
from medsearch.errors import (
    BadInputError,
    IndexFormatError,
    IndexNotFoundError,
    MedsearchError,
    NotFoundError,
)
from medsearch.index import checksums, generations, layout, lexical
from medsearch.index.backends.funnel import DEFAULT_TARGET_RECALL, needs_calibration
from medsearch.index.build import (
    BuildOptions,
    build_index,
    check_target_recall,
    write_index,
)
from medsearch.index.folder import Index, open_index
from medsearch.index.integrity import check_whole
from medsearch.index.manifest import Manifest
from medsearch.index.model_check import check_model, same_model
from medsearch.index.store import corpus_fingerprint, write_change, write_store
from medsearch.index.writer import GenerationWriter
from medsearch.timestamps import utc_timestamp
from medsearch.validation import normal_id

# Past this share of dead rows a write compacts the index (dead rows cost search time: the
# selector skips them inside faiss, but flat indexes still scan them; bench/living.py measures it).
AUTO_COMPACT_DEAD_FRACTION = 0.3
# Manifest entries that only change how the index is searched: `configure` sets them, writes and
# compactions carry them over
CONFIGURABLE = {"reranker", "search_defaults"}
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
    # Seconds per phase of the write (model, chunk + encode, store, lexical, vectors, calibrate, commit):
    # where a write's time goes (bench/startup.py)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def summary(self) -> str:
        m = self.manifest
        head = (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, deleted {self.deleted}"
                + ("; compacted" if self.compacted else "")
                + (f"; vectors moved to {self.moved_to}, nothing re-encoded" if self.moved_to else ""))
        where = f"generation {self.generation}" if self.generation is not None else "nothing to write"
        return (f"{head} -> {where}: {m.get('documents', 0)} documents, {m.get('chunks', 0)} chunk rows "
                f"({m.get('dead_chunks', 0)} dead), {self.seconds:.1f}s")


def upsert(index_dir: str | Path, documents: Iterable[Document] | str | Path, encoder: EncoderSource, *,
           delete_missing: bool = False, progress: bool = False, target_recall: float | None = None,
           keep: Iterable[str] = ()) -> WriteReport:
    """Add new documents and replace changed ones (by id and content hash); with `delete_missing`,
    also delete the documents that `documents` does not have (the index then mirrors a corpus).
    `documents`: Document records, or a corpus path as `medsearch index` reads it. `encoder`: an
    Encoder, or a function that loads one (called only when there is text to encode). A write that
    adds rows measures the fast tier's candidate count again (for `target_recall`, default the
    index's own), as does a new `target_recall` alone. `keep`: ids that `delete_missing` leaves in
    place (the files of a corpus that could not be read this time: skipped, not gone)."""
    started = time.perf_counter()
    docs = read_corpus(documents) if isinstance(documents, (str, Path)) else normalised_ids(list(documents), "upsert")
    root = Path(index_dir)
    with _locked_base(root) as base:
        hashes = base.store.hashes()
        new = [d for d in docs if d.id not in hashes]
        changed = [d for d in docs if d.id in hashes and hashes[d.id] != d.content_hash]
        gone = set(hashes) - {d.id for d in docs} - set(keep) if delete_missing else set()
        report = WriteReport(added=len(new), updated=len(changed), unchanged=len(docs) - len(new) - len(changed),
                             deleted=len(gone), manifest=base.manifest)
        if target_recall is not None:
            check_target_recall(target_recall)
        retarget = (target_recall is not None and target_recall != base.manifest.target_recall
                    and base.backend.keeps_dead_rows)  # Qdrant: the build's calibration stays (docs/guides/scale-out.md)
        if new or changed or gone or retarget:
            _write(root, base, new + changed, [d.id for d in changed] + sorted(gone), encoder, progress, report,
                   target_recall if target_recall is not None else base.manifest.target_recall or DEFAULT_TARGET_RECALL)
    report.seconds = time.perf_counter() - started
    return report


def delete(index_dir: str | Path, ids: Iterable[str]) -> WriteReport:
    """Delete documents by id from every tier at once; unknown ids are an error (nothing is written)."""
    started = time.perf_counter()
    ids = list(dict.fromkeys(normal_id(str(i)) for i in ids))  # as stored: NFC (an NFD spelling finds it)
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
        # What was due after the last switch runs again (Qdrant deletes the points of dead rows
        # then; a failed delete is retried here): a backend that keeps no dead rows has nothing to rewrite
        base.backend.committed()
        check_whole(base, "compacting")  # (after that cleanup: until it, a collection holds dead rows' points)
        live = len(base.store.chunk_rows()) if base.backend.keeps_dead_rows else 0
        if live and (base.manifest.dead_chunks or base.backend.outdated()):  # an index from before the funnel gains it here
            _compact(root, base, report)
    report.seconds = time.perf_counter() - started
    return report


def configure(index_dir: str | Path, **settings) -> WriteReport:
    """Set manifest entries that change no vectors nor documents (`reranker`, `search_defaults`; a
    value of None removes the entry): one new generation when they differ from the index's own,
    nothing written when they do not."""
    started = time.perf_counter()
    unknown = set(settings) - CONFIGURABLE
    if unknown:
        raise BadInputError(f"not an index setting: {', '.join(sorted(unknown))}")
    root = Path(index_dir)
    with _locked_base(root) as base:
        report = WriteReport(manifest=base.manifest)
        if any(base.manifest.get(key) != value for key, value in settings.items()):
            _write(root, base, [], [], None, False, report, settings=settings)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def _locked_base(root: Path):
    """The current generation, under the writer lock (another writer may have committed before the
    lock was taken), closed after the write: its SQLite connection is not left to the collector, and
    its lease is let go, so that it is pruned now if nothing else reads it (the commit could not:
    this writer still read it)."""
    open_index(root).close()  # no index: fail before the lock file is created
    with generations.writer_lock(root):
        base = open_index(root)
        try:
            yield base
        finally:
            base.close()
            generations.prune(root)


def _compact_current(root: Path, report: WriteReport, **options) -> None:
    base = open_index(root)
    try:
        check_whole(base, "compacting")
        _compact(root, base, report, **options)
    finally:
        base.close()


AUTO_MODEL = "auto"


def choose_model(model: str, corpus: str | Path, index_dir: str | Path, language: str = "auto",
                 documents: list[Document] | None = None) -> str:
    """The model `medsearch index` uses: `model` when it names one; for `auto`, the existing index's
    own, or for a new index multilingual-e5-small when the corpus (or `language`) is not English,
    else the default (all-MiniLM-L6-v2, better on English: docs/guides/languages.md)."""
    from medsearch.encoding.models import DEFAULT_MODEL, MULTILINGUAL_E5
    from medsearch.index import language as languages

    if model != AUTO_MODEL:
        return model
    try:
        return open_index(index_dir).manifest.model["spec"]
    except (IndexNotFoundError, IndexFormatError):
        pass
    code = languages.check(language)
    if code == languages.AUTO:
        from medsearch.encoding.chunking import passage

        documents = read_corpus(corpus) if documents is None else documents
        codes = languages.corpus_languages([passage(d.title, d.text) for d in documents])
    else:
        codes = [] if code == languages.NEUTRAL else [code]
    return DEFAULT_MODEL if set(codes) <= {"en"} else MULTILINGUAL_E5


def sync(corpus: str | Path, index_dir: str | Path, encoder: Encoder, *, rebuild: bool = False,
         progress: bool = False, documents: "Corpus | None" = None, **build_options) -> WriteReport:
    """`medsearch index`: make the index mirror the corpus. An existing index of the same model
    (and chunking) is updated in place, encoding only new and changed documents; otherwise, or
    with `rebuild`, the corpus is encoded whole into a new generation. `documents`: the corpus
    already read (load_corpus); the documents of its skipped files stay in the index."""
    documents = load_corpus(corpus) if documents is None else documents
    started = time.perf_counter()
    try:
        base = open_index(index_dir)
    except (IndexNotFoundError, IndexFormatError):
        base = None
    backend = build_options.get("backend")
    same = not rebuild and base is not None and _same_vectors(base, encoder, build_options)
    language = build_options.get("language", "auto")
    try:
        kept = base.analysis if base is not None and base.manifest.has_lexical else None
    except IndexFormatError:  # an analysis this version lacks: the build below makes a new one
        kept, same = None, False
    if language == "auto" and kept is not None:  # auto: the index's own analysis, as --model auto keeps its model
        build_options["language"] = kept
    elif kept is not None and same and (wanted := lexical.choose_analysis(language, [])) != kept:
        # another analysis asked for, same vectors: BM25 is made again from the stored rows, nothing encoded
        with generations.writer_lock(Path(index_dir)):
            _compact_current(Path(index_dir), WriteReport(), analysis=wanted, progress=progress)
    if same and backend is not None and not same_backend(base.manifest.backend, backend):
        same = base.backend.keeps_dead_rows  # a backend that can give its stored vectors back
        if same:  # the stored vectors move to the other backend (a new generation): nothing is encoded
            with generations.writer_lock(Path(index_dir)):
                _compact_current(Path(index_dir), WriteReport(), backend=backend, progress=progress)
    if not same:
        if backend is None and base is not None:  # a rebuild keeps the index's backend
            backend = base.manifest.backend
        options = {**build_options, "backend": backend}
        manifest = build_index(corpus, index_dir, encoder, progress=progress, documents=documents.documents, **options)
        return WriteReport(added=manifest["documents"], generation=open_index(index_dir).generation,
                           manifest=manifest, seconds=time.perf_counter() - started)
    report = upsert(index_dir, documents.documents, encoder, delete_missing=True, progress=progress,
                    target_recall=build_options.get("target_recall"),
                    keep=[normal_id(name) for name, _ in documents.skipped])  # ids are stored in NFC
    if backend is not None and base.backend_name != backend["name"]:
        moved = open_index(index_dir)
        report.moved_to, report.manifest = backend["name"], moved.manifest
        report.generation = report.generation or moved.generation
    return report


def _same_vectors(base: Index, encoder: Encoder, build_options: dict) -> bool:
    """Whether `base` holds the vectors a build with this encoder and these options would make."""
    return (same_model(base, encoder)
            and build_options.get("vector_dtype", base.manifest.vector_dtype) == base.manifest.vector_dtype
            and build_options.get("chunk_overlap") in (None, base.manifest.chunk_overlap))


def same_backend(current: dict | None, wanted: dict) -> bool:
    """Whether an index's backend (its manifest's entry) is the one `wanted` names (the collection
    name's build suffix aside)."""
    current = {key: value for key, value in (current or {"name": "faiss"}).items() if key != "collection"}
    return current == {key: value for key, value in wanted.items() if key != "collection"}


def _write(root: Path, base: Index, write: list[Document], remove: list[str], encoder: EncoderSource | None,
           progress: bool, report: WriteReport, target_recall: float | None = None, settings: dict | None = None) -> None:
    """One new generation: `remove` (ids) leave the document store, `write` documents are (re)inserted with
    new chunk rows after the base's, appended to its backend's vectors; with new rows or a new
    `target_recall`, a backend that keeps dead rows measures the fast tier again on the live rows;
    `settings` replace manifest entries (configure)."""
    checksums.check(base.folder, layout.DOCS)  # every write reads it whole: a damaged one stops here, not in SQLite
    encoding, chunks = None, []
    if write:
        with report.phase("model"):
            encoder = encoder if isinstance(encoder, Encoder) else encoder()
            check_model(base, encoder)
        with report.phase("chunk"):
            chunks = encoder.chunk(write, base.manifest.chunk_overlap)
    pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-write-encode")
    # the caller holds the writer lock; the document store was checked above, before it was read
    with GenerationWriter(root, lock=False, checked=frozenset({layout.DOCS})) as gen:
        tmp = gen.folder
        analysis = base.analysis  # the index's, as it was built
        try:
            if write:
                # The new chunks are encoded on a thread of their own while the document store and BM25 are written (the
                # encoder's native code and SQLite release the GIL): a small write's two largest steps overlap.
                encoding = pool.submit(encoder.encode_passages, [c.passage(write[c.doc].title) for c in chunks], progress)
            with report.phase("store"):
                change = write_change(tmp / layout.DOCS, base.folder / layout.DOCS, remove, write, chunks,
                                      first_row=base.chunks)
            total = base.chunks + len(chunks)
            manifest = Manifest({
                **base.manifest,
                "documents": change.documents,
                "chunks": total,
                "dead_chunks": total - change.live_chunks,
                "corpus_fingerprint": change.corpus_fingerprint,
                "metadata_fields": change.metadata_fields,
                "updated": utc_timestamp(),
            })
            for key, value in (settings or {}).items():
                manifest.pop(key, None) if value is None else manifest.update({key: value})
            if encoding is None:  # a delete: the rows stay, so chunk_doc and BM25 do too (dead rows masked out)
                generations.link_file(base.folder / layout.CHUNK_DOC, tmp / layout.CHUNK_DOC)
                lexical.carry_over(base.folder, tmp)
                written = base.backend.carry_over(tmp, manifest, removed=remove)
            else:
                np.save(tmp / layout.CHUNK_DOC, np.concatenate(
                    [base.chunk_doc, change.first_ordinal + np.array([c.doc for c in chunks], dtype=np.int32)]))
                with report.phase("lexical"):
                    lexical.write_from_store(tmp, total, analysis, base=base.folder, first_new=base.chunks)
                with report.phase("encode"):  # what is left of it once the lexical index is written
                    vectors = encoding.result()
                with report.phase("vectors"):
                    written = base.backend.append(tmp, vectors, manifest, removed=remove, progress=progress)
            if (tmp / layout.LEXICAL_DIR).is_dir():
                manifest["lexical"] = lexical.settings(analysis)
            if (written.keeps_dead_rows and target_recall is not None
                    and (encoding is not None or target_recall != base.manifest.target_recall)
                    and needs_calibration(manifest.fast, change.live_chunks, target_recall)):
                with report.phase("calibrate"):
                    manifest["fast"] = written.calibrate(_live_rows(tmp, manifest), target_recall)
            with report.phase("commit"):
                committed = gen.commit(manifest)
        except BaseException:
            if encoding is not None:
                encoding.cancel()
            pool.shutdown(wait=True)  # an encode still running finishes before its generation's folder goes
            raise
    pool.shutdown()
    report.generation, report.manifest = generations.number(committed), manifest
    try:
        written.committed()
    except MedsearchError as err:  # committed: what is left is dead rows, skipped; the next write or compact retries
        log.warning("the write is committed, but its cleanup after the switch did not finish (%s); "
                    "the next write or compact runs it again", err)
    written.close()  # the new generation's files: readers open their own
    if written.keeps_dead_rows and total and change.live_chunks and manifest.dead_chunks / total > AUTO_COMPACT_DEAD_FRACTION:
        _compact_current(root, report)  # (nothing left: nothing to rewrite)


def _live_rows(folder: Path, manifest: Manifest) -> np.ndarray | None:
    """Which rows of a written generation folder are live (None: all of them)."""
    written = Index(path=folder, manifest=manifest, folder=folder)
    try:
        return written.live
    finally:
        written.close()


def _compact(root: Path, base: Index, report: WriteReport, backend: dict | None = None, progress: bool = False,
             analysis: lexical.Analysis | None = None) -> None:
    """Rewrite an index's live rows from its backend's stored vectors as a new generation (no
    encoding): in the same backend again, or in `backend` (a move, e.g. from FAISS to Qdrant); BM25
    analysed as the index was, or with `analysis`."""
    rows = np.sort(base.store.chunk_rows())
    ordinals, documents = {}, []
    for ordinal, doc in base.store.documents():
        ordinals[ordinal] = len(documents)
        documents.append(doc)
    chunks = list(base.store.chunks())
    for chunk in chunks:  # document ordinals renumbered 0, 1, ... as write_store numbers them
        chunk.doc = ordinals[chunk.doc]
    keep = {"model", "query_prefix", "passage_prefix", "max_tokens", "corpus", "chunk_overlap", "encode_seconds", "created",
            *CONFIGURABLE}
    manifest = {key: value for key, value in base.manifest.items() if key in keep}
    manifest.update(documents=len(documents), corpus_fingerprint=corpus_fingerprint((d.id, d.content_hash) for d in documents),
                    metadata_fields=sorted({k for d in documents for k in d.metadata}),
                    compacted=utc_timestamp())
    extra = tuple(d for d in base.dims if d not in set(base.manifest.tier_dims.values()))
    exact, stored = base.backend.read_vectors(rows)
    options = BuildOptions(vector_dtype=base.manifest.vector_dtype, extra_dims=extra,
                           target_recall=base.manifest.target_recall or DEFAULT_TARGET_RECALL, backend=backend,
                           analysis=analysis or base.analysis, progress=progress)
    written = write_index(root, exact, np.array([c.doc for c in chunks], dtype=np.int32), manifest, options,
                          write_docs=lambda path: write_store(path, documents, chunks), locked=True,
                          stored_vectors=stored)
    report.compacted, report.manifest, report.generation = True, written, open_index(root).generation
