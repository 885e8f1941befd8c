"""FAISS vs Qdrant backends on the same vectors: deep top-10 agreement, each tier's NDCG@10 and
recall@10 against deep, and single-query search latency.

A FAISS index of the data set (built with --model/--runtime when the folder has none) is copied and
moved into a Qdrant local-mode collection (`medsearch index --backend qdrant` on an index of the
same model: the stored vectors move, nothing is re-encoded), so both backends hold the same vectors.
With --cli, the bar's own commands run too: `medsearch query --queries Q --json --tier T` on both
index folders, the deep top-10 lists compared.

    python bench/backends.py --data corpus --split "" --cli
    python bench/backends.py --data ../shared/data/medquad --split test --index indexes/medquad
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import RESULTS, median_ms, print_table, recall_against, single_query_latencies, write_results
from medsearch.index.backends import qdrant
from medsearch.encoding.encoder import Encoder
from medsearch.training.evaluation import ir_metrics, load_benchmark, search_runs
from medsearch.index.build import build_index
from medsearch.index.folder import TIERS, index_exists, open_index
from medsearch.retrieval.search import Searcher
from medsearch.index.writes import sync


def cli_deep_agreement(faiss_dir: Path, qdrant_dir: Path, queries: Path, tiers=TIERS) -> dict:
    """The bar through the CLI: `query --queries --json` per tier on both folders; the share of
    queries whose deep top 10 (document ids, in order) are the same."""
    out = {}
    for tier in tiers:
        lists = []
        for folder in (faiss_dir, qdrant_dir):
            done = subprocess.run([sys.executable, "-m", "medsearch", "query", "--queries", str(queries), "--index",
                                   str(folder), "--tier", tier, "--json"], capture_output=True, text=True, check=True)
            lists.append({line["query_id"]: [r["id"] for r in line["results"]]
                          for line in map(json.loads, done.stdout.splitlines())})
        same = [lists[0][q] == lists[1][q] for q in lists[0]]
        out[tier] = {"queries": len(same), "same_top10": float(np.mean(same))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="corpus", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)")
    parser.add_argument("--split", default="", help="query split ('' for all)")
    parser.add_argument("--index", default=None, help="FAISS index of --data (built there when missing; default: a temporary one)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--runtime", default="torch", help="runtime for a build")
    parser.add_argument("--latency-sample", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--cli", action="store_true", help="also run the bar's CLI commands (query --queries --json)")
    parser.add_argument("--name", default=None, help="results name (default backends-<data folder name>)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        faiss_dir = Path(args.index) if args.index else tmp / "faiss"
        if not index_exists(faiss_dir):
            build_index(args.data, faiss_dir, Encoder(args.model, runtime=args.runtime), vector_dtype="float32",
                        progress=True)
        encoder = Encoder(open_index(faiss_dir).manifest["model"]["spec"],
                          runtime=open_index(faiss_dir).manifest["model"].get("runtime", "torch"))
        qdrant_dir = tmp / "qdrant-index"
        shutil.copytree(faiss_dir, qdrant_dir, ignore=shutil.ignore_patterns(".lock"))
        moved = sync(args.data, qdrant_dir, encoder, backend=qdrant.settings("bench", path=tmp / "qdrant"),
                     progress=True)
        assert moved.moved_to == "qdrant", moved.summary()

        bench = load_benchmark(args.data, args.split or None)
        qids = list(bench.queries)
        texts = [bench.queries[q] for q in qids]
        vectors = encoder.encode_queries(texts)
        searchers = {"faiss": Searcher(open_index(faiss_dir), encoder), "qdrant": Searcher(open_index(qdrant_dir), encoder)}
        doc_ids = searchers["faiss"].index.store.doc_ids()
        runs = {(b, t): search_runs(s, vectors, texts, qids, doc_ids, 10, tier=t)[0]
                for b, s in searchers.items() for t in TIERS}
        rows = []
        for tier in TIERS:
            for name, searcher in searchers.items():
                run = runs[name, tier]
                rows.append({
                    "tier": tier, "backend": name,
                    "ndcg@10": ir_metrics(run, bench)["ndcg@10"],
                    "recall_vs_own_deep": recall_against([run[q] for q in qids], [runs[name, "deep"][q] for q in qids]),
                    "same_top10_as_faiss": float(np.mean([[d for d, _ in run[q]] == [d for d, _ in runs["faiss", tier][q]]
                                                          for q in qids])),
                    "p50_ms": median_ms(single_query_latencies(searcher, vectors[: args.latency_sample], tier=tier, k=10)),
                })
        for name in searchers:  # the bar: fast within 1% of deep's NDCG@10
            fast, deep = (next(r for r in rows if r["backend"] == name and r["tier"] == t) for t in ("fast", "deep"))
            fast["ndcg_vs_deep"] = fast["ndcg@10"] / deep["ndcg@10"]
        print_table(rows, ["tier", "backend", "ndcg@10", "recall_vs_own_deep", "same_top10_as_faiss", "p50_ms", "ndcg_vs_deep"])
        payload = {"data": args.data, "split": args.split, "queries": len(qids),
                   "chunks": searchers["faiss"].index.chunks, "model": searchers["faiss"].index.manifest["model"],
                   "fast": {b: s.index.manifest.fast for b, s in searchers.items()}, "rows": rows}
        if args.cli:
            queries = tmp / "queries.jsonl"
            queries.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in zip(qids, texts)))
            qdrant.close_clients()  # local mode: one process at a time, and the CLI runs in its own
            payload["cli"] = cli_deep_agreement(faiss_dir, qdrant_dir, queries)
            print("\nCLI (query --queries --json), share of queries with the same top 10 as FAISS:",
                  {t: round(v["same_top10"], 4) for t, v in payload["cli"].items()})
        write_results(args.name or f"backends-{Path(args.data).resolve().name}", payload, Path(args.out))


if __name__ == "__main__":
    main()
