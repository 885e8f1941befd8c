"""Committed generations of an index folder, and the one-writer lock (the folder's files: layout.py).

    indexes/<name>/
      CURRENT        the committed generation's folder name, replaced atomically
      gen-000007/    a complete index: manifest.json, the document store, vectors.faiss ...
      gen-000006/    the one before (kept: a reader may still be on it)
      .lock          held (flock) by the one writer
      .pin-<id>      names a generation a snapshot is copying (held by flock; prune keeps it)

A generation is kept while something reads it and removed once nothing does: every process that
opens one holds a shared lease on it (an flock on its manifest, `lease`, let go when the index is
closed or the process dies, even by kill -9), a snapshot copying one pins it, and `prune` removes
every generation but the current one that neither holds. A folder that a failed switch left
(numbered past CURRENT, never current, so never read) is removed at once. So a folder under
sustained writes holds the current generation, the ones still being read (a service moves to the
newest on its next query) and the one being written.

A write builds the next generation in a temporary folder beside the others, records the checksums
of its files (checksums.py), fsyncs it, renames
it to `gen-NNNNNN`, then replaces CURRENT: until that last rename every reader, and every
process that opens the index, sees the previous generation whole; after it, the new one.
A writer killed at any moment leaves at most a temporary folder, which the next writer removes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from medsearch.errors import BadInputError, MismatchError
from medsearch.index import checksums, layout

LEASED = layout.MANIFEST  # the file of a generation whose flock is its readers' lease
_GENERATIONS = f"{layout.GENERATION_PREFIX}*"


class IndexLockedError(MismatchError):
    """Another process is writing to this index."""


def current(root: Path) -> Path | None:
    """The committed generation's folder, or None when the folder has none."""
    try:
        name = (root / layout.POINTER).read_bytes().decode("ascii").strip()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError):
        return None  # (a CURRENT that is not one names no generation)
    return root / name if layout.GENERATION.match(name) else None


def holds_other_files(root: Path) -> bool:
    """Whether the folder holds anything but what an index's first build leaves before its commit (a
    lock file, a killed writer's temporary folder): a folder a new index must not be written into
    unless it is one already."""
    return root.exists() and any(not p.name.startswith((layout.LOCK, layout.TMP)) for p in root.iterdir())


def number(folder: Path) -> int:
    match = layout.GENERATION.match(folder.name)
    return int(match.group(1)) if match else 0


def new_folder(root: Path) -> Path:
    """A temporary folder inside `root` for the next generation (removed by `commit` or `discard`).
    Created with the process's umask (not mkdtemp's 0700): an index built by one user can be served
    by another that the umask lets read it."""
    root.mkdir(parents=True, exist_ok=True)
    while True:
        folder = root / f"{layout.TMP}{uuid.uuid4().hex[:12]}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # pragma: no cover (a 48-bit collision)
            continue


def commit(root: Path, tmp: Path, derived: bool = True, checked: frozenset[str] = frozenset()) -> Path:
    """Make the finished folder `tmp` the current generation; return its final path. `derived`: tmp
    was made from the current generation (a write), whose files it rewrote are checked against their
    record first (checksums.record; `checked`: files the write checked already); a build from a
    corpus, or a compaction that checked the whole generation before, passes False."""
    previous = current(root)
    if previous is not None:  # (with no readable CURRENT, no folder can be told to be a failed switch)
        _drop_failed_switches(root, previous)  # never read, and never to count as the one before this
    following = max([number(p) for p in root.glob(_GENERATIONS)] + [number(previous) if previous else 0]) + 1
    target = root / layout.generation_name(following)
    if not (tmp / layout.CHECKSUMS).is_file():  # a restored generation brings its own, already checked
        checksums.record(tmp, previous if derived else None, checked)
    _fsync_tree(tmp)
    os.replace(tmp, target)
    pointer = root / f".{layout.POINTER}{layout.TMP}{os.getpid()}"
    with open(pointer, "w") as handle:
        handle.write(target.name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer, root / layout.POINTER)
    _fsync_dir(root)
    prune(root, retired=previous is not None)
    return target


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def link_file(source: Path, target: Path) -> None:
    """A committed generation's file, shared by the next one (a hard link: committed files never
    change), or copied where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _drop_failed_switches(root: Path, committed: Path | None) -> None:
    newest = number(committed) if committed else 0
    for path in root.glob(_GENERATIONS):
        if layout.GENERATION.match(path.name) and number(path) > newest:
            _remove(path)


def prune(root: Path, retired: bool = True) -> None:
    """Remove temporary folders of killed writers, and every generation but the current one that no
    reader leases and no snapshot pins. `commit` calls it, with the writer lock held, after it has
    dropped the folders of failed switches; with `retired` False (a commit over a damaged
    CURRENT, which cannot tell which of them was current) the generations stay."""
    committed = current(root)
    newest = number(committed) if committed else 0
    kept = _pinned(root)
    for path in root.iterdir():
        if path.name.startswith((layout.TMP, f".{layout.POINTER}{layout.TMP}", layout.REMOVING)):
            _remove(path)
        elif (retired and path.is_dir() and layout.GENERATION.match(path.name) and number(path) < newest
              and path.name not in kept):
            _remove_unread(root, path)


def _remove_unread(root: Path, folder: Path) -> None:
    """Remove a retired generation unless a reader leases it: with its lease taken exclusively (so
    no reader holds it), the folder is renamed out of readers' sight, then removed."""
    try:
        handle = open(folder / LEASED, "rb")
    except FileNotFoundError:  # not a whole generation (a manifest lost): nobody can open it
        _remove(folder)
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # leased: a reader has it open
            return
        gone = root / f"{layout.REMOVING}{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, gone)
    _remove(gone)


def lease(root: Path) -> tuple[Path, object] | None:
    """The current generation's folder and a shared lease on it (an open file holding a shared
    flock; closing it lets go), or None when the folder has no committed generation. A generation
    removed between the read of CURRENT and the lease is noticed (its manifest is no longer at its
    name) and the new current one is leased instead."""
    for _ in range(100):
        folder = current(root)
        if folder is None:
            return None
        try:
            handle = open(folder / LEASED, "rb")
        except FileNotFoundError:
            if current(root) == folder:  # not removed under us: a current generation without a manifest
                return folder, None
            continue
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        if _same_inode(folder / LEASED, handle.fileno()):
            return folder, handle
        handle.close()  # pruned meanwhile: the next one
    raise MismatchError(f"{root}: its generations changed 100 times while one was being opened; try again")


def _pinned(root: Path) -> set[str]:
    """The generations that live pins name. A pin whose holder has died (its flock free) is removed;
    a live pin that names nothing yet (being written) keeps every generation."""
    kept: set[str] = set()
    for pin in root.glob(f"{layout.PIN}*"):
        try:
            handle = open(pin, "r")
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a live pin
                name = handle.read().strip()
                kept |= {name} if name else {p.name for p in root.glob(_GENERATIONS)}
                continue
            pin.unlink(missing_ok=True)  # its holder died
    return kept


@contextmanager
def pinned(root: Path):
    """The current generation's folder (None when there is none), kept from `prune` for the block
    (a snapshot copying it) by a pin file held with flock: a holder killed at any moment leaves a
    pin that the next prune removes. No lock that writers or readers take is held."""
    while True:
        folder = current(root)
        if folder is None:
            yield None
            return
        pin = root / f"{layout.PIN}{uuid.uuid4().hex[:12]}"
        try:
            handle = open(pin, "w")
        except PermissionError:
            raise BadInputError(f"a snapshot writes a pin file in {root} (it keeps the generation it copies from "
                                "being pruned): run it as a user who may write there") from None
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            handle.write(folder.name)
            handle.flush()
            # a prune between the open and the lock may have taken the pin for a dead one, and the
            # generation may have gone before the pin named it (it had been retired for minutes):
            # then pin what is current now
            held = _same_inode(pin, handle.fileno()) and folder.is_dir()
            try:
                if held:
                    yield folder
                    return
            finally:
                if _same_inode(pin, handle.fileno()):
                    pin.unlink(missing_ok=True)


def _same_inode(path: Path, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            _fsync_tree(path)
        elif path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def writer_lock(root: Path):
    """Hold the index's writer lock for the block; a second writer gets IndexLockedError at once.
    The lock is an flock: the kernel releases it when the holder dies, even by kill -9."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / layout.LOCK, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise IndexLockedError(f"{root} is being written by {holder}; try again when it has finished") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
