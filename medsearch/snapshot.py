"""Snapshots of an index, their restore, and the check that an index on disk is whole.

    verify(index_dir)              every file of the current generation against the checksums its
                                   commit recorded (checksums.py), then the row counts: the store,
                                   the vector map, the vectors and tiers, the binary codes and BM25
                                   must all agree with the manifest
    snapshot(index_dir, out)       the current generation in one zstd-compressed tar, taken while
                                   searches and writes go on: generations never change once
                                   committed, so pinning one (generations.pinned) is all it takes
    restore(snapshot, index_dir)   the archive checked (every file against its checksum, then the
                                   row counts), then committed as a generation of `index_dir`

A snapshot (`.tar.zst`, zstd with its frame checksum) holds `generation/<file>` for every file of
the generation, its `checksums.sha256` included, and last `snapshot.json`: the format, the index's
name, the generation number, the medsearch version and each file's sha256 and size as read. A file
whose content differs from the checksum its commit recorded stops the snapshot: a damaged index is
never archived as a good one.

The Qdrant backend keeps its vectors outside the folder; Qdrant's local mode has no snapshot API, so
snapshots cover FAISS indexes (for Qdrant, snapshot the collection with Qdrant's own API).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from medsearch import checksums, generations, lexical
from medsearch.backends import open_backend
from medsearch.errors import BadInputError, IndexNotFoundError, MedsearchError
from medsearch.index import Index, index_exists, open_index
from medsearch.manifest import Manifest
from medsearch.store import DocStore
from medsearch.version import __version__

FORMAT = "medsearch-snapshot/1"
HEADER = "snapshot.json"
MEMBERS = "generation/"
ZSTD_LEVEL = 3


class DamagedIndexError(MedsearchError):
    """A generation's files differ from their checksums, or its parts disagree."""


class DamagedSnapshotError(BadInputError):
    """An archive that is not an intact medsearch snapshot."""


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


@dataclass
class SnapshotReport:
    path: Path
    generation: int
    files: int
    bytes: int  # the archive's size
    source_bytes: int  # the generation's files' size
    seconds: float

    def summary(self) -> str:
        return (f"snapshot of generation {self.generation} written to {self.path}: {self.files} files, "
                f"{self.source_bytes / 1e6:.1f} MB -> {self.bytes / 1e6:.1f} MB ({self.seconds:.1f} s)")

    def to_json(self) -> dict:
        return {"snapshot": self.path.name, "generation": self.generation, "files": self.files, "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


@dataclass
class RestoreReport:
    index: Path
    generation: int  # the restored generation's number in `index`
    snapshot_generation: int  # its number where the snapshot was taken
    documents: int
    files: int
    seconds: float

    def summary(self) -> str:
        return (f"restored generation {self.snapshot_generation} of the snapshot into {self.index} as generation "
                f"{self.generation}: {self.documents} documents, {self.files} files checked ({self.seconds:.1f} s)")


# ---- verify ----

def verify(index_dir: str | Path) -> VerifyReport:
    """Check the index's current generation (IndexNotFoundError when there is none)."""
    started = time.perf_counter()
    index = open_index(index_dir)
    problems, files = check_generation(index.folder, index.manifest)
    return VerifyReport(index.path, index.generation, files, problems, time.perf_counter() - started)


def check_generation(folder: Path, manifest: Manifest) -> tuple[list[str], int]:
    """(one line per problem, files checked against their checksums) for a generation folder: its
    files against its record, then the parts' row counts (parts whose files failed are not parsed)."""
    problems: list[str] = []
    try:
        sums = checksums.read(folder)
    except (OSError, ValueError) as err:
        sums, problems = None, [f"{checksums.FILE}: {err}"]
    damaged: set[str] = set()
    if sums is not None:
        for line in checksums.problems(folder, sums):
            problems.append(line)
            damaged.add(line.split(":", 1)[0])
    problems += _row_problems(folder, manifest, damaged)
    return problems, len(sums or ())


def _row_problems(folder: Path, manifest: Manifest, damaged: set[str]) -> list[str]:
    chunks, live = manifest.chunks, manifest.live_chunks
    problems = []
    if "chunk_doc.npy" not in damaged:
        try:
            rows = len(np.load(folder / "chunk_doc.npy", mmap_mode="r"))
            if rows != chunks:
                problems.append(f"chunk_doc.npy: {rows} rows; the manifest says {chunks}")
        except (OSError, ValueError) as err:
            problems.append(f"chunk_doc.npy: unreadable ({err})")
    if "docs.db" not in damaged and (folder / "docs.db").is_file():
        store = DocStore(folder / "docs.db")
        try:
            documents, stored = store.counts()
            top = int(store.chunk_rows().max(initial=-1))
            if documents != manifest.documents:
                problems.append(f"docs.db: {documents} documents; the manifest says {manifest.documents}")
            if stored != live:
                problems.append(f"docs.db: {stored} live chunks; the manifest says {live}")
            if top >= chunks:
                problems.append(f"docs.db: a chunk at row {top}, past the manifest's {chunks} rows")
        except sqlite3.DatabaseError as err:
            problems.append(f"docs.db: unreadable ({err})")
        finally:
            store.close()
    if manifest.has_lexical:
        params = f"{lexical.LEXICAL_DIR}/params.index.json"
        if params not in damaged:
            try:
                rows = json.loads((folder / params).read_text())["num_docs"]
                if rows != chunks:
                    problems.append(f"{lexical.LEXICAL_DIR}/: BM25 over {rows} rows; the manifest says {chunks}")
            except (OSError, ValueError, KeyError, TypeError) as err:
                problems.append(f"{params}: unreadable ({err})")
    problems += open_backend(folder, manifest).verify(skip=damaged)
    return problems


def check_whole(index: Index, doing: str) -> None:
    """DamagedIndexError, naming the first problem, unless the generation `index` is whole (`compact`
    runs it before rewriting: a rewrite would record damaged content under new, good checksums)."""
    problems, _ = check_generation(index.folder, index.manifest)
    if problems:
        raise DamagedIndexError(f"{index.path}: generation {index.generation} is damaged ({problems[0]}); not {doing} it: "
                                "restore a snapshot (medsearch restore SNAPSHOT DIR --replace) or rebuild the index")


# ---- snapshot ----

def snapshot(index_dir: str | Path, out: str | Path) -> SnapshotReport:
    """Write the index's current generation to `out`: a new file (written beside it, then renamed),
    or, when `out` is a folder, a file in it named after the index, the generation and the time."""
    started = time.perf_counter()
    root, out = Path(index_dir), Path(out)
    open_index(root)  # no index, or one of another format: its own error
    if not out.is_dir():
        if out.exists() or out.is_symlink():
            raise BadInputError(f"{out} exists: a snapshot never replaces a file (choose another name)")
        if not out.parent.is_dir():
            raise BadInputError(f"{out.parent} is not a folder: create it first")
    with generations.pinned(root) as folder:
        if folder is None:  # removed since open_index saw it
            raise IndexNotFoundError(f"no index at {root}", root)
        manifest = Manifest.read(folder, root)
        if manifest.backend_name != "faiss":
            raise BadInputError(f"{root} keeps its vectors in a {manifest.backend_name} collection, which a snapshot "
                                "cannot copy: snapshot the collection with Qdrant's own snapshot API")
        if out.is_dir():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            out = out / f"{root.resolve().name}-{folder.name}-{stamp}.tar.zst"
            if out.exists():
                raise BadInputError(f"{out} exists: a snapshot of this generation was taken this second")
        try:
            recorded = checksums.read(folder)
        except ValueError as err:
            raise DamagedIndexError(f"{root}: {err}: run medsearch verify") from None
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            files, size = _write_archive(folder, tmp, recorded, root)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return SnapshotReport(out, generations.number(folder), files, out.stat().st_size, size,
                          time.perf_counter() - started)


def _write_archive(folder: Path, target: Path, recorded: dict[str, str] | None, root: Path) -> tuple[int, int]:
    import zstandard

    names = [str(name) for name in checksums.files(folder)]
    if recorded is not None and set(recorded) != set(names):
        missing = sorted(set(recorded) - set(names)) or sorted(set(names) - set(recorded))
        raise DamagedIndexError(f"{root}: generation {folder.name} does not hold the files its commit recorded "
                                f"({missing[0]}): run medsearch verify")
    entries = {}
    with open(target, "wb") as raw:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with compressor.stream_writer(raw, closefd=False) as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
            for name in names + ([checksums.FILE] if recorded is not None else []):
                path = folder / name
                with open(path, "rb") as handle:
                    reader = checksums.HashingReader(handle)
                    tar.addfile(_member(MEMBERS + name, os.fstat(handle.fileno()).st_size), reader)
                value = reader.hash.hexdigest()
                if recorded is not None and name in recorded and recorded[name] != value:
                    raise DamagedIndexError(f"{root}: {name} of {folder.name} differs from the checksum its commit "
                                            "recorded; no snapshot written (run medsearch verify)")
                entries[name] = {"sha256": value, "bytes": path.stat().st_size}
            header = json.dumps({
                "format": FORMAT, "medsearch_version": __version__, "index": root.resolve().name,
                "generation": generations.number(folder), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": entries,
            }, indent=2).encode()
            tar.addfile(_member(HEADER, len(header)), io.BytesIO(header))
    return len(entries), sum(e["bytes"] for e in entries.values())


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    return info


# ---- restore ----

def restore(snapshot_path: str | Path, index_dir: str | Path, *, replace: bool = False) -> RestoreReport:
    """Check the snapshot and commit it as the next generation of `index_dir`: a new index, or with
    `replace` an existing one (its current generation stays readable until pruned, as after any
    write). Nothing is written to the index unless every check passes."""
    started = time.perf_counter()
    source, root = Path(snapshot_path), Path(index_dir)
    if not source.is_file():
        raise BadInputError(f"no snapshot at {source}")
    if index_exists(root):
        if not replace:
            raise BadInputError(f"{root} already holds an index: give --replace to make the snapshot its next "
                                "generation, or restore into a new folder")
    elif root.is_file() or (root.exists() and any(not p.name.startswith((generations.LOCK, ".tmp-"))
                                                  for p in root.iterdir())):
        raise BadInputError(f"{root} exists and is not a medsearch index: restore into a new or empty folder")
    created = not root.exists()
    with generations.writer_lock(root):
        tmp = generations.new_folder(root)
        try:
            header = _extract(source, tmp)
            manifest = Manifest.read(tmp, root)
            if manifest.backend_name != "faiss":
                raise DamagedSnapshotError(f"{source}: a snapshot of a {manifest.backend_name} index")
            problems, files = check_generation(tmp, manifest)
            if problems:
                raise DamagedSnapshotError(f"{source} is damaged: {problems[0]}; nothing was restored")
            target = generations.commit(root, tmp)
        except BaseException:
            generations.discard(tmp)
            if created:  # a new index's folder: nothing of it stays
                shutil.rmtree(root, ignore_errors=True)
            raise
    return RestoreReport(root, generations.number(target), header["generation"], manifest.documents, files,
                         time.perf_counter() - started)


def _extract(source: Path, folder: Path) -> dict:
    """Unpack the archive's generation into `folder`, checking each file against the header's sums;
    the header. DamagedSnapshotError (one line) for anything else than an intact snapshot."""
    import zstandard

    found: dict[str, str] = {}
    header = None
    try:
        with open(source, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name == HEADER and member.isfile():
                    header = json.loads(tar.extractfile(member).read())
                    continue
                name = _member_path(member)
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as data, open(target, "wb") as out:
                    reader = checksums.HashingReader(data)
                    shutil.copyfileobj(reader, out, checksums.CHUNK)
                found[name] = reader.hash.hexdigest()
    except DamagedSnapshotError:
        raise
    except (zstandard.ZstdError, tarfile.TarError, OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise DamagedSnapshotError(f"{source} is not an intact medsearch snapshot ({_reason(err)}); nothing was restored") from None
    return _check_header(source, header, found)


def _member_path(member: tarfile.TarInfo) -> str:
    """The generation file a member holds: a regular file under generation/, with no '..', absolute
    or empty part (a hostile archive writes nowhere else)."""
    relative = PurePosixPath(member.name[len(MEMBERS):]) if member.name.startswith(MEMBERS) else None
    if (not member.isfile() or relative is None or relative.is_absolute() or not relative.parts
            or any(part in ("", ".", "..") for part in relative.parts)):
        raise DamagedSnapshotError(f"unexpected member '{member.name[:100]}' in the archive: not a medsearch snapshot")
    return str(relative)


def _check_header(source: Path, header, found: dict[str, str]) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("files"), dict):
        raise DamagedSnapshotError(f"{source} is not a medsearch snapshot (no {HEADER} of format {FORMAT}); "
                                   "nothing was restored")
    listed = {name: entry.get("sha256") if isinstance(entry, dict) else None for name, entry in header["files"].items()}
    for name in sorted(set(listed) | set(found)):
        if name not in found:
            raise DamagedSnapshotError(f"{source} is damaged: {name} is missing; nothing was restored")
        if listed.get(name) != found[name]:
            raise DamagedSnapshotError(f"{source} is damaged: {name} differs from its checksum; nothing was restored")
    if not isinstance(header.get("generation"), int):
        raise DamagedSnapshotError(f"{source}: {HEADER} names no generation; nothing was restored")
    return header


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
