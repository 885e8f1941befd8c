"""The seam between an index folder and where its vectors live.

A backend is chosen by the manifest's `backend` name (backends/__init__.py) and owns everything
about its vectors, from the build of a generation to its last search:

  build        write a new generation's vectors from one encoding pass (and calibrate its funnel)
  append       the next generation of a write: this one's rows and the new ones after them
  carry_over   the next generation of a delete-only write: the same rows (dead ones masked)
  calibrate    the fast tier's stage and candidate count, measured on a generation's live rows
  committed    after the switch to this generation: what was due then (Qdrant: old points go)
  replaced_by  after a rebuild replaced this generation: free what lives outside the folder
  abandon      a build that never became current: free what it made outside the folder
  load, close  everything in memory now (a service's new generation) / let go of the files
  verify       whether its vectors agree with the manifest (row counts, dims): `medsearch verify`
  search       the dense top list of a tier among the rows a search may return

The index (index.py) and the writes (updates.py) call these and nothing else of a backend. Shared
here: the Matryoshka prefix of a vector and the collapse of chunk hits to documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import faiss
import numpy as np

if TYPE_CHECKING:
    from medsearch.index.filters import Filter
    from medsearch.index.manifest import Manifest

Ranked = list[list[tuple[int, float]]]  # per query: (chunk row, score), one document per hit, best first


class VectorBackend(Protocol):
    name: ClassVar[str]
    # Rows of replaced and deleted documents stay in the vectors (masked out of every search) until
    # a compaction rewrites them; a write measures the funnel again on the live rows.
    keeps_dead_rows: ClassVar[bool]
    # Filters are evaluated inside the backend's own engine (its search gets the live rows as
    # `allowed`, and `filters`); otherwise `allowed` holds the live rows that match the filters.
    filters_natively: ClassVar[bool]
    # The vectors are files of the generation folder: a snapshot copies them with it (a collection
    # elsewhere is snapshotted by its own server's means).
    in_folder: ClassVar[bool]

    @classmethod
    def describe_settings(cls, settings: dict) -> str:
        """Where the vectors of a manifest's backend entry live, in words (`medsearch info`)."""

    @classmethod
    def build(cls, folder: Path, vectors: np.ndarray, manifest: "Manifest", *, settings: dict,
              stored: np.ndarray | None, target_recall: float, progress: bool) -> "VectorBackend":
        """Write full-dim normalised `vectors` (one per chunk row) into the generation `folder`
        (whose document store is written) and record in `manifest` the index types, the backend entry and
        the fast tier's calibration. `stored`: the rows to keep for re-ranking when they already
        exist (a compaction), so scores do not move by a rounding."""

    def append(self, folder: Path, vectors: np.ndarray, manifest: "Manifest", *, removed: list[str],
               progress: bool) -> "VectorBackend":
        """This generation's rows and `vectors` after them, as the generation `folder` (its document store
        already written, `manifest` its manifest); `removed`: ids whose old rows die."""

    def carry_over(self, folder: Path, manifest: "Manifest", *, removed: list[str]) -> "VectorBackend":
        """This generation's rows, unchanged, as the generation `folder` (a delete-only write)."""

    def calibrate(self, live: np.ndarray | None, target: float) -> dict | None:
        """The manifest's `fast` entry for this generation, measured on its `live` rows (None:
        every row); None when the fast tier has no funnel (its dim is the full dim)."""

    def committed(self) -> None:
        """Run once this generation is current (what its write could only do after the switch)."""

    def replaced_by(self, manifest: "Manifest") -> None:
        """A rebuild made the generation of `manifest` current instead of this one."""

    def abandon(self, current: "Manifest | None") -> None:
        """This build did not become current (`current`: the manifest that is)."""

    def outdated(self) -> bool:
        """Whether a compaction would bring this generation's files up to date (a funnel missing)."""

    def read_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exact float32 full-dim vectors, the rows as stored) of `rows`: a compaction's input."""

    def load(self) -> None:
        """Everything a search needs, now (fails now when it is unreachable)."""

    def close(self) -> None:
        """Let go of files and memory maps."""

    def verify(self, skip: set[str] = frozenset()) -> list[str]:
        """One line per way this generation's vectors disagree with its manifest (rows, dims), or
        cannot be read; [] when they agree. Files named in `skip` (known to be damaged) are not parsed."""

    def search(self, queries: np.ndarray, *, dim: int, rerank: bool, k: int, candidates: int,
               allowed: np.ndarray | None, filters: list["Filter"], chunk_doc: np.ndarray) -> tuple[Ranked, dict[str, float]]:
        """The k best documents per full-dim query vector among the `allowed` rows (bool per row,
        None: every row) that match `filters`, searched at `dim` (the prefix), from `candidates`
        chunks re-ranked at full dim when `rerank` (the fast tier); k documents whenever k exist.
        `allowed`: the live rows, already narrowed to those matching `filters` unless the backend
        `filters_natively`; `chunk_doc` maps a row to its document. Timings in ms: search, rerank."""


def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dims of each vector, renormalised: the Matryoshka embedding at that dim."""
    out = np.array(vectors[:, :dim], dtype=np.float32, order="C")  # always a copy: normalised in place
    faiss.normalize_L2(out)
    return out


def documents_of(chunk_doc: np.ndarray, rows) -> list[int]:
    """The document ordinal of each chunk row: one read of the (memory-mapped) map for all of them,
    not one per row (225 numpy memmap reads a hybrid query, 7% of its search time, profiled)."""
    return np.asarray(chunk_doc[np.asarray(rows, dtype=np.int64)]).tolist()


def collapse(rows: np.ndarray, scores: np.ndarray, chunk_doc: np.ndarray, k: int) -> list[tuple[int, float]]:
    """First (best) chunk of each document, in rank order, until k documents."""
    seen: set[int] = set()
    hits = []
    rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores)  # scores keep their type
    keep = rows >= 0
    rows, scores = rows[keep], scores[keep]
    for row, score, doc in zip(rows.tolist(), scores.tolist(), documents_of(chunk_doc, rows)):
        if doc not in seen:
            seen.add(doc)
            hits.append((row, score))
            if len(hits) == k:
                break
    return hits
