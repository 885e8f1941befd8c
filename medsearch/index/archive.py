"""The snapshot archive's format (snapshot.py writes and restores it): its header, its members,
the bound on what a restore reads, and the header's signature.

A snapshot (`.tar.zst`, zstd with its frame checksum) holds first `snapshot.json` (the format, the
index's name, the generation number, the medsearch version, each file's sha256 and size), then
`generation/<file>` for every file of the generation, its `checksums.sha256` included.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath

from medsearch.errors import BadInputError, reason

FORMAT = "medsearch-snapshot/1"
HEADER = "snapshot.json"
MEMBERS = "generation/"


class DamagedSnapshotError(BadInputError):
    """An archive that is not an intact medsearch snapshot."""


MAX_HEADER_BYTES = 1 << 20  # a header lists a generation's files: a few KB
# Archive bytes a member may take beyond its data: its 512-byte header, an extended (pax) header
# (a long name, a size past 8 GiB) and padding. The stream is cut past the data the header lists
# plus this per member: an extended header cannot grow without bound before tarfile parses it.
MEMBER_OVERHEAD = 64 << 10


class Bounded:
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


def read_header(path: Path) -> dict | None:
    """An archive's header (its first member), or None when it has no readable one."""
    import zstandard

    try:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            bounded = Bounded(stream, MAX_HEADER_BYTES + MEMBER_OVERHEAD, path)
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                first = tar.next()
                if not is_header(first):
                    return None
                header = json.loads(tar.extractfile(first).read())
    except (DamagedSnapshotError, zstandard.ZstdError, tarfile.TarError, OSError, EOFError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


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


def signed(header: dict, key: bytes) -> bool:
    import hmac

    given = header.get(SIGNATURE)
    given = given.get("hmac-sha256") if isinstance(given, dict) else None
    return isinstance(given, str) and hmac.compare_digest(given, signature(header, key))


def check_signature(source: Path, header: dict, key: bytes) -> None:
    given = header.get(SIGNATURE)
    given = given.get("hmac-sha256") if isinstance(given, dict) else None
    if not isinstance(given, str):
        raise DamagedSnapshotError(f"{source} is not signed, and a key was given: restore it without --key-file only "
                                   "if you trust where it came from; nothing was restored")
    if not signed(header, key):
        raise DamagedSnapshotError(f"{source} is not signed with this key (forged, changed, or signed with another "
                                   "key); nothing was restored")


def is_header(member: tarfile.TarInfo | None) -> bool:
    """Whether an archive's first member is a header: snapshot.json, a file within its bound."""
    return member is not None and member.name == HEADER and member.isfile() and member.size <= MAX_HEADER_BYTES


def parse_header(source: Path, data: bytes) -> dict:
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


def member_path(member: tarfile.TarInfo) -> str:
    """The generation file a member holds: a regular file under generation/, with no '..', absolute
    or empty part (a hostile archive writes nowhere else)."""
    relative = PurePosixPath(member.name[len(MEMBERS):]) if member.name.startswith(MEMBERS) else None
    if (not member.isfile() or relative is None or relative.is_absolute() or not relative.parts
            or any(part in ("", ".", "..") for part in relative.parts) or not member.name.isprintable()
            or "\\" in member.name or not member.name.isascii()):
        raise DamagedSnapshotError(f"unexpected member {ascii(member.name)[:100]} in the archive: not a medsearch snapshot")
    return str(relative)
