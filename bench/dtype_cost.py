"""What float16 storage costs: the deep tier's top 10 over the stored float16 matrix against exact
float32 search of the same vectors (recall@10), on the calibrated generator and optionally on a real
index's vectors (which are stored in float16 already, so only the generator isolates the cost).

    python bench/dtype_cost.py --sizes 100000,1000000 --dim 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_results  # noqa: E402
from synthetic import generate_lowrank, queries_near  # noqa: E402

from medsearch.index.backends.faiss import Matrix, write_matrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"))
    parser.add_argument("--name", default="dtype-cost")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    fit = json.loads(Path(args.calibration).read_text())["fits"]["1024"]
    rows = []
    for n in map(int, args.sizes.split(",")):
        docs = generate_lowrank(n, args.dim, fit["rank"], fit["sigma"], fit["beta"])
        queries = queries_near(docs, args.queries, fit["noise"])
        _, exact = faiss.knn(queries, docs, 10, metric=faiss.METRIC_INNER_PRODUCT)
        with tempfile.TemporaryDirectory() as tmp:
            for dtype in ("float16", "float32"):
                write_matrix(Path(tmp) / f"{dtype}.faiss", docs, dtype)
                _, got = Matrix.open(Path(tmp) / f"{dtype}.faiss").search(queries, args.dim, 10)
                recall = float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)]))
                rows.append({"size": n, "dim": args.dim, "stored": dtype, "deep_recall_vs_float32_exact": recall,
                             "bytes_per_passage": args.dim * np.dtype(dtype).itemsize})
                print(f"  {n} x {args.dim} {dtype}: recall@10 {recall:.4f}", flush=True)
        del docs
    print_table(rows, ["size", "dim", "stored", "deep_recall_vs_float32_exact", "bytes_per_passage"])
    write_results(args.name, {"queries": args.queries, "rows": rows}, Path(args.out))


if __name__ == "__main__":
    main()
