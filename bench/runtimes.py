"""Encoder runtimes side by side, in one run over the same texts: `medsearch index` (build_index)
of one corpus with each runtime (passages/s of the encoding), query encoding latency (one query at a
time, p50), and deep-tier NDCG@10 of each runtime's own index on the corpus's questions.

Exports (OpenVINO IR, int8 quantisation) are made before the clock starts: they happen once per
model and are cached. The runtimes run in turn, each on every core.

    python bench/runtimes.py --data /path/to/beir-folder --split dev
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, query_encode_p50_ms, write_results  # noqa: E402

from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.encoding.runtimes.registry import RUNTIMES  # noqa: E402
from medsearch.training.evaluation import ir_metrics, load_benchmark, search_runs  # noqa: E402
from medsearch.index.build import build_index  # noqa: E402
from medsearch.index.folder import open_index  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)")
    parser.add_argument("--split", default="test", help="query split for NDCG@10 ('' for all)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--query-sample", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--name", default="runtimes")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    bench = load_benchmark(args.data, args.split or None)
    qids = list(bench.queries)
    texts = [bench.queries[q] for q in qids]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes.split(","):
            started = time.perf_counter()
            encoder = Encoder(args.model, runtime=runtime)  # loads (and the first time, exports) the model
            load_s = time.perf_counter() - started
            manifest = build_index(args.data, Path(tmp) / runtime, encoder, progress=True)
            searcher = Searcher(open_index(Path(tmp) / runtime), encoder)
            vectors = encoder.encode_queries(texts)
            run, _ = search_runs(searcher, vectors, texts, qids, searcher.index.store.doc_ids(), 100, tier="deep")
            metrics = ir_metrics(run, bench, run)  # one exact run of 100 serves @10 and @100, as `medsearch eval` does
            rows.append({
                "runtime": runtime, "precision": encoder.precision, "chunks": manifest["chunks"],
                "encode_s": manifest["encode_seconds"], "passages_per_s": manifest["chunks"] / manifest["encode_seconds"],
                "build_s": manifest["build_seconds"], "load_s": load_s,
                "query_encode_p50_ms": query_encode_p50_ms(encoder, texts[: args.query_sample]),
                "ndcg@10_deep": metrics["ndcg@10"], "recall@100_deep": metrics["recall@100"],
            })
            print(f"{runtime}: {rows[-1]['passages_per_s']:.1f} passages/s, NDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    torch_row = next((r for r in rows if r["runtime"] == "torch"), rows[0])
    for r in rows:
        r["speedup_vs_torch"] = r["passages_per_s"] / torch_row["passages_per_s"]
        r["query_speedup_vs_torch"] = torch_row["query_encode_p50_ms"] / r["query_encode_p50_ms"]
        r["ndcg_change_vs_torch"] = r["ndcg@10_deep"] - torch_row["ndcg@10_deep"]
    print()
    print_table(rows, ["runtime", "chunks", "passages_per_s", "speedup_vs_torch", "query_encode_p50_ms", "query_speedup_vs_torch",
                       "ndcg@10_deep", "ndcg_change_vs_torch", "build_s"])
    write_results(args.name, {"data": args.data, "split": args.split, "model": args.model, "queries": len(qids), "rows": rows},
                  Path(args.out))


if __name__ == "__main__":
    main()
