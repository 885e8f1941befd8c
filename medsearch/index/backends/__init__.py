"""Where an index's vectors live and are searched: `faiss` (the generation folder's own files,
faiss.py) or `qdrant` (a Qdrant collection, qdrant.py), chosen by the manifest's `backend` name.
base.py holds the interface (the whole lifecycle of a generation's vectors); funnel.py the fast
tier's calibration and exact re-rank, which both use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from medsearch.errors import BadInputError
from medsearch.index.backends.base import VectorBackend

NAMES = ("faiss", "qdrant")


def backend_class(name: str) -> type[VectorBackend]:
    """The backend of that name (a Qdrant one needs the `qdrant` extra only once it is used)."""
    if name == "faiss":
        from medsearch.index.backends.faiss import FaissBackend

        return FaissBackend
    if name == "qdrant":
        from medsearch.index.backends.qdrant import QdrantBackend

        return QdrantBackend
    raise BadInputError(f"unknown vector backend '{name}' (this medsearch has: {', '.join(NAMES)})")


def open_backend(folder: Path | None, manifest) -> VectorBackend:
    """The backend of a generation: its folder and its manifest (manifest.Manifest)."""
    return backend_class(manifest.backend_name)(folder, manifest)


class BackendOptionsError(BadInputError):
    """Build options that do not go together (the CLI shows it as a usage error of its flags)."""


def build_settings(index_dir: str | Path, name: str | None = None, url: str | None = None, path: str | None = None,
                   collection: str | None = None, shards: int | None = None, replicas: int | None = None,
                   current: Callable[[], dict | None] | None = None) -> dict | None:
    """The `backend` build option (the manifest's entry) from a build's backend options: `name` (faiss,
    qdrant or None), a Qdrant server `url` or local-mode `path`, `collection`, `shards`, `replicas`.
    None: the index's own, or faiss for a new one; a Qdrant location alone chooses qdrant. `current`
    gives the index's own `backend` entry (None: no index yet), asked only when a Qdrant collection
    needs a name. Options that do not go together: BackendOptionsError, named as the CLI's flags."""
    qdrant_only = {"--qdrant-url": url, "--qdrant-path": path, "--collection": collection, "--shards": shards,
                   "--replicas": replicas}
    given = [flag for flag, value in qdrant_only.items() if value is not None]
    if name == "faiss" and given:
        raise BackendOptionsError(f"{', '.join(given)} only go with --backend qdrant")
    if name is None and not (url or path):
        if given:
            raise BackendOptionsError(f"{', '.join(given)} need a location: --qdrant-url or --qdrant-path")
        return None
    if name == "faiss":
        return {"name": "faiss"}
    if not (url or path):
        raise BackendOptionsError("--backend qdrant needs a location: --qdrant-url URL (a server) or --qdrant-path DIR (local mode)")
    if url and path:
        raise BackendOptionsError("give one of --qdrant-url and --qdrant-path")
    from medsearch.index.backends.qdrant import settings_for_index

    return settings_for_index(index_dir, url=url, path=path, collection=collection, shards=shards, replicas=replicas,
                              current=current() if collection is None and current is not None else None)
