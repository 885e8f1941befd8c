"""Choose hybrid search's defaults on dev data: NDCG@10 of every fusion setting, per data set.

    python bench/hybrid.py --data ../shared/data/medquad:dev --data corpus:

Each --data is FOLDER:SPLIT (an empty split: every judged query). For each set it reports dense
and lexical alone, then reciprocal rank fusion over rrf-k and a convex combination over the dense
weight, each at several fusion depths, on the deep and the fast tier. The chosen setting is the one
with the best mean NDCG@10 over the sets among those at least as good as dense on every set; the
script prints it and writes bench/results/hybrid-<name>.json. Use dev splits only: the figures it
selects on must not be the ones reported as held-out results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, print_table, write_results  # noqa: E402

from medsearch.documents.corpus import read_corpus  # noqa: E402
from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.training.evaluation import cached_searcher, ir_metrics, load_benchmark, search_runs  # noqa: E402
from medsearch.retrieval.fusion import Fusion  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402


def settings(rrf_ks, weights, depths) -> list[Fusion]:
    return ([Fusion("rrf", rrf_k=k, depth=d) for k in rrf_ks for d in depths]
            + [Fusion("convex", weight=w, depth=d) for w in weights for d in depths])


def label(fusion: Fusion) -> str:
    value = f"k={fusion.rrf_k}" if fusion.method == "rrf" else f"w={fusion.weight}"
    return f"{fusion.method} {value} depth={fusion.depth}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="FOLDER:SPLIT (repeat)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--cache", default="indexes/eval")
    parser.add_argument("--index", action="append", default=[],
                        help="FOLDER=INDEX: search this existing index of FOLDER's corpus (any runtime, no extra "
                             "dims needed) instead of building one in --cache (repeat)")
    parser.add_argument("--rrf-k", default="10,30,60,100")
    parser.add_argument("--weights", default="0.3,0.5,0.6,0.7,0.8")
    parser.add_argument("--depths", default="20,50,100")
    parser.add_argument("--tiers", default="deep,fast")
    parser.add_argument("--name", default="dev")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    encoder = Encoder(args.model)
    grid = settings([int(x) for x in args.rrf_k.split(",")], [float(x) for x in args.weights.split(",")],
                    [int(x) for x in args.depths.split(",")])
    rows = []
    for spec in args.data:
        folder, _, split = spec.rpartition(":")
        bench = load_benchmark(folder, split or None)
        given = dict(spec.split("=", 1) for spec in args.index)
        if folder in given:  # its own model and runtime encode the queries
            searcher = Searcher.open(given[folder])
        else:
            searcher = cached_searcher(folder, read_corpus(folder), encoder, args.cache, progress=True)
        qids = list(bench.queries)
        texts = [bench.queries[q] for q in qids]
        vectors = searcher.encoder.encode_queries(texts)
        doc_ids = searcher.index.store.doc_ids()
        name = f"{Path(folder).name}:{split or 'all'}"
        for tier in args.tiers.split(","):
            def ndcg(**kwargs) -> tuple[float, float]:
                run, ms = search_runs(searcher, vectors, texts, qids, doc_ids, 10, tier=tier, **kwargs)
                return ir_metrics(run, bench)["ndcg@10"], ms

            for mode in ("dense", "lexical"):
                score, ms = ndcg(mode=mode)
                rows.append({"data": name, "tier": tier, "setting": mode, "ndcg@10": score, "ms": ms})
            for fusion in grid:
                score, ms = ndcg(mode="hybrid", fusion=fusion)
                rows.append({"data": name, "tier": tier, "setting": label(fusion), "ndcg@10": score, "ms": ms,
                             "fusion": fusion.__dict__})
            print(f"{name} {tier}: done", file=sys.stderr)
    print_table(rows, ["data", "tier", "setting", "ndcg@10", "ms"])

    # the chosen setting: never below dense on any (set, tier), then the best mean over them
    dense = {(r["data"], r["tier"]): r["ndcg@10"] for r in rows if r["setting"] == "dense"}
    summary = []
    for setting in dict.fromkeys(r["setting"] for r in rows if "fusion" in r):
        mine = [r for r in rows if r["setting"] == setting]
        gains = [r["ndcg@10"] - dense[(r["data"], r["tier"])] for r in mine]
        summary.append({"setting": setting, "mean_ndcg@10": statistics.mean(r["ndcg@10"] for r in mine),
                        "min_gain_vs_dense": min(gains), "mean_gain_vs_dense": statistics.mean(gains)})
    summary.sort(key=lambda s: (s["min_gain_vs_dense"] >= 0, s["mean_ndcg@10"]), reverse=True)
    print()
    print_table(summary[:12], ["setting", "mean_ndcg@10", "min_gain_vs_dense", "mean_gain_vs_dense"])
    print(f"\nchosen: {summary[0]['setting']}")
    write_results(f"hybrid-{args.name}", {"model": args.model, "data": args.data, "rows": rows, "summary": summary,
                                          "chosen": summary[0]["setting"]}, args.out)


if __name__ == "__main__":
    main()
