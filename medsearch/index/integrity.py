"""The check that an index on disk is whole: every file of a generation against the checksums its
commit recorded (checksums.py), then the row counts of its parts.

    verify(index_dir)        `medsearch verify`: the current generation, leased while it is checked
    check_generation(folder) one line per problem of a generation folder (a restore checks the
                             archive's generation so before it commits it)
    check_whole(index, ...)  DamagedIndexError unless the generation is whole (a compaction runs it
                             before rewriting: a rewrite would record damaged content under new sums)

The row counts: the store, the vector map, the vectors and tiers, the binary codes and BM25 must
all agree with the manifest. (The checksums' own module stays apart: generations.py records them
at every commit, and this check opens the index, which needs generations.py.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsearch.errors import DamagedIndexError, reason
from medsearch.index import checksums, generations, layout, lexical
from medsearch.index.backends import open_backend
from medsearch.index.folder import Index, open_index
from medsearch.index.manifest import TIERS, Manifest
from medsearch.index.store import DocStore


@dataclass
class VerifyReport:
    index: Path
    generation: int
    files: int  # files checked against recorded checksums (0: none recorded)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return f"{self.index}: generation {self.generation} is damaged ({len(self.problems)} problems)"
        sums = f"{self.files} files match their checksums" if self.files else "no checksums recorded (an older build)"
        return f"{self.index}: generation {self.generation} is whole: {sums}, row counts agree ({self.seconds:.1f} s)"



def verify(index_dir: str | Path) -> VerifyReport:
    """Check the index's current generation (IndexNotFoundError when the folder holds no index; a
    CURRENT that names no generation folder is a problem like any other)."""
    started = time.perf_counter()
    root = Path(index_dir)
    folder = generations.current(root)
    if folder is None:
        if (root / layout.POINTER).exists():
            return VerifyReport(root, 0, 0, [f"{layout.POINTER}: names no generation (damaged)"],
                                time.perf_counter() - started)
        open_index(root)  # its own error: no index, or one of format 1
    if not folder.is_dir():
        return VerifyReport(root, generations.number(folder), 0,
                            [f"{layout.POINTER}: names {folder.name}, which is missing"], time.perf_counter() - started)
    leased = generations.lease(root)  # a write that commits meanwhile does not prune it under the check
    folder, handle = leased if leased is not None else (folder, None)
    try:
        problems, files = check_generation(folder, root)
    finally:
        if handle is not None:
            handle.close()
    return VerifyReport(root, generations.number(folder), files, problems, time.perf_counter() - started)


def check_generation(folder: Path, index: Path | None = None,
                     hashed: dict[str, str] | None = None) -> tuple[list[str], int]:
    """(one line per problem, files checked against their checksums) for a generation folder: its
    files against its record first, then its manifest, then the parts' row counts (parts whose
    files failed the first step are not parsed: a damaged file can raise anything). `hashed`: sums
    already computed from the files' content (checksums.problems)."""
    problems: list[str] = []
    try:
        sums = checksums.read(folder)
    except (OSError, ValueError) as err:
        sums, problems = None, [f"{layout.CHECKSUMS}: unreadable ({reason(err)})"]
    damaged: set[str] = set()
    if sums is not None:
        for line in checksums.problems(folder, sums, hashed):
            problems.append(line)
            damaged.add(line.split(":", 1)[0])
    if layout.MANIFEST in damaged:
        return problems, len(sums or ())
    try:
        manifest = Manifest.read(folder, index)
        tiers = {tier: manifest.tier_dims[tier] for tier in TIERS}
        if not all(type(n) is int for n in (manifest.chunks, manifest.live_chunks, manifest.documents)):
            raise ValueError("counts that are not numbers")
        if not set(tiers.values()) <= set(manifest.dims):
            raise ValueError(f"tier dims {tiers} that it does not store")
    except Exception as err:  # noqa: BLE001 (a manifest written by no medsearch can fail in any way)
        return problems + [f"{layout.MANIFEST}: unreadable ({reason(err)})"], len(sums or ())
    problems += _row_problems(folder, manifest, damaged)
    return problems, len(sums or ())


def _part(problems: list[str], name: str, check) -> None:
    """Run one part's check; a part that cannot be read (whatever its parser raises) is a problem."""
    try:
        problems += check()
    except Exception as err:  # noqa: BLE001 (numpy, sqlite, json and faiss raise many kinds for a damaged file)
        problems.append(f"{name}: unreadable ({reason(err)})")


def _row_problems(folder: Path, manifest: Manifest, damaged: set[str]) -> list[str]:
    chunks, live = manifest.chunks, manifest.live_chunks
    problems: list[str] = []

    def vector_map() -> list[str]:
        rows = len(np.load(folder / layout.CHUNK_DOC, mmap_mode="r"))
        return [f"{layout.CHUNK_DOC}: {rows} rows; the manifest says {chunks}"] if rows != chunks else []

    def store() -> list[str]:
        if not (folder / layout.DOCS).is_file():
            return [f"{layout.DOCS}: missing"] if manifest.has_lexical or manifest.get("corpus_fingerprint") else []
        docs = DocStore(folder / layout.DOCS)
        try:
            documents, stored = docs.counts()
            top = int(docs.chunk_rows().max(initial=-1))
        finally:
            docs.close()
        found = []
        if documents != manifest.documents:
            found.append(f"{layout.DOCS}: {documents} documents; the manifest says {manifest.documents}")
        if stored != live:
            found.append(f"{layout.DOCS}: {stored} live chunks; the manifest says {live}")
        if top >= chunks:
            found.append(f"{layout.DOCS}: a chunk at row {top}, past the manifest's {chunks} rows")
        return found

    def bm25() -> list[str]:
        try:
            rows = lexical.rows(folder)
        except FileNotFoundError as err:  # one of bm25s's files: name the one that is missing
            missing = Path(err.filename or lexical.PARAMS_FILE).name
            return [f"{layout.LEXICAL_DIR}/{missing}: unreadable (missing)"]
        return [f"{layout.LEXICAL_DIR}/: BM25 over {rows} rows; the manifest says {chunks}"] if rows != chunks else []

    if layout.CHUNK_DOC not in damaged:
        _part(problems, layout.CHUNK_DOC, vector_map)
    if layout.DOCS not in damaged:
        _part(problems, layout.DOCS, store)
    if manifest.has_lexical and not lexical.matrix_files(damaged):  # (bm25s reads them all)
        _part(problems, lexical.PARAMS_FILE, bm25)
    _part(problems, f"the {manifest.backend_name} vectors", lambda: open_backend(folder, manifest).verify(skip=damaged))
    return problems


def check_whole(index: Index, doing: str) -> None:
    """DamagedIndexError, naming the first problem, unless the generation `index` is whole (`compact`
    runs it before rewriting: a rewrite would record damaged content under new, good checksums)."""
    problems, _ = check_generation(index.folder, index.path)
    if problems:
        raise DamagedIndexError(f"{index.path}: generation {index.generation} is damaged ({problems[0]}); not {doing} it: "
                                "restore a snapshot (medsearch restore SNAPSHOT DIR --replace) or rebuild the index")
