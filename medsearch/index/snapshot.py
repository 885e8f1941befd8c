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

A snapshot (`.tar.zst`, zstd with its frame checksum) holds first `snapshot.json` (the format, the
index's name, the generation number, the medsearch version, each file's sha256 and size), then
`generation/<file>` for every file of the generation, its `checksums.sha256` included. Each file is
hashed again as it is archived: one whose content differs from the checksum its commit recorded
stops the snapshot, so a damaged index is never archived as a good one. A restore reads the header
first, so it writes only what the header lists.

The Qdrant backend keeps its vectors outside the folder; Qdrant's local mode has no snapshot API, so
snapshots cover FAISS indexes (for Qdrant, snapshot the collection with Qdrant's own API).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from medsearch.index import checksums

from medsearch.index import generations

from medsearch.index import lexical
from medsearch.index.backends import open_backend
from medsearch.errors import BadInputError, DamagedIndexError, IndexFormatError, IndexNotFoundError, reason
from medsearch.index.folder import Index, index_exists, open_index
from medsearch.index.manifest import FORMAT_VERSION, TIERS, Manifest
from medsearch.index.store import DocStore
from medsearch.version import __version__

FORMAT = "medsearch-snapshot/1"
HEADER = "snapshot.json"
MEMBERS = "generation/"
ZSTD_LEVEL = 3


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
    removed: list[str] = field(default_factory=list)  # older snapshots removed to keep the newest N

    def summary(self) -> str:
        return (f"snapshot of generation {self.generation} written to {self.path}: {self.files} files, "
                f"{self.source_bytes / 1e6:.1f} MB -> {self.bytes / 1e6:.1f} MB ({self.seconds:.1f} s)"
                + (f"; {len(self.removed)} older removed (keeping the newest)" if self.removed else ""))

    def to_json(self) -> dict:
        return {"snapshot": self.path.name, "generation": self.generation, "files": self.files, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "removed": self.removed}


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
    """Check the index's current generation (IndexNotFoundError when the folder holds no index; a
    CURRENT that names no generation folder is a problem like any other)."""
    started = time.perf_counter()
    root = Path(index_dir)
    folder = generations.current(root)
    if folder is None:
        if (root / generations.POINTER).exists():
            return VerifyReport(root, 0, 0, [f"{generations.POINTER}: names no generation (damaged)"],
                                time.perf_counter() - started)
        open_index(root)  # its own error: no index, or one of format 1
    if not folder.is_dir():
        return VerifyReport(root, generations.number(folder), 0,
                            [f"{generations.POINTER}: names {folder.name}, which is missing"], time.perf_counter() - started)
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
        sums, problems = None, [f"{checksums.FILE}: unreadable ({reason(err)})"]
    damaged: set[str] = set()
    if sums is not None:
        for line in checksums.problems(folder, sums, hashed):
            problems.append(line)
            damaged.add(line.split(":", 1)[0])
    if "manifest.json" in damaged:
        return problems, len(sums or ())
    try:
        manifest = Manifest.read(folder, index)
        tiers = {tier: manifest.tier_dims[tier] for tier in TIERS}
        if not all(type(n) is int for n in (manifest.chunks, manifest.live_chunks, manifest.documents)):
            raise ValueError("counts that are not numbers")
        if not set(tiers.values()) <= set(manifest.dims):
            raise ValueError(f"tier dims {tiers} that it does not store")
    except Exception as err:  # noqa: BLE001 (a manifest written by no medsearch can fail in any way)
        return problems + [f"manifest.json: unreadable ({reason(err)})"], len(sums or ())
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
        rows = len(np.load(folder / "chunk_doc.npy", mmap_mode="r"))
        return [f"chunk_doc.npy: {rows} rows; the manifest says {chunks}"] if rows != chunks else []

    def store() -> list[str]:
        if not (folder / "docs.db").is_file():
            return ["docs.db: missing"] if manifest.has_lexical or manifest.get("corpus_fingerprint") else []
        docs = DocStore(folder / "docs.db")
        try:
            documents, stored = docs.counts()
            top = int(docs.chunk_rows().max(initial=-1))
        finally:
            docs.close()
        found = []
        if documents != manifest.documents:
            found.append(f"docs.db: {documents} documents; the manifest says {manifest.documents}")
        if stored != live:
            found.append(f"docs.db: {stored} live chunks; the manifest says {live}")
        if top >= chunks:
            found.append(f"docs.db: a chunk at row {top}, past the manifest's {chunks} rows")
        return found

    def bm25() -> list[str]:
        rows = json.loads((folder / lexical.LEXICAL_DIR / "params.index.json").read_text())["num_docs"]
        return [f"{lexical.LEXICAL_DIR}/: BM25 over {rows} rows; the manifest says {chunks}"] if rows != chunks else []

    if "chunk_doc.npy" not in damaged:
        _part(problems, "chunk_doc.npy", vector_map)
    if "docs.db" not in damaged:
        _part(problems, "docs.db", store)
    if manifest.has_lexical and f"{lexical.LEXICAL_DIR}/params.index.json" not in damaged:
        _part(problems, f"{lexical.LEXICAL_DIR}/params.index.json", bm25)
    _part(problems, f"the {manifest.backend_name} vectors", lambda: open_backend(folder, manifest).verify(skip=damaged))
    return problems


def check_whole(index: Index, doing: str) -> None:
    """DamagedIndexError, naming the first problem, unless the generation `index` is whole (`compact`
    runs it before rewriting: a rewrite would record damaged content under new, good checksums)."""
    problems, _ = check_generation(index.folder, index.path)
    if problems:
        raise DamagedIndexError(f"{index.path}: generation {index.generation} is damaged ({problems[0]}); not {doing} it: "
                                "restore a snapshot (medsearch restore SNAPSHOT DIR --replace) or rebuild the index")


# ---- snapshot ----

def snapshot(index_dir: str | Path, out: str | Path, *, keep: int | None = None,
             max_bytes: int | None = None, key: bytes | None = None) -> SnapshotReport:
    """Write the index's current generation to `out`: a new file, or, when `out` is a folder (one
    that exists, or a path that ends with '/'), a file in it named after the index, the generation
    and the time. The archive is written beside its name and linked to it when complete: an
    existing file is never replaced, not even one created meanwhile.

    Into a folder, `keep`: once written, only the newest `keep` of this index's snapshots there are
    kept (snapshots_of: those it wrote of this index folder, with `key` those it signed; never the
    one just written; nothing else is touched); `max_bytes`: refused,
    before anything is written, when the snapshots kept plus this one (counted at the generation's
    size, which the archive does not exceed) would pass that many bytes. `key` (read_key): the header
    is signed with it (HMAC-SHA256), so that `restore` given the same key refuses any archive that
    was not written by a holder of the key."""
    started = time.perf_counter()
    root = Path(index_dir)
    into_folder = Path(out).is_dir() or str(out).endswith(("/", os.sep))
    out = Path(out)
    open_index(root)  # no index, or one of another format: its own error
    for name, value in (("keep", keep), ("max_bytes", max_bytes)):
        if value is not None and value < 1:
            raise BadInputError(f"{name} must be at least 1; got {value}")
    if into_folder and not out.is_dir():
        raise BadInputError(f"snapshot folder {out} does not exist: create it first")
    if not into_folder:
        if out.exists() or out.is_symlink():
            raise BadInputError(f"{out} exists: a snapshot never replaces a file (choose another name)")
        if not out.parent.is_dir():
            raise BadInputError(f"{out.parent} is not a folder: create it first")
    where = (out if into_folder else out.parent).resolve()
    check_outside(root, where, out)
    _remove_stale_parts(where)
    with _pinned(root) as folder:
        manifest = Manifest.read(folder, root)
        if manifest.backend_name != "faiss":
            raise BadInputError(f"{root} keeps its vectors in a {manifest.backend_name} collection, which a snapshot "
                                "cannot copy: snapshot the collection with Qdrant's own snapshot API")
        if into_folder:
            if max_bytes is not None:
                _check_budget(root, where, folder, keep, max_bytes, key)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            out = out / f"{root.resolve().name}-{folder.name}-{stamp}-{uuid.uuid4().hex[:6]}.tar.zst"
        tmp = out.with_name(f".{out.name}{PART}{os.getpid()}-{threading.get_ident()}")
        try:
            files, size = _write_archive(folder, tmp, root, key)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            _publish(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    report = SnapshotReport(out, generations.number(folder), files, out.stat().st_size, size,
                            time.perf_counter() - started)
    if into_folder and keep is not None:
        older = [path for path in snapshots_of(root, where, key) if path.name != out.name]
        for old in older[:max(0, len(older) - (keep - 1))]:
            old.unlink(missing_ok=True)
            report.removed.append(old.name)
    return report


def snapshots_of(index_dir: str | Path, folder: str | Path, key: bytes | None = None) -> list[Path]:
    """The snapshots of the index in `folder` that `snapshot` wrote, oldest first (by the time their
    header records): named as it names them (index name, generation, time), and whose header records
    this index folder itself (its device and inode: the folder moved is still itself, another index
    at the same path in another container is not); with `key`, only those it signed."""
    return [path for path, header in _snapshots(index_dir, folder) if key is None or _signed(header, key)]


def _snapshots(index_dir: str | Path, folder: str | Path) -> list[tuple[Path, dict]]:
    """snapshots_of's, signed or not, each with its header."""
    root = Path(index_dir).resolve()
    pattern = re.compile(rf"^{re.escape(root.name)}-gen-\d{{6,}}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}\.tar\.zst$")
    found = []
    for path in Path(folder).iterdir():
        if not pattern.match(path.name) or path.is_symlink() or not path.is_file():
            continue
        header = read_header(path) or {}
        if header.get("index_folder") == _identity(root):
            found.append((str(header.get("created", "")), path.name, path, header))
    return [(path, header) for *_, path, header in sorted(found, key=lambda item: item[:2])]


def _identity(root: Path) -> str:
    """An index folder as itself: its file system's device and its inode."""
    stat = root.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def read_header(path: Path) -> dict | None:
    """An archive's header (its first member), or None when it has no readable one."""
    import zstandard

    try:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            bounded = _Bounded(stream, MAX_HEADER_BYTES + MEMBER_OVERHEAD, path)
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                first = tar.next()
                if not _is_header(first):
                    return None
                header = json.loads(tar.extractfile(first).read())
    except (DamagedSnapshotError, zstandard.ZstdError, tarfile.TarError, OSError, EOFError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _check_budget(root: Path, where: Path, folder: Path, keep: int | None, max_bytes: int, key: bytes | None) -> None:
    mine = _snapshots(root, where)  # this index's, signed or not: all take disk
    removed = []  # what --keep removes once this one is written
    if keep is not None:
        removed = [path for path, header in mine if key is None or _signed(header, key)]
        removed = removed[:max(0, len(removed) - (keep - 1))]
    kept = [path for path, _ in mine if path not in removed]
    held = sum(path.stat().st_size for path in kept)
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    if held + size > max_bytes:
        raise BadInputError(f"the snapshot folder would hold {(held + size) / 1e6:.1f} MB of this index's snapshots "
                            f"({len(kept)} kept, {size / 1e6:.1f} MB for this one), over its budget of "
                            f"{max_bytes / 1e6:.1f} MB: keep fewer (--keep), remove some, or raise the budget")


def check_outside(index_dir: str | Path, folder: str | Path, named: str | Path | None = None) -> None:
    """BadInputError when `folder` (where snapshots go; `named`: as the user named it) is the index
    folder or inside it: a snapshot there would be a file of the generation it copies, or pruned."""
    root, where = Path(index_dir).resolve(), Path(folder).resolve()
    if where == root or root in where.parents:
        raise BadInputError(f"{named or folder} is inside the index folder {index_dir}: keep snapshots elsewhere")


PART = ".tmp-"  # a snapshot being written: `.NAME.tmp-PID-THREAD` beside NAME
_STALE_PART = re.compile(r"^\..+\.tar\.zst\.tmp-(\d{1,9})-\d{1,20}$")
STALE_SECONDS = 3600  # a live snapshot writes its part continuously: one untouched this long is not live


def _publish(tmp: Path, out: Path) -> None:
    """Give the finished archive its name, never replacing a file: a hard link fails if `out` appeared
    meanwhile (a rename would replace it); where the file system has no hard links, a rename after a
    last check. Then the folder is synced."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise BadInputError(f"{out} exists: a snapshot never replaces a file (choose another name)") from None
    except OSError:  # no hard links on this file system (FAT, some network mounts)
        if out.exists() or out.is_symlink():
            raise BadInputError(f"{out} exists: a snapshot never replaces a file (choose another name)") from None
        os.replace(tmp, out)
    descriptor = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_stale_parts(folder: Path) -> None:
    """Remove what snapshots killed mid-way left in `folder`: files named as parts are, untouched for
    an hour, whose process is gone (another host's or container's live part is written to, so
    touched; nothing else is ever matched)."""
    now = time.time()
    for path in folder.glob(".*.tar.zst.tmp-*"):
        match = _STALE_PART.match(path.name)
        try:
            if match and path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > STALE_SECONDS \
                    and not _alive(int(match.group(1))):
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def _pinned(root: Path):
    """generations.pinned, never None (IndexNotFoundError for an index removed meanwhile)."""
    with generations.pinned(root) as folder:
        if folder is None:
            raise IndexNotFoundError(f"no index at {root}", root)
        yield folder


def _write_archive(folder: Path, target: Path, root: Path, key: bytes | None = None) -> tuple[int, int]:
    """The archive: the header first (each file's size and sum: what its commit recorded, or, for a
    generation committed before records, hashed now), then each file, hashed again as it is read: a
    file that differs from its sum stops the snapshot."""
    import zstandard

    try:
        recorded = checksums.read(folder)
    except ValueError as err:
        raise DamagedIndexError(f"{root}: {err}: run medsearch verify") from None
    names = [str(name) for name in checksums.files(folder)]
    if recorded is not None and set(recorded) != set(names):
        odd = sorted(set(recorded) ^ set(names))[0]
        why = "is missing" if odd in recorded else "is not among the files its commit recorded"
        raise DamagedIndexError(f"{root}: {odd} of {folder.name} {why}: run medsearch verify")
    if recorded is not None:
        names.append(checksums.FILE)
        recorded = {**recorded, checksums.FILE: checksums.digest(folder / checksums.FILE)}
    sums = recorded or {name: checksums.digest(folder / name) for name in names}
    entries = {name: {"sha256": sums[name], "bytes": (folder / name).stat().st_size} for name in names}
    header = {
        "format": FORMAT, "medsearch_version": __version__, "index": root.resolve().name,
        "index_folder": _identity(root.resolve()),  # whose snapshot it is, for `keep` (snapshots_of)
        "generation": generations.number(folder), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
    }
    if key is not None:
        header[SIGNATURE] = {"hmac-sha256": signature(header, key)}
    header = json.dumps(header, indent=2).encode()
    with open(target, "wb") as raw:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with compressor.stream_writer(raw, closefd=False) as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
            tar.addfile(_member(HEADER, len(header)), io.BytesIO(header))
            for name in names:
                with open(folder / name, "rb") as handle:
                    reader = checksums.HashingReader(handle)
                    tar.addfile(_member(MEMBERS + name, entries[name]["bytes"]), reader)
                if reader.hash.hexdigest() != sums[name]:
                    raise DamagedIndexError(f"{root}: {name} of {folder.name} differs from the checksum its commit "
                                            "recorded; no snapshot written (run medsearch verify)")
    return len(entries), sum(e["bytes"] for e in entries.values())


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    return info


# ---- restore ----

MAX_HEADER_BYTES = 1 << 20  # a header lists a generation's files: a few KB
# Archive bytes a member may take beyond its data: its 512-byte header, an extended (pax) header
# (a long name, a size past 8 GiB) and padding. The stream is cut past the data the header lists
# plus this per member: an extended header cannot grow without bound before tarfile parses it.
MEMBER_OVERHEAD = 64 << 10
FREE_MARGIN = 1.05  # a restore needs the listed bytes plus 5% free: it never fills a disk


class _Bounded:
    """The decompressed archive, read through, cut at `limit` bytes (raised as the header is read)."""

    def __init__(self, stream, limit: int, source: Path):
        self.stream, self.limit, self.read_bytes, self.source = stream, limit, 0, source

    def read(self, size: int = -1) -> bytes:
        want = self.limit - self.read_bytes + 1 if size < 0 else min(size, self.limit - self.read_bytes + 1)
        data = self.stream.read(max(0, want))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise DamagedSnapshotError(f"{self.source} holds more than its header lists; nothing was restored")
        return data


def restore(snapshot_path: str | Path, index_dir: str | Path, *, replace: bool = False,
            key: bytes | None = None) -> RestoreReport:
    """Check the snapshot and commit it as the next generation of `index_dir`: a new index, or with
    `replace` an existing one of the same model (its current generation stays readable until pruned,
    as after any write; a damaged one is replaced too: that is how it is repaired). Nothing is
    written to the index unless every check passes, and a new folder is not left behind. `key`: the
    archive must be signed with it (snapshot's `key`), checked before any file is written."""
    started = time.perf_counter()
    source, root = Path(snapshot_path), Path(index_dir)
    if not source.is_file():
        raise BadInputError(f"no snapshot at {source}")
    current = _existing_index(root)
    if current is not None and not replace:
        raise BadInputError(f"{root} already holds an index: give --replace to make the snapshot its next "
                            "generation, or restore into a new folder")
    made = _missing_folders(root)  # what a failed restore removes again
    with generations.writer_lock(root):
        tmp = generations.new_folder(root)
        try:
            header, manifest, files = _unpack(source, tmp, key)
            if current is not None:
                _check_same_model(source, manifest, current, root)
            target = generations.commit(root, tmp)
        except BaseException:
            generations.discard(tmp)
            _remove_made(made)
            raise
    return RestoreReport(root, generations.number(target), header["generation"], manifest.documents, files,
                         time.perf_counter() - started)


def _existing_index(root: Path) -> Manifest | None:
    """The manifest of the index at `root` (an empty one when its CURRENT is damaged: `--replace`
    repairs it), None for a new or empty folder; BadInputError for anything else."""
    if root.is_symlink() and not root.exists():
        raise BadInputError(f"{root} is a symbolic link to nothing: restore into a new or empty folder")
    if index_exists(root):
        return Manifest.peek(generations.current(root)) or Manifest()
    if (root / generations.POINTER).is_file():
        return Manifest()
    if root.is_file() or generations.holds_other_files(root):
        raise BadInputError(f"{root} exists and is not a medsearch index: restore into a new or empty folder")
    return None


def _missing_folders(path: Path) -> list[Path]:
    """`path` and the folders above it that do not exist yet, innermost first."""
    missing = []
    for folder in (path.absolute(), *path.absolute().parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _remove_made(folders: list[Path]) -> None:
    """Remove what a failed restore created: the target (its lock file, nothing else: the temporary
    generation is gone), then each folder above it while empty (another restore's stays)."""
    if not folders:
        return
    (folders[0] / generations.LOCK).unlink(missing_ok=True)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: someone else's now
            return


def _check_same_model(source: Path, manifest: Manifest, current: Manifest, root: Path) -> None:
    """A snapshot replaces an index only with vectors of its model: a service over it would refuse
    another's (its model loaded at start-up). An index whose manifest is unreadable takes any."""
    ours, theirs = (current.get("model") or {}).get("fingerprint"), (manifest.get("model") or {}).get("fingerprint")
    if ours and ours != theirs:
        raise BadInputError(f"{source} holds an index of another model ({manifest.model.get('name')}, fingerprint "
                            f"{theirs}) than {root} ({current.model.get('name')}, fingerprint {ours}): restore it into a "
                            "new folder (a service over this one would refuse its vectors)")


def _unpack(source: Path, tmp: Path, key: bytes | None = None) -> tuple[dict, Manifest, int]:
    """The snapshot unpacked into `tmp` and checked: every file against the header's sums, then the
    generation as `verify` checks one. (header, manifest, files checked); DamagedSnapshotError."""
    header = _extract(source, tmp, key)
    try:
        raw = json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DamagedSnapshotError(f"{source}: its manifest.json is unreadable ({reason(err)}); nothing was restored") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise DamagedSnapshotError(
            f"{source} holds an index of format {version}, made by medsearch {header.get('medsearch_version')}; this "
            f"medsearch ({__version__}) reads format {FORMAT_VERSION}: restore it with that version, then rebuild")
    try:  # the manifest first, field by field: nothing it names (a backend's server, a path) is opened before
        manifest = Manifest.read(tmp, source)
    except IndexFormatError as err:
        raise DamagedSnapshotError(f"{err}; nothing was restored") from None
    if manifest.backend_name != "faiss":
        raise DamagedSnapshotError(f"{source}: a snapshot of a {manifest.backend_name} index; nothing was restored")
    hashed = {name: entry["sha256"] for name, entry in header["files"].items()}  # each file's content, as written
    problems, _ = check_generation(tmp, hashed=hashed)
    if problems:
        raise DamagedSnapshotError(f"{source} is damaged: {problems[0]}; nothing was restored")
    if not (tmp / checksums.FILE).is_file():  # a generation from before records: its commit records them now
        checksums.record(tmp)
    return header, manifest, len(header["files"])


def _extract(source: Path, folder: Path, key: bytes | None = None) -> dict:
    """Unpack the archive's generation into `folder`: the header first (its size bounded), then only
    the files it lists, each of its listed size and sum, each once, the stream cut past what the
    header lists; the header. DamagedSnapshotError (one line) for anything else than an intact
    snapshot: nothing unlisted or oversized is written."""
    import zstandard

    try:
        with open(source, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            bounded = _Bounded(stream, MAX_HEADER_BYTES + MEMBER_OVERHEAD, source)
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                return _extract_members(source, tar, bounded, folder, key)
    except DamagedSnapshotError:
        raise
    except (zstandard.ZstdError, tarfile.TarError, OSError, EOFError, ValueError, MemoryError) as err:
        raise DamagedSnapshotError(f"{source} is not an intact medsearch snapshot ({reason(err)}); nothing was restored") from None


def _extract_members(source: Path, tar: tarfile.TarFile, bounded: _Bounded, folder: Path, key: bytes | None) -> dict:
    first = tar.next()
    if not _is_header(first):
        raise DamagedSnapshotError(f"{source} is not a medsearch snapshot (it does not begin with {HEADER}); "
                                   "nothing was restored")
    header = _header(source, tar.extractfile(first).read())
    if key is not None:
        _check_signature(source, header, key)
    listed = header["files"]
    total = sum(entry["bytes"] for entry in listed.values())
    if total * FREE_MARGIN > shutil.disk_usage(folder).free:
        raise DamagedSnapshotError(f"{source} lists {total / 1e6:.1f} MB, more than {folder.parent} has free "
                                   "(with a 5% margin); nothing was restored")
    bounded.limit = bounded.read_bytes + total + MEMBER_OVERHEAD * (len(listed) + 2)
    found: set[str] = set()
    while (member := tar.next()) is not None:  # (iterating the tar would yield the header again)
        name = _member_path(member)
        if name not in listed or name in found or member.size != listed[name]["bytes"]:
            why = "twice" if name in found else "unlisted" if name not in listed else "not of its listed size"
            raise DamagedSnapshotError(f"{source} is damaged: {ascii(name)[:100]} is {why}; nothing was restored")
        found.add(name)
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as data, open(target, "wb") as out:
            reader = checksums.HashingReader(data)
            shutil.copyfileobj(reader, out, checksums.CHUNK)
        if reader.hash.hexdigest() != listed[name]["sha256"]:
            raise DamagedSnapshotError(f"{source} is damaged: {name} differs from its checksum; nothing was restored")
    missing = sorted(set(listed) - found)
    if missing:
        raise DamagedSnapshotError(f"{source} is damaged: {ascii(missing[0])[:100]} is missing; nothing was restored")
    return header


# ---- signed snapshots ----
# Checksums prove an archive whole, not who wrote it: anyone can forge one with sums that agree. A
# key shared by whoever takes and restores snapshots proves that: the header, which lists every
# file's sha256, is signed with HMAC-SHA256, so no byte of the archive can change without the key.

SIGNATURE = "signature"
MIN_KEY_BYTES = 16


def read_key(path: str | Path) -> bytes:
    """A signing key from a file (its bytes, surrounding whitespace stripped): at least MIN_KEY_BYTES,
    e.g. `openssl rand -hex 32 > snapshot.key`."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as err:
        raise BadInputError(f"cannot read the key file {path}: {reason(err)}") from None
    if len(key) < MIN_KEY_BYTES:
        raise BadInputError(f"the key file {path} holds {len(key)} bytes; a key has at least {MIN_KEY_BYTES} "
                            "(make one with: openssl rand -hex 32 > FILE)")
    return key


def signature(header: dict, key: bytes) -> str:
    """HMAC-SHA256 of the header (without its signature) as canonical JSON."""
    import hashlib
    import hmac

    body = {name: value for name, value in header.items() if name != SIGNATURE}
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


def _signed(header: dict, key: bytes) -> bool:
    import hmac

    given = header.get(SIGNATURE)
    given = given.get("hmac-sha256") if isinstance(given, dict) else None
    return isinstance(given, str) and hmac.compare_digest(given, signature(header, key))


def _check_signature(source: Path, header: dict, key: bytes) -> None:
    given = header.get(SIGNATURE)
    given = given.get("hmac-sha256") if isinstance(given, dict) else None
    if not isinstance(given, str):
        raise DamagedSnapshotError(f"{source} is not signed, and a key was given: restore it without --key-file only "
                                   "if you trust where it came from; nothing was restored")
    if not _signed(header, key):
        raise DamagedSnapshotError(f"{source} is not signed with this key (forged, changed, or signed with another "
                                   "key); nothing was restored")


def _is_header(member: tarfile.TarInfo | None) -> bool:
    """Whether an archive's first member is a header: snapshot.json, a file within its bound."""
    return member is not None and member.name == HEADER and member.isfile() and member.size <= MAX_HEADER_BYTES


def _header(source: Path, data: bytes) -> dict:
    """The parsed header, its shape checked: format, a generation number, and per file a sha256 and a size."""
    try:
        header = json.loads(data)
    except (ValueError, RecursionError):
        header = None
    files = header.get("files") if isinstance(header, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(files, dict):
        raise DamagedSnapshotError(f"{source} is not a medsearch snapshot ({HEADER} of format {FORMAT} unreadable); "
                                   "nothing was restored")
    generation = header.get("generation")
    if type(generation) is not int or not 0 < generation < 10**9:
        raise DamagedSnapshotError(f"{source}: {HEADER} names no generation number; nothing was restored")
    for name, entry in files.items():
        ok = (name.isascii() and name.isprintable() and isinstance(entry, dict)
              and isinstance(entry.get("sha256"), str) and type(entry.get("bytes")) is int and entry["bytes"] >= 0)
        if not ok:
            raise DamagedSnapshotError(f"{source}: {HEADER} lists {ascii(name)[:100]}, not a file name with a sha256 "
                                       "and a size; nothing was restored")
    return header


def _member_path(member: tarfile.TarInfo) -> str:
    """The generation file a member holds: a regular file under generation/, with no '..', absolute
    or empty part (a hostile archive writes nowhere else)."""
    relative = PurePosixPath(member.name[len(MEMBERS):]) if member.name.startswith(MEMBERS) else None
    if (not member.isfile() or relative is None or relative.is_absolute() or not relative.parts
            or any(part in ("", ".", "..") for part in relative.parts) or not member.name.isprintable()
            or "\\" in member.name or not member.name.isascii()):
        raise DamagedSnapshotError(f"unexpected member {ascii(member.name)[:100]} in the archive: not a medsearch snapshot")
    return str(relative)
