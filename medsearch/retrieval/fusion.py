"""Hybrid search: fuse the dense tier's and the lexical top lists of documents into one ranking.

Two methods: reciprocal rank fusion (each list adds 1 / (rrf_k + rank) to a document) and a convex
combination of min-max normalised scores (weight * dense + (1 - weight) * lexical, a list that
misses a document adds 0). Written here rather than taken from ranx (whose fusion needs numba and
its own run objects): each is a few lines over lists that are already ranked.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsearch.errors import BadInputError

MODES = ("dense", "lexical", "hybrid")
DEFAULT_MODE = "dense"
METHODS = ("rrf", "convex")
MAX_RRF_K, MAX_DEPTH = 10_000, 1000  # the most a request (or an index's defaults) may ask of rrf_k and depth


@dataclass(frozen=True)
class Fusion:
    """How hybrid mode fuses. `depth`: documents taken from each list (at least k).

    Defaults chosen with bench/hybrid.py on dev data only: MedQuAD's dev split (1,459 questions,
    15,820 documents) and the bundled questions, all-MiniLM-L6-v2, deep and fast tiers. Convex
    with dense weight 0.7 is above dense on both (+0.018 and +0.052 NDCG@10 at full dim); RRF
    (k=60) is far above on the bundled questions (+0.038) but below on MedQuAD (-0.028), where
    BM25 alone is much weaker than dense (0.607 vs 0.746). Depth 50 is within 0.002 of depth 100
    at half the fast tier's re-ranking time."""

    method: str = "convex"
    rrf_k: int = 60
    weight: float = 0.7  # convex: the dense list's weight
    depth: int = 50

    def check(self) -> "Fusion":
        if self.method not in METHODS:
            raise BadInputError(f"unknown fusion '{self.method}' (choose from: {', '.join(METHODS)})")
        if self.rrf_k < 0:
            raise BadInputError(f"rrf k must be 0 or more; got {self.rrf_k}")
        if not 0 <= self.weight <= 1:
            raise BadInputError(f"the dense weight must be between 0 and 1; got {self.weight}")
        if self.depth < 1:
            raise BadInputError(f"fusion depth must be at least 1; got {self.depth}")
        return self


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BadInputError(f"unknown mode '{mode}' (choose from: {', '.join(MODES)})")
    return mode


def fuse(lists: dict[str, list[tuple[int, int, float]]], fusion: Fusion, k: int) -> list[tuple[int, float, dict[str, int]]]:
    """`lists`: name -> ranked (document, chunk row, score). Returns the best k documents as
    (chunk row, fused score, {list name: rank there}); the row is the first list's that has the
    document (its snippet), ties in the fused score go to the better best rank, then the document."""
    found: dict[int, dict[str, int]] = {}
    rows: dict[int, int] = {}
    fused: dict[int, float] = {}
    for name, ranked in lists.items():
        if fusion.method == "rrf":
            gains = [1.0 / (fusion.rrf_k + rank) for rank in range(1, len(ranked) + 1)]
        else:
            scores = [score for _, _, score in ranked]
            low, high = (min(scores), max(scores)) if scores else (0.0, 0.0)
            weight = fusion.weight if name == "dense" else 1 - fusion.weight
            gains = [weight * ((s - low) / (high - low) if high > low else 1.0) for s in scores]
        for rank, ((doc, row, _), gain) in enumerate(zip(ranked, gains), start=1):
            found.setdefault(doc, {})[name] = rank
            rows.setdefault(doc, row)
            fused[doc] = fused.get(doc, 0.0) + gain
    order = sorted(fused, key=lambda d: (-fused[d], min(found[d].values()), d))
    return [(rows[d], fused[d], found[d]) for d in order[:k]]
