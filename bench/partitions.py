"""Coarse partitions (faiss IVF over the full vectors) as a candidate stage: how many of the exact
top 10 they keep as the share of the corpus scanned grows, on real MedQuAD embeddings and on the
calibrated generator at the same size. A partition scheme only pays if a small share keeps ~all of them.

    python bench/partitions.py --real INDEX:MODEL --data ../shared/data/medquad
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_results  # noqa: E402
from synthetic import generate_lowrank, queries_near  # noqa: E402

PROBES = (1, 2, 4, 8, 16, 32, 64)


def sweep(name: str, docs: np.ndarray, queries: np.ndarray, lists: int) -> list[dict]:
    _, truth = faiss.knn(queries, docs, 10, metric=faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.index_factory(docs.shape[1], f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(docs)
    ivf.add(docs)
    rows = []
    for probes in PROBES:
        _, found = ivf.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=probes))
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        rows.append({"vectors": name, "size": len(docs), "lists": lists, "nprobe": probes, "share_scanned": probes / lists,
                     "recall_vs_exact": recall})
        print(f"  {name}: nprobe {probes}/{lists} ({probes / lists:.1%} scanned): recall@10 {recall:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, help="INDEX:MODEL, an index of real embeddings and the model for its queries")
    parser.add_argument("--data", default="../shared/data/medquad")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"))
    parser.add_argument("--name", default="partitions")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    from medsearch.encoding.encoder import Encoder
    from medsearch.index.folder import open_index
    from medsearch.training.evaluation import load_benchmark

    index_dir, model = args.real.split(":", 1)
    docs = np.asarray(open_index(index_dir).backend.vectors, dtype=np.float32)
    queries = Encoder(model).encode_queries(list(load_benchmark(args.data, args.split).queries.values()))
    lists = int(4 * np.sqrt(len(docs)))  # faiss's guideline: 4 to 16 x sqrt(n) lists
    rows = sweep("real", docs, queries, lists)
    fit = json.loads(Path(args.calibration).read_text())["fits"][str(docs.shape[1])]
    synthetic = generate_lowrank(len(docs), docs.shape[1], fit["rank"], fit["sigma"], fit["beta"])
    rows += sweep("synthetic", synthetic, queries_near(synthetic, len(queries), fit["noise"]), lists)
    print_table(rows, ["vectors", "size", "lists", "nprobe", "share_scanned", "recall_vs_exact"])
    write_results(args.name, {"real": args.real, "rows": rows}, Path(args.out))


if __name__ == "__main__":
    main()
