"""Quality per tier and per stored dim on a BEIR-style set, against the whole corpus.

For every tier (and the fast tier at several oversampling factors) and every stored dim:
NDCG@10, MRR@10, Recall@10, Recall@100 against the relevance judgements, and recall@10 against
`deep` (the exact full-dim result is the ground truth for the approximate tiers).

    python bench/quality.py --data ../shared/data/medquad --split test --index indexes/medquad
(builds the index first if the folder has none)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, print_table, recall_against, write_results
from medsearch.encoding.encoder import Encoder
from medsearch.training.evaluation import ir_metrics, load_benchmark, search_runs
from medsearch.index.build import build_index
from medsearch.index.folder import index_exists, open_index
from medsearch.index.backends.funnel import candidates_for
from medsearch.retrieval.search import Searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/medquad", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)")
    parser.add_argument("--split", default="test", help="query split to evaluate ('' for all)")
    parser.add_argument("--index", default="indexes/medquad", help="index folder (built from --data if missing)")
    parser.add_argument("--model", default="default", help="model used when the index must be built")
    parser.add_argument("--oversample", default="1,2,5,10,20,50,100", help="fast-tier oversampling factors to sweep")
    parser.add_argument("--max-queries", type=int, default=0, help="evaluate only the first N queries (0 = all)")
    parser.add_argument("--name", default=None, help="results file name (default quality-<index folder name>)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args()

    if not index_exists(args.index):
        print(f"building {args.index} from {args.data} ...")
        build_index(args.data, args.index, Encoder(args.model), progress=True)
    index = open_index(args.index)
    searcher = Searcher(index, Encoder(index.manifest["model"]["spec"]))
    bench = load_benchmark(args.data, args.split or None)
    qids = list(bench.queries)[: args.max_queries or None]
    bench.queries = {q: bench.queries[q] for q in qids}
    texts = [bench.queries[q] for q in qids]
    vectors = searcher.encoder.encode_queries(texts)
    doc_ids = index.store.doc_ids()

    deep10, _ = search_runs(searcher, vectors, texts, qids, doc_ids, 10, tier="deep")
    configs = [("deep", {"tier": "deep"}), ("standard", {"tier": "standard"}), ("light", {"tier": "light"})]
    configs += [("fast default", {"tier": "fast"})]  # the candidate count and stage measured at build
    configs += [(f"fast x{o}", {"tier": "fast", "oversample": int(o)}) for o in args.oversample.split(",")]
    configs += [(f"dim {d}", {"dim": d}) for d in index.dims]
    rows = []
    for name, kwargs in configs:
        runs10, ms = search_runs(searcher, vectors, texts, qids, doc_ids, 10, **kwargs)
        runs100, _ = search_runs(searcher, vectors, texts, qids, doc_ids, 100, **kwargs)
        metrics = ir_metrics(runs10, bench, runs100)
        row = {"config": name, **kwargs, **metrics, "recall@10_vs_deep": recall_against([runs10[q] for q in qids], [deep10[q] for q in qids]), "ms_per_query": ms}
        if kwargs.get("tier") == "fast":
            row["candidates"] = candidates_for(index.manifest.fast, 10, kwargs.get("oversample"))
            row["stage"] = index.manifest.fast_stage
        rows.append(row)
        print(f"  {name}: ndcg@10 {metrics['ndcg@10']:.4f}", flush=True)
    deep_ndcg = rows[0]["ndcg@10"]
    for row in rows:
        row["ndcg_vs_deep"] = row["ndcg@10"] / deep_ndcg
    print(f"\n{len(qids)} queries ({args.split or 'all'}), {index.manifest['documents']} documents, "
          f"{index.chunks} chunks, model {index.manifest['model']['name']}; fast tier default: "
          f"{candidates_for(index.manifest.fast, 10, None)} candidates from the {index.manifest.fast_stage} stage\n")
    print_table(rows, ["config", "ndcg@10", "ndcg_vs_deep", "mrr@10", "recall@10", "recall@100", "recall@10_vs_deep", "ms_per_query"])
    write_results(args.name or f"quality-{Path(args.index).name}", {
        "data": args.data, "split": args.split, "queries": len(qids), "manifest": index.manifest, "rows": rows,
    }, Path(args.out))


if __name__ == "__main__":
    main()
