"""What a re-ranker does to quality: NDCG@10 of the default path with and without it, per data set.

    python bench/rerank_quality.py --reranker RR --index FOLDER=INDEX --data FOLDER:SPLIT [--sample 300]

For each --data (FOLDER:SPLIT; an empty split: every judged query, --sample: a seeded sample) the
queries run against an existing index of FOLDER's corpus (--index FOLDER=INDEX, its own model and
runtime) on the default path (hybrid, fast tier, the index's fusion) and, for reference, dense on
the deep tier. The re-ranker (on the encoder's runtime family, as queries run it) then re-scores
each query's top N (--depths) and the rows are: the cross-encoder's order alone (what `--rerank N`
does), and, as what a fused stage would give, its scores combined with the first stage's (convex
over min-max normalised scores at each --weights, and reciprocal rank fusion, k=60). Prints a table
and writes bench/results/rerank-quality-<name>.json. Choose on dev splits only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, print_table, write_results  # noqa: E402

from medsearch.training.evaluation import ir_metrics, load_benchmark, sample_benchmark  # noqa: E402
from medsearch.retrieval.options import SearchOptions  # noqa: E402
from medsearch.retrieval.rerank import load_reranker, runtime_for  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402


def normalised(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reranker", required=True, help="a cross-encoder folder or model id")
    parser.add_argument("--data", action="append", required=True, help="FOLDER:SPLIT (repeat)")
    parser.add_argument("--index", action="append", required=True, help="FOLDER=INDEX: an index of FOLDER's corpus (repeat)")
    parser.add_argument("--sample", type=int, default=0, help="a seeded sample of each set's queries (0: all)")
    parser.add_argument("--depths", default="10,20,30")
    parser.add_argument("--weights", default="0.3,0.5,0.7")
    parser.add_argument("--name", default="dev")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    depths = [int(x) for x in args.depths.split(",")]
    weights = [float(x) for x in args.weights.split(",")]
    indexes = dict(spec.split("=", 1) for spec in args.index)
    rows = []
    for spec in args.data:
        folder, _, split = spec.rpartition(":")
        bench = sample_benchmark(load_benchmark(folder, split or None), args.sample)
        searcher = Searcher.open(indexes[folder])
        reranker = load_reranker(args.reranker, runtime=runtime_for(searcher.encoder.runtime))
        index = searcher.index
        doc_ids = index.store.doc_ids()
        qids = list(bench.queries)
        texts = [bench.queries[q] for q in qids]
        vectors = searcher.encoder.encode_queries(texts)
        name = f"{Path(folder).name}:{split or 'all'}"

        def score(label: str, ranked: list[list[tuple[int, float, dict]]], ms: float = 0.0) -> None:
            runs = {q: [(doc_ids[index.chunk_doc[row]], s) for row, s, _ in hits] for q, hits in zip(qids, ranked)}
            rows.append({"data": name, "queries": len(qids), "setting": label,
                         "ndcg@10": ir_metrics(runs, bench)["ndcg@10"], "ms_per_query": ms})

        dense, _ = searcher.retrieve(texts, vectors, SearchOptions(k=10, mode="dense", tier="deep"))
        score("dense deep", dense)
        first, _ = searcher.retrieve(texts, vectors, SearchOptions(k=max(depths), rerank=0))
        score("default path (hybrid fast)", first)
        head = max(depths)
        scored = [searcher.reranked(index, reranker, text, hits, head) for text, hits in zip(texts, first)]
        ms = float(np.mean([taken for _, taken in scored]))
        # the cross-encoder's score of each of the first `head` hits, in the first stage's order
        by_row = [{row: s for row, s, _ in hits[:head]} for hits, _ in scored]
        ce = [np.array([rows_scores[row] for row, _, _ in hits[:head]]) for rows_scores, hits in zip(by_row, first)]
        for n in depths:
            def reorder(order_of) -> list:
                return [[hits[i] for i in order_of(hits[:n], s[:n])] + hits[n:] for hits, s in zip(first, ce)]

            score(f"re-ranked top {n}", reorder(lambda hits, s: sorted(range(len(hits)), key=lambda i: -s[i])),
                  ms * n / head)
            for w in weights:
                score(f"fused top {n}, convex w={w}", reorder(lambda hits, s, w=w: sorted(
                    range(len(hits)), key=lambda i: -(w * normalised(s)[i]
                                                       + (1 - w) * normalised(np.array([h[1] for h in hits]))[i]))))
            score(f"fused top {n}, rrf", reorder(lambda hits, s: sorted(
                range(len(hits)), key=lambda i: -(1 / (61 + i) + 1 / (61 + sorted(range(len(s)), key=lambda j: -s[j]).index(i))))))
        print(f"{name}: done", file=sys.stderr)
    print_table(rows, ["data", "queries", "setting", "ndcg@10", "ms_per_query"])
    write_results(f"rerank-quality-{args.name}", {"reranker": args.reranker, "data": args.data, "sample": args.sample,
                                                  "rows": rows}, args.out)


if __name__ == "__main__":
    main()
