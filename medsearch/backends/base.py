"""The seam between the search layer and where an index's vectors live.

The search layer (search.py) asks the index's backend (`Index.backend`, chosen by the manifest's
`backend` name) for one thing: the dense top list of a tier. Two backends implement it: `faiss`
(the index folder's own files, backends/faiss.py) and `qdrant` (a Qdrant collection,
backends/qdrant.py). Writes go through index.write_index and updates._write, which write one or
the other. Shared here: the Matryoshka prefix of a vector and the collapse of chunk hits to
documents, which both backends apply in the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import faiss
import numpy as np

if TYPE_CHECKING:
    from medsearch.filters import Filter
    from medsearch.index import Index

Ranked = list[list[tuple[int, float]]]  # per query: (chunk row, score), one document per hit, best first


class VectorBackend(Protocol):
    name: str

    def search(self, index: "Index", queries: np.ndarray, *, dim: int, rerank: bool, k: int, candidates: int,
               filters: list["Filter"]) -> tuple[Ranked, dict[str, float]]:
        """The k best documents per full-dim query vector among the index's live rows that pass
        `filters`: searched at `dim` (the prefix), from `candidates` chunks re-ranked at full dim when
        `rerank` (the fast tier); k documents whenever k exist. Timings in ms: search, rerank."""


def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dims of each vector, renormalised: the Matryoshka embedding at that dim."""
    out = np.array(vectors[:, :dim], dtype=np.float32, order="C")  # always a copy: normalised in place
    faiss.normalize_L2(out)
    return out


def collapse(rows: np.ndarray, scores: np.ndarray, chunk_doc: np.ndarray, k: int) -> list[tuple[int, float]]:
    """First (best) chunk of each document, in rank order, until k documents."""
    seen: set[int] = set()
    hits = []
    for row, score in zip(rows.tolist(), scores.tolist()):
        if row < 0:
            continue
        doc = int(chunk_doc[row])
        if doc not in seen:
            seen.add(doc)
            hits.append((row, score))
            if len(hits) == k:
                break
    return hits
