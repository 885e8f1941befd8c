"""The one way a new generation of an index folder is written: the full build (build.py), every
write (writes.py: upsert, delete, configure, compact) and a snapshot's restore (snapshot.py).

    with GenerationWriter(root, derived=False, replaces=True) as gen:
        ...write the generation's files into gen.folder...
        gen.written = backend.build(gen.folder, ...)   # what the backend made (outside the folder too)
        gen.commit(manifest)                           # manifest.json, checksums, the switch

The writer holds the writer lock for the block (unless `lock` is False: the caller holds it), gives
the block a temporary folder (generations.new_folder), and commits it (generations.commit:
checksums recorded, fsynced, renamed, CURRENT replaced). A block that fails, or ends without a
commit, leaves nothing: the folder is discarded and what the backend made for it (`written`) is
abandoned. With `replaces` (a generation not derived by a write: a build, a compaction), after the
switch the generation it replaced frees what it kept outside the folder (a Qdrant collection; its
files stay for its readers), and a format-1 index's files in the folder itself go.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from pathlib import Path

from medsearch.errors import MedsearchError, NoSpaceError
from medsearch.index import generations, layout
from medsearch.index.backends import open_backend
from medsearch.index.manifest import FORMAT_VERSION, Manifest


class GenerationWriter:
    """One new generation of the index folder `root` (see the module's docstring).

    `lock`: take the writer lock (False: the caller holds it). `derived` and `checked`: as
    generations.commit takes them (a write derives its generation from the current one; a build or
    a compaction that checked its base whole passes derived=False). `replaces`: after the switch,
    the replaced generation's backend is told (replaced_by) and format-1 files are removed."""

    def __init__(self, root: str | Path, *, lock: bool = True, derived: bool = True,
                 checked: frozenset[str] = frozenset(), replaces: bool = False):
        self.root = Path(root)
        self.lock, self.derived, self.checked, self.replaces = lock, derived, checked, replaces
        self.folder: Path | None = None  # the generation being written
        self.written = None  # the backend's part (VectorBackend), abandoned if the block fails
        self.committed: Path | None = None  # the generation's final folder, once committed
        self.manifest: Manifest | None = None
        self._stack = contextlib.ExitStack()
        self._previous: Path | None = None
        self._replaced: Manifest | None = None

    def __enter__(self) -> "GenerationWriter":
        if self.lock:
            self._stack.enter_context(generations.writer_lock(self.root))
        try:
            if self.replaces:
                self._previous = generations.current(self.root)
                self._replaced = Manifest.peek(self._previous)
            self.folder = generations.new_folder(self.root)
        except BaseException:
            self._stack.close()
            raise
        return self

    def commit(self, manifest: Manifest | None = None) -> Path:
        """Write `manifest` into the folder (None: the folder holds its own, a restore's) and make
        the folder the current generation; its final path."""
        if manifest is not None:
            manifest.write(self.folder)
        self.manifest = manifest
        self.committed = generations.commit(self.root, self.folder, derived=self.derived, checked=self.checked)
        return self.committed

    def discard(self) -> None:
        """Remove the folder being written (again harmless)."""
        generations.discard(self.folder)

    def __exit__(self, kind, error, trace) -> None:
        with self._stack:
            if self.committed is None:
                self.discard()
                if self.written is not None:
                    self.written.abandon(Manifest.peek(generations.current(self.root)))
                if error is not None and no_space(error):  # (the lock goes as the stack closes)
                    raise NoSpaceError(f"{self.root}: no space left on the device while writing a new generation; "
                                       "the index is unchanged: free some space and run it again") from error
                return
            if self.replaces:
                self._after_replace()

    def _after_replace(self) -> None:
        replaced = self._replaced
        if replaced is not None and replaced.get("format_version") == FORMAT_VERSION and self.manifest is not None:
            with contextlib.suppress(MedsearchError):  # the old generation's collection; its files stay for readers
                open_backend(self._previous, replaced).replaced_by(self.manifest)
        remove_format1_files(self.root)


def no_space(err: BaseException) -> bool:
    """Whether an error says the device is full, as the file system (ENOSPC, a quota), SQLite or
    faiss's writer say it."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, sqlite3.OperationalError):
        return "disk is full" in str(err)
    return isinstance(err, RuntimeError) and "No space left on device" in str(err)


def remove_format1_files(root: Path) -> None:
    """A format-1 index kept its files in the folder itself; once a generation replaces it, drop them."""
    if (root / layout.MANIFEST).is_file():
        for path in root.iterdir():
            if path.is_file() and path.name not in (layout.POINTER, layout.LOCK):
                path.unlink()
