"""Where an index's vectors live and are searched: `faiss` (the generation folder's own files,
faiss.py) or `qdrant` (a Qdrant collection, qdrant.py), chosen by the manifest's `backend` name.
base.py holds the interface (the whole lifecycle of a generation's vectors); funnel.py the fast
tier's calibration and exact re-rank, which both use."""

from __future__ import annotations

from pathlib import Path

from medsearch.index.backends.base import VectorBackend
from medsearch.errors import BadInputError

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
