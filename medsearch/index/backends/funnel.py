"""The fast tier's funnel: a candidate stage proposes rows, the stored full-dim vectors re-rank them
exactly. Two candidate stages (faiss.py): `prefix`, the 64-dim Matryoshka prefix index
(the reference design), and `binary`, 1-bit sign codes of the full vector searched by Hamming
distance.

How many candidates a query needs is measured, not guessed: at build time, a sample of the index's
own chunk vectors serve as held-out pseudo-queries (each one's own row excluded from both lists),
and for each stage the smallest candidate count whose re-ranked top 10 agrees with the exact
full-dim top 10 (recall@10 against `deep`) for the target fraction, with 95% confidence, is stored
in the manifest. The
stage that needs fewer candidates becomes the default; its count is the default candidate count.
"""

from __future__ import annotations

import math
from typing import Callable

import faiss
import numpy as np

from medsearch.index.manifest import LEGACY_CANDIDATES

DEFAULT_TARGET_RECALL = 0.99
CALIBRATION_QUERIES = 200
# A write measures the funnel again once the live rows differ by more than this fraction from those
# it was last measured on: a small write costs what it changes, not a calibration of the whole index
# (the needed candidate count grows slowly with the corpus; docs/guides/living-index.md).
RECALIBRATE_FRACTION = 0.05
RECALL_K = 10
CONFIDENCE_Z = 1.645  # a one-sided 95% bound
# Candidate counts tried, smallest first (a count past the live rows means "all of them": exact).
CANDIDATE_GRID = (10, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000, 7000, 10000, 15000, 20000)

Search = Callable[[np.ndarray, int], np.ndarray]  # (queries, n) -> candidate rows per query, -1 padded
Read = Callable[[np.ndarray], np.ndarray]  # sorted rows -> their full-dim vectors, float32


def rerank(queries: np.ndarray, candidates: list[np.ndarray], read: Read) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each query's candidate rows ranked exactly by inner product with their full-dim vectors
    (`read(rows)`, float32): (rows, scores) per query, best first."""
    out_rows, out_scores = [], []
    for query, rows in zip(queries, candidates):
        rows = np.sort(rows[rows >= 0])  # sorted reads from a memory map
        if not len(rows):
            out_rows.append(rows)
            out_scores.append(np.empty(0, dtype=np.float32))
            continue
        # faiss ranks the candidates exactly. A numpy matmul here would wake OpenBLAS's own thread
        # pool, which fights faiss's OpenMP threads: 9-12 ms instead of ~1 ms for 500 candidates x
        # 1024 dims on 2 cores (measured).
        scores, order = faiss.knn(np.ascontiguousarray(query[None, :], dtype=np.float32),
                                  read(rows), len(rows), metric=faiss.METRIC_INNER_PRODUCT)
        out_rows.append(rows[order[0]])
        out_scores.append(scores[0])
    return out_rows, out_scores


def _without(rows: np.ndarray, own: int, n: int) -> np.ndarray:
    return rows[(rows != own) & (rows >= 0)][:n]


def recall_at(queries: np.ndarray, own: np.ndarray, truth: list[np.ndarray], search: Search, read: Read,
              candidates: int) -> float:
    """Mean recall@10 against `truth` of the re-ranked top 10 from `candidates` candidates a query."""
    found = search(queries, candidates + 1)
    lists = [_without(rows, row, candidates) for rows, row in zip(found, own)]
    ranked, _ = rerank(queries, lists, read)
    return float(np.mean([len(set(r[: len(t)]) & set(t)) / len(t) for r, t in zip(ranked, truth)]))


def calibrate(vectors: np.ndarray, deep: Search, stages: dict[str, Search], read: Read, *,
              target: float = DEFAULT_TARGET_RECALL, sample: int = CALIBRATION_QUERIES, seed: int = 0,
              rows: np.ndarray | None = None) -> dict:
    """The manifest's `fast` settings: for each stage the smallest grid count reaching `target`
    recall@10 against `deep` on `sample` held-out rows of `vectors` (or `rows`, the live ones), and
    the stage that needs fewer (the prefix stage on a tie: the reference design). A stage that misses
    the target within the grid keeps its largest count, and its measured recall says so."""
    live = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    own = np.sort(np.random.default_rng(seed).choice(live, size=min(sample, len(live)), replace=False))
    queries = np.ascontiguousarray(vectors[own], dtype=np.float32)
    want = min(RECALL_K, len(live) - 1)
    settings = {"target_recall": target, "sample": int(len(own)), "k": RECALL_K, "live_rows": int(len(live)), "stages": {}}
    if want < 1:
        settings.update(stage="prefix", candidates=RECALL_K, measured_recall=1.0)
        return settings
    truth = [_without(r, row, want) for r, row in zip(deep(queries, want + 1), own)]
    for name, search in stages.items():
        tried = {}
        counts = [c for c in CANDIDATE_GRID if c < len(live) - 1]
        counts += [len(live) - 1] if len(live) - 1 <= CANDIDATE_GRID[-1] else []  # every other row: exact
        for count in counts:
            tried[count] = recall_at(queries, own, truth, search, read, count)
            if reaches(tried[count], target, len(own) * want):
                break
        count = next((c for c, r in tried.items() if reaches(r, target, len(own) * want)), max(tried))
        settings["stages"][name] = {"candidates": int(count), "measured_recall": round(tried[count], 4),
                                    "curve": {str(c): round(r, 4) for c, r in tried.items()}}
    best = min(settings["stages"], key=lambda s: (settings["stages"][s]["candidates"], s != "prefix"))
    settings.update(stage=best, candidates=settings["stages"][best]["candidates"],
                    measured_recall=settings["stages"][best]["measured_recall"])
    return settings


def reaches(recall: float, target: float, slots: int) -> bool:
    """Whether a recall measured over `slots` top-10 slots reaches `target` with 95% confidence: its
    one-sided Wilson lower bound is at or above it (1.0 on 130 slots is not 0.99 for sure: its bound
    is 0.980). The sample is small (200 queries) and held-out chunks are easier than real questions,
    so the measured value alone lands at the target's edge: 0.987 on the questions of the 1M x 1024
    benchmark for 0.992 on the sample. A target of 1 is reached by ranking every row only."""
    z2 = CONFIDENCE_Z**2
    centre = recall + z2 / (2 * slots)
    spread = CONFIDENCE_Z * math.sqrt(recall * (1 - recall) / slots + z2 / (4 * slots**2))
    return (centre - spread) / (1 + z2 / slots) >= target


def needs_calibration(fast: dict | None, live_rows: int, target: float) -> bool:
    """Whether a write must measure the funnel again: another target, a calibration that did not
    record its rows (made before they were), or live rows that moved by more than RECALIBRATE_FRACTION."""
    fast = fast or {}
    measured = fast.get("live_rows")
    return (fast.get("target_recall") != target or not measured
            or abs(live_rows - measured) > RECALIBRATE_FRACTION * measured)


def candidates_for(fast: dict | None, k: int, oversample: int | None) -> int:
    """Candidates for a fast-tier search of k hits: k x oversample when given, else the calibrated
    count (measured for 10 hits), scaled up for more than 10 hits (never down: fewer hits from the
    same candidates are found at least as reliably)."""
    if oversample is not None:
        return k * oversample
    count = (fast or {}).get("candidates", LEGACY_CANDIDATES)
    return max(count, math.ceil(count * k / RECALL_K))
