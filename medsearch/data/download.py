"""Downloads with a cache: the one place that names the public sources' URLs.

A file is fetched once into the cache folder (written as `.part`, renamed when complete), so an
interrupted download never leaves a file that looks whole. Offline, the error says how to use a
local copy instead (`--from PATH`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from medsearch.errors import DownloadError, MedsearchError

# The public sources. MedQuAD: the XML of its public repository; BEIR: the benchmark's archives.
SOURCES = {
    "medquad": "https://github.com/abachaa/MedQuAD/archive/refs/heads/master.zip",
    "beir": "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip",
}
DEFAULT_CACHE = Path(os.environ.get("MEDSEARCH_CACHE") or Path.home() / ".cache" / "medsearch")


def fetch(url: str, cache: str | Path = DEFAULT_CACHE, progress: bool = False, timeout: float = 60) -> Path:
    """The cached copy of `url` (downloaded first if the cache lacks it)."""
    cache = Path(cache)
    target = cache / url.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm.auto import tqdm

            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"could not download {url} ({reason})") from None
    os.replace(partial, target)
    return target


def unpacked(archive: Path, cache: str | Path = DEFAULT_CACHE) -> Path:
    """A .zip unpacked once into the cache (next to a `.done` marker); a folder is returned as is."""
    archive = Path(archive)
    if archive.is_dir():
        return archive
    if not archive.is_file():
        raise MedsearchError(f"not found: {archive}")
    import zipfile

    if not zipfile.is_zipfile(archive):
        raise MedsearchError(f"{archive} is neither a folder nor a .zip archive")
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = Path(cache) / "unpacked" / f"{archive.stem}-{key}"
    if (target / ".done").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(target)
    (target / ".done").write_text(str(archive.resolve()) + "\n")
    return target


def source_folder(url: str, local: str | Path | None = None, cache: str | Path | None = None,
                  progress: bool = False) -> Path:
    """The unpacked folder of a source: the local copy (an archive or a folder) when given, else
    the download of `url` (cached)."""
    cache = Path(cache) if cache else DEFAULT_CACHE
    return unpacked(Path(local) if local else fetch(url, cache, progress=progress), cache)
