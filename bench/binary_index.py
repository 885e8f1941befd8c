"""The binary candidate stage's index at scale: an exact Hamming scan (IndexBinaryFlat) against an
HNSW graph over the same codes (IndexBinaryHNSW, M=32), on the calibrated generator. Per candidate
count: single-query search p50, the re-rank's p50 (float16 vectors, memory-mapped), recall@10
against exact full-dim search after the re-rank; and the HNSW build time.

    python bench/binary_index.py --size 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_ms, print_table, write_results  # noqa: E402
from synthetic import generate_lowrank, queries_near  # noqa: E402

from medsearch.index.backends.faiss import Matrix, binary_codes, write_matrix  # noqa: E402
from medsearch.index.backends.funnel import rerank  # noqa: E402


def p50(fn, n: int) -> float:
    fn(0)
    seconds = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - started)
    return median_ms(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--counts", default="500,1000,2000")
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"))
    parser.add_argument("--name", default="binary-index")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    fit = json.loads(Path(args.calibration).read_text())["fits"][str(args.dim)]
    docs = generate_lowrank(args.size, args.dim, fit["rank"], fit["sigma"], fit["beta"])
    queries = queries_near(docs, args.queries, fit["noise"])
    _, truth = faiss.knn(queries, docs, 10, metric=faiss.METRIC_INNER_PRODUCT)
    codes, query_codes = binary_codes(docs), binary_codes(queries)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_matrix(Path(tmp) / "v.faiss", docs, "float16")  # the index's one stored matrix, memory-mapped
        del docs
        stored = Matrix.open(Path(tmp) / "v.faiss").rows
        flat = faiss.IndexBinaryFlat(args.dim)
        flat.add(codes)
        started = time.perf_counter()
        hnsw = faiss.IndexBinaryHNSW(args.dim, 32)
        hnsw.add(codes)
        hnsw_build_s = time.perf_counter() - started
        for count in map(int, args.counts.split(",")):
            params = faiss.SearchParametersHNSW(efSearch=count)
            for name, search in (("flat", lambda q, n: flat.search(q, n)), ("hnsw", lambda q, n: hnsw.search(q, n, params=params))):
                _, found = search(query_codes, count)
                ranked, _ = rerank(queries, list(found), stored)
                rows.append({
                    "index": name, "candidates": count,
                    "search_p50_ms": p50(lambda i: search(query_codes[i:i + 1], count), args.queries),
                    "rerank_p50_ms": p50(lambda i: rerank(queries[i:i + 1], [found[i]], stored), args.queries),
                    "recall_vs_deep": float(np.mean([len(set(r[:10]) & set(t)) / 10 for r, t in zip(ranked, truth)])),
                })
                print(rows[-1], flush=True)
    print(f"\nbinary HNSW build: {hnsw_build_s:.1f} s for {args.size} codes\n")
    print_table(rows, ["index", "candidates", "search_p50_ms", "rerank_p50_ms", "recall_vs_deep"])
    write_results(args.name, {"size": args.size, "dim": args.dim, "generator": fit, "hnsw_build_s": hnsw_build_s, "rows": rows}, Path(args.out))


if __name__ == "__main__":
    main()
