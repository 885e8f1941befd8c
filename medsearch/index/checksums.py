"""The checksums a generation's commit records of its files, and their check.

Every committed generation holds `checksums.sha256`: one line per file of the folder (sub-folders
included, the checksums file itself excepted), in the format of coreutils' `sha256sum`, so
`cd gen-000007 && sha256sum -c checksums.sha256` checks a generation without medsearch:

    3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b  vectors.faiss
    ...

A write shares the files it does not change with the generation before (hard links: committed
files never change); their sums are carried over from that generation's record, not read again. It
hashes what it wrote, and the files of the generation before that it rewrote (checked first: a
write must not record damaged content under fresh sums).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from medsearch.errors import DamagedIndexError
from medsearch.index import layout

CHUNK = 1 << 20


def files(folder: Path) -> Iterator[Path]:
    """The generation's files (relative paths, sorted) that a record covers: all but the record."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder) != Path(layout.CHECKSUMS):
            yield path.relative_to(folder)


def digest(path: Path) -> str:
    value = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            value.update(block)
    return value.hexdigest()


def read(folder: Path) -> dict[str, str] | None:
    """The recorded sums (relative path -> hex digest), or None when the folder has no record (a
    generation committed before medsearch recorded them). ValueError for a record that is not one."""
    try:
        text = (folder / layout.CHECKSUMS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse(text)


def parse(text: str) -> dict[str, str]:
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        value, sep, name = line.partition("  ")
        if not sep or len(value) != 64 or any(c not in "0123456789abcdef" for c in value) or not name:
            raise ValueError(f"line {number} of {layout.CHECKSUMS} is not '<sha256>  <file>'")
        sums[name] = value
    if not sums:
        raise ValueError(f"{layout.CHECKSUMS} is empty")
    return sums


def render(sums: dict[str, str]) -> str:
    return "".join(f"{value}  {name}\n" for name, value in sorted(sums.items()))


def record(folder: Path, previous: Path | None = None, checked: frozenset[str] = frozenset()) -> dict[str, str]:
    """Write `folder`'s record; files that are the very files of `previous` (hard links) keep the
    sums `previous` recorded.

    The files of `previous` that `folder` rewrote (a write's document store, its appended vectors and tiers)
    are checked against their record first (but those in `checked`, which the write checked before
    it read them): a write must not carry damage into a generation whose fresh checksums would call
    it good. DamagedIndexError names the first one that differs."""
    known = _recorded(previous) if previous is not None else {}
    if known and set(known) != {str(name) for name in files(previous)}:  # a file without its sum, or gone
        raise _damaged(f"{previous.name} does not hold the files its commit recorded")
    sums = {}
    for name in files(folder):
        path, key = folder / name, str(name)
        if key in known and _same_file(path, previous / name):
            sums[key] = known[key]
            continue
        if key in known and key not in checked and (previous / name).is_file() and digest(previous / name) != known[key]:
            raise _damaged(f"{previous.name}/{key} differs from the checksum its commit recorded")
        sums[key] = digest(path)
    (folder / layout.CHECKSUMS).write_text(render(sums), encoding="utf-8")
    return sums


def check(folder: Path, name: str) -> None:
    """DamagedIndexError unless `folder`'s file `name` has the sum its commit recorded (nothing to
    check in a generation committed before records). A write checks the document store so before it reads it."""
    known = _recorded(folder).get(name)
    if known is not None and digest(folder / name) != known:
        raise _damaged(f"{folder.name}/{name} differs from the checksum its commit recorded")


def _recorded(folder: Path) -> dict[str, str]:
    """A generation's record for a write to check against ({} when it has none)."""
    try:
        return read(folder) or {}
    except (OSError, ValueError) as err:
        raise _damaged(f"{folder.name}/{layout.CHECKSUMS} is unreadable ({err})") from None


def _damaged(what: str) -> DamagedIndexError:
    return DamagedIndexError(f"{what}: the index is damaged; not writing to it (medsearch verify says more)")


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def problems(folder: Path, sums: dict[str, str], hashed: dict[str, str] | None = None) -> list[str]:
    """What differs between `folder`'s files and `sums`: one line per missing, unreadable, changed
    (a flipped byte, a truncation) or unexpected file. `hashed`: sums of files already computed from
    their content (a restore hashed each file as it wrote it), not read again."""
    hashed = hashed or {}
    found = []
    present = {str(name) for name in files(folder)}
    for name, value in sorted(sums.items()):
        if name not in present:
            found.append(f"{name}: missing")
            continue
        try:
            same = (hashed.get(name) or digest(folder / name)) == value
        except OSError as err:
            found.append(f"{name}: unreadable ({err.strerror or err})")
            continue
        if not same:
            found.append(f"{name}: content differs from its checksum (a changed or damaged file)")
    found += [f"{name}: not in the generation's checksums (a file added after its commit)"
              for name in sorted(present - set(sums))]
    return found


class HashingReader:
    """A file read through, hashed as it goes (a snapshot hashes what it archives in one read)."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hash.update(data)
        return data
