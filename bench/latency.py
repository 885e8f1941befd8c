"""Query latency per tier in a warm process: each query alone, as a user would send it.

Reports p50/p95 of the whole `Searcher.search` call (encoding + search + re-rank + hydration)
and of the search part alone (encoding excluded), over every query of a queries file.

    python bench/latency.py --corpus corpus --index indexes/default
(builds the index first if the folder has none)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, median_ms, p95_ms, print_table, write_results
from medsearch.documents.corpus import read_queries
from medsearch.encoding.encoder import Encoder
from medsearch.index.build import build_index
from medsearch.index.folder import TIERS, index_exists
from medsearch.retrieval.search import Searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="corpus", help="corpus to index if --index has no index")
    parser.add_argument("--queries", default="corpus/queries.jsonl", help="queries, one per search")
    parser.add_argument("--index", default="indexes/default")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the queries per tier")
    parser.add_argument("--name", default="latency-bundled")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    if not index_exists(args.index):
        started = time.perf_counter()
        manifest = build_index(args.corpus, args.index, Encoder(), progress=True)
        print(f"built {args.index}: {manifest['documents']} documents in {time.perf_counter() - started:.1f}s")
    searcher = Searcher.open(args.index)
    manifest = searcher.index.manifest
    _, texts = read_queries(args.queries)
    for tier in TIERS:  # warm-up: load every tier's index, the memory map and the model
        searcher.search(texts[:5], tier=tier, k=args.k)
    rows = []
    for tier in TIERS:
        total, search_only = [], []
        for _ in range(args.repeat):
            for text in texts:
                started = time.perf_counter()
                (result,) = searcher.search([text], tier=tier, k=args.k)
                total.append(time.perf_counter() - started)
                search_only.append((result.timings_ms["search"] + result.timings_ms["rerank"]) / 1000)
        rows.append({
            "tier": tier, "dim": manifest["tier_dims"][tier], "queries": len(total),
            "p50_ms": median_ms(total), "p95_ms": p95_ms(total),
            "search_p50_ms": median_ms(search_only), "search_p95_ms": p95_ms(search_only),
        })
    print(f"\n{manifest['documents']} documents, {manifest['chunks']} chunks, {manifest['model']['name']}, k={args.k}; "
          "p50/p95 include encoding, search_* exclude it\n")
    print_table(rows, ["tier", "dim", "queries", "p50_ms", "p95_ms", "search_p50_ms", "search_p95_ms"])
    write_results(args.name, {"index": args.index, "manifest": manifest, "k": args.k, "rows": rows}, Path(args.out))


if __name__ == "__main__":
    main()
