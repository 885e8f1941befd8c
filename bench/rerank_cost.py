"""What the re-ranking stage costs a query: p50 and p95 of its cross-encoder time for N = 10, 20,
50 documents on the bundled questions (torch, and OpenVINO where it loads), one run.

The cross-encoder here is the default model's transformer (all-MiniLM-L6-v2, 6 layers) with a
fresh scoring head: its scores mean nothing, its cost is that of any MiniLM-L6 cross-encoder
(e.g. a trained ms-marco-MiniLM-L-6-v2), which is what a query pays.

    python bench/rerank_cost.py [--depths 10,20,50] [--runtimes torch,openvino]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, median_ms, p95_ms, print_table, write_results  # noqa: E402

from medsearch.documents.corpus import read_queries  # noqa: E402
from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.encoding.loading import default_model_path  # noqa: E402
from medsearch.errors import MedsearchError  # noqa: E402
from medsearch.index.build import build_index  # noqa: E402
from medsearch.index.folder import index_exists  # noqa: E402
from medsearch.retrieval.rerank import Reranker  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="10,20,50")
    parser.add_argument("--runtimes", default="torch,openvino")
    parser.add_argument("--index", default="indexes/bench-rerank")
    parser.add_argument("--max-queries", type=int, default=None, help="the first N bundled questions [default: all 99]")
    parser.add_argument("--name", default="rerank-cost")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch
    from sentence_transformers import CrossEncoder

    if not index_exists(args.index):
        build_index(REPO / "corpus", args.index, Encoder())
    _, queries = read_queries(REPO / "corpus" / "queries.jsonl")
    queries = queries[: args.max_queries]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        CrossEncoder(default_model_path(), num_labels=1, device="cpu").save(tmp)
        for runtime in args.runtimes.split(","):
            try:
                reranker = Reranker(tmp, "cpu", runtime)
            except MedsearchError as err:
                print(f"{runtime}: {err}", file=sys.stderr)
                continue
            base = Searcher.open(args.index)
            searcher = Searcher(base.index, base.encoder, reranker)
            for depth in (int(d) for d in args.depths.split(",")):
                searcher.search(queries[:2], rerank=depth)  # warm-up
                times = [searcher.search([q], rerank=depth)[0].timings_ms["cross_encoder"] / 1000 for q in queries]  # s
                rows.append({"runtime": runtime, "N": depth, "p50_ms": median_ms(times), "p95_ms": p95_ms(times),
                             "queries": len(times)})
                print(f"{runtime} N={depth}: p50 {rows[-1]['p50_ms']:.1f} ms", file=sys.stderr)
    print_table(rows, ["runtime", "N", "p50_ms", "p95_ms", "queries"])
    write_results(args.name, {"rows": rows, "model": "all-MiniLM-L6-v2 transformer + a fresh head (MiniLM-L6 cost)"},
                  args.out)


if __name__ == "__main__":
    main()
