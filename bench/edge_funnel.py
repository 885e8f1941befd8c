"""The funnel on Qdrant's own engine, in-process: qdrant-edge-py (Qdrant's Rust core as a Python
library; `pip install qdrant-edge-py`, not a medsearch dependency) over the calibrated synthetic
vectors of bench/funnel.py, beside medsearch's FAISS fast tier on the same vectors in the same run.

Qdrant side, as the qdrant backend lays a collection out: named vectors `d64` (an HNSW graph, m=32)
and `full` (no graph: m=0, scanned to re-score); fast = ONE query, a prefetch of `limit` candidates
on `d64` re-scored on `full`; deep = the exact scan of `full`. Recall@10 against exact search (faiss
flat inner product over the full vectors), p50 of single queries.

    python bench/edge_funnel.py --sizes 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_ms, print_table, write_results  # noqa: E402
from synthetic import generate_lowrank, queries_near, synthetic_searcher  # noqa: E402

from medsearch.index.backends.base import prefix  # noqa: E402

LIMITS = (100, 200, 500, 1000, 2000)
UPSERT_BATCH = 2000


def edge_shard(folder: Path, vectors: np.ndarray, fast_dim: int):
    import qdrant_edge as q

    params = lambda size, m: q.EdgeVectorParams(size=size, distance=q.Distance.Cosine,  # noqa: E731
                                                hnsw_config=q.HnswIndexConfig(m=m, ef_construct=100, full_scan_threshold=10))
    config = q.EdgeConfig(vectors={"d64": params(fast_dim, 32), "full": params(vectors.shape[1], 0)},
                          optimizers=q.EdgeOptimizersConfig(indexing_threshold=1))
    folder.mkdir(parents=True)
    shard = q.EdgeShard.create(str(folder), config)
    small = prefix(vectors, fast_dim)
    for start in range(0, len(vectors), UPSERT_BATCH):
        stop = min(len(vectors), start + UPSERT_BATCH)
        shard.update(q.UpdateOperation.upsert_points([
            q.Point(id=i, vector={"d64": small[i].tolist(), "full": vectors[i].tolist()}) for i in range(start, stop)]))
    while shard.optimize():  # builds the HNSW graph of d64 (merges segments)
        pass
    return shard


def edge_search(shard, query: np.ndarray, fast_dim: int, limit: int | None, ef: int | None = None) -> list[int]:
    import qdrant_edge as q

    if limit is None:  # deep: the exact scan of `full`
        request = q.QueryRequest(limit=10, query=q.Query.Nearest(query.tolist(), using="full"))
    else:
        small = prefix(query[None, :], fast_dim)[0]
        prefetch = q.Prefetch(limit=limit, query=q.Query.Nearest(small.tolist(), using="d64"),
                              params=q.SearchParams(hnsw_ef=ef or limit))
        request = q.QueryRequest(limit=10, prefetches=[prefetch], query=q.Query.Nearest(query.tolist(), using="full"))
    return [p.id for p in shard.query(request)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--limits", default=",".join(map(str, LIMITS)), help="prefetch limits (candidates) to try")
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--name", default="qdrant-edge")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    import faiss
    import qdrant_edge

    fit = json.loads(Path(args.calibration).read_text())["fits"][str(args.dim)]
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        docs = generate_lowrank(n, args.dim, fit["rank"], fit["sigma"], fit["beta"])
        queries = queries_near(docs, args.queries, fit["noise"])
        _, truth = faiss.knn(queries, docs, 10, metric=faiss.METRIC_INNER_PRODUCT)
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            started = time.perf_counter()
            searcher = synthetic_searcher(docs, Path(tmp) / "faiss")  # medsearch's FAISS backend, calibrated
            faiss_build = time.perf_counter() - started
            for tier in ("fast", "deep"):
                seconds, found = [], []
                for query in queries:
                    t = time.perf_counter()
                    ranked, _ = searcher.search_vectors(query[None, :], tier=tier, k=10)
                    seconds.append(time.perf_counter() - t)
                    found.append([row for row, _ in ranked[0]])
                fast = searcher.index.manifest.fast
                rows.append({"size": n, "engine": "faiss (medsearch)", "tier": tier,
                             "candidates": fast["candidates"] if tier == "fast" else n,
                             "stage": fast["stage"] if tier == "fast" else "flat",
                             "recall@10": float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])),
                             "p50_ms": median_ms(seconds), "build_s": round(faiss_build, 1)})
            del searcher
            started = time.perf_counter()
            shard = edge_shard(Path(tmp) / "edge", docs, 64)
            edge_build = time.perf_counter() - started
            for limit in [None, *map(int, args.limits.split(","))]:
                edge_search(shard, queries[0], 64, limit)  # warm-up
                seconds, found = [], []
                for query in queries:
                    t = time.perf_counter()
                    found.append(edge_search(shard, query, 64, limit))
                    seconds.append(time.perf_counter() - t)
                rows.append({"size": n, "engine": f"qdrant-edge {qdrant_edge.__version__ if hasattr(qdrant_edge, '__version__') else ''}".strip(),
                             "tier": "deep" if limit is None else "fast", "candidates": n if limit is None else limit,
                             "stage": "full scan" if limit is None else "d64 hnsw -> full",
                             "recall@10": float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])),
                             "p50_ms": median_ms(seconds), "build_s": round(edge_build, 1)})
            shard.close()
        for row in rows:
            if row["size"] == n:
                deep = next(r for r in rows if r["size"] == n and r["engine"] == row["engine"] and r["tier"] == "deep")
                row["speedup_vs_own_deep"] = deep["p50_ms"] / row["p50_ms"]
        del docs
    print_table(rows, ["size", "engine", "tier", "stage", "candidates", "recall@10", "p50_ms", "speedup_vs_own_deep", "build_s"])
    write_results(args.name, {"generator": {k: fit[k] for k in ("rank", "sigma", "beta", "noise")}, "rows": rows},
                  Path(args.out))


if __name__ == "__main__":
    main()
