"""Snapshots of an index and their restore (the archive's format: archive.py; the check that an
index on disk is whole: integrity.py).

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
from pathlib import Path

from medsearch.errors import (
    BadInputError,
    DamagedIndexError,
    IndexFormatError,
    IndexNotFoundError,
    reason,
)
from medsearch.index import checksums, generations, layout
from medsearch.index.archive import (
    FORMAT,
    HEADER,
    MAX_HEADER_BYTES,
    MEMBER_OVERHEAD,
    MEMBERS,
    SIGNATURE,
    Bounded,
    DamagedSnapshotError,
    check_signature,
    is_header,
    member_path,
    parse_header,
    read_header,
    signature,
    signed,
)
from medsearch.index.backends import backend_class
from medsearch.index.folder import index_exists, open_index
from medsearch.index.integrity import check_generation
from medsearch.index.manifest import FORMAT_VERSION, Manifest
from medsearch.index.writer import GenerationWriter
from medsearch.timestamps import utc_timestamp
from medsearch.version import __version__

ZSTD_LEVEL = 3
FREE_MARGIN = 1.05  # a restore needs the listed bytes plus 5% free: it never fills a disk


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
        if not backend_class(manifest.backend_name).in_folder:
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
    return [path for path, header in _snapshots(index_dir, folder) if key is None or signed(header, key)]


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


def _check_budget(root: Path, where: Path, folder: Path, keep: int | None, max_bytes: int, key: bytes | None) -> None:
    mine = _snapshots(root, where)  # this index's, signed or not: all take disk
    removed = []  # what --keep removes once this one is written
    if keep is not None:
        removed = [path for path, header in mine if key is None or signed(header, key)]
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
        names.append(layout.CHECKSUMS)
        recorded = {**recorded, layout.CHECKSUMS: checksums.digest(folder / layout.CHECKSUMS)}
    sums = recorded or {name: checksums.digest(folder / name) for name in names}
    entries = {name: {"sha256": sums[name], "bytes": (folder / name).stat().st_size} for name in names}
    header = {
        "format": FORMAT, "medsearch_version": __version__, "index": root.resolve().name,
        "index_folder": _identity(root.resolve()),  # whose snapshot it is, for `keep` (snapshots_of)
        "generation": generations.number(folder), "created": utc_timestamp(),
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
    with GenerationWriter(root) as gen:  # (the generation brings its checksums, checked here)
        try:
            header, manifest, files = _unpack(source, gen.folder, key)
            if current is not None:
                _check_same_model(source, manifest, current, root)
            target = gen.commit()
        except BaseException:
            gen.discard()
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
    if (root / layout.POINTER).is_file():
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
    (folders[0] / layout.LOCK).unlink(missing_ok=True)
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
        raw = json.loads((tmp / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DamagedSnapshotError(f"{source}: its {layout.MANIFEST} is unreadable ({reason(err)}); nothing was restored") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise DamagedSnapshotError(
            f"{source} holds an index of format {version}, made by medsearch {header.get('medsearch_version')}; this "
            f"medsearch ({__version__}) reads format {FORMAT_VERSION}: restore it with that version, then rebuild")
    try:  # the manifest first, field by field: nothing it names (a backend's server, a path) is opened before
        manifest = Manifest.read(tmp, source)
    except IndexFormatError as err:
        raise DamagedSnapshotError(f"{err}; nothing was restored") from None
    if not backend_class(manifest.backend_name).in_folder:
        raise DamagedSnapshotError(f"{source}: a snapshot of a {manifest.backend_name} index; nothing was restored")
    hashed = {name: entry["sha256"] for name, entry in header["files"].items()}  # each file's content, as written
    problems, _ = check_generation(tmp, hashed=hashed)
    if problems:
        raise DamagedSnapshotError(f"{source} is damaged: {problems[0]}; nothing was restored")
    if not (tmp / layout.CHECKSUMS).is_file():  # a generation from before records: its commit records them now
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
            bounded = Bounded(stream, MAX_HEADER_BYTES + MEMBER_OVERHEAD, source)
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                return _extract_members(source, tar, bounded, folder, key)
    except DamagedSnapshotError:
        raise
    except (zstandard.ZstdError, tarfile.TarError, OSError, EOFError, ValueError, MemoryError) as err:
        raise DamagedSnapshotError(f"{source} is not an intact medsearch snapshot ({reason(err)}); nothing was restored") from None


def _extract_members(source: Path, tar: tarfile.TarFile, bounded: Bounded, folder: Path, key: bytes | None) -> dict:
    first = tar.next()
    if not is_header(first):
        raise DamagedSnapshotError(f"{source} is not a medsearch snapshot (it does not begin with {HEADER}); "
                                   "nothing was restored")
    header = parse_header(source, tar.extractfile(first).read())
    if key is not None:
        check_signature(source, header, key)
    listed = header["files"]
    total = sum(entry["bytes"] for entry in listed.values())
    if total * FREE_MARGIN > shutil.disk_usage(folder).free:
        raise DamagedSnapshotError(f"{source} lists {total / 1e6:.1f} MB, more than {folder.parent} has free "
                                   "(with a 5% margin); nothing was restored")
    bounded.limit = bounded.read_bytes + total + MEMBER_OVERHEAD * (len(listed) + 2)
    found: set[str] = set()
    while (member := tar.next()) is not None:  # (iterating the tar would yield the header again)
        name = member_path(member)
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


