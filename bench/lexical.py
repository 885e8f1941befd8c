"""Lexical retrieval at query time: bm25s (what medsearch ships) against the FTS5 index the
document store already keeps, on the same chunks: NDCG@10 and per-query latency.

    python bench/lexical.py --data ../shared/data/medquad --split dev
    python bench/lexical.py --data corpus --split ""

FTS5 ranks with its bm25() over chunk text (porter tokenizer, the query's words ORed, stop words
left out or kept); bm25s over each chunk's title + text, English stop words, with and without
Snowball stemming. Chunks come from the default model's tokenizer, as `medsearch index` makes them.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, median_ms, p95_ms, print_table, write_results  # noqa: E402

from medsearch.documents.corpus import read_corpus  # noqa: E402
from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.training.evaluation import ir_metrics, load_benchmark  # noqa: E402
from medsearch.index.store import write_store  # noqa: E402

# Words the FTS5 rows leave out of their OR query (they are in nearly every chunk): the list the
# store's snippet query used
STOPWORDS = frozenset(
    "a an and are as at be but by can could do does for from had has have how i i'm if in into is it its me my "
    "no not of on or our should so than that the their them then there these they this to was we were what when "
    "where which who why will with would you your".split()
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/medquad")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import bm25s
    import Stemmer

    docs = read_corpus(args.data)
    bench = load_benchmark(args.data, args.split or None)
    encoder = Encoder("default")
    chunks = encoder.chunk(docs)
    qids = list(bench.queries)

    def collapse(ranked) -> list[tuple[str, float]]:
        out, seen = [], set()
        for row, score in ranked:
            doc = docs[chunks[row].doc].id
            if doc not in seen:
                seen.add(doc)
                out.append((doc, score))
        return out[:100]

    def measure(name: str, search) -> dict:
        runs, times = {}, []
        for q in qids:
            started = time.perf_counter()
            ranked = search(bench.queries[q])
            times.append(time.perf_counter() - started)
            runs[q] = collapse(ranked)
        return {"method": name, **ir_metrics(runs, bench), "p50_ms": median_ms(times), "p95_ms": p95_ms(times)}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp) / "docs.db", docs, chunks)
        db = sqlite3.connect(Path(tmp) / "docs.db")
        for drop_stopwords in (True, False):
            def fts(query: str, drop=drop_stopwords):
                words = [w for w in re.findall(r"\w+", query) if not drop or w.lower() not in STOPWORDS]
                if not words:
                    return []
                match = " OR ".join(f'"{w}"' for w in words)
                return db.execute("SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                                  "ORDER BY bm25(chunks_fts) LIMIT 300", (match,)).fetchall()
            rows.append(measure(f"fts5 bm25, chunk text, stop words {'dropped' if drop_stopwords else 'kept'}", fts))
        passages = [c.passage(docs[c.doc].title) for c in chunks]
        for stemmer in (None, Stemmer.Stemmer("english")):
            started = time.perf_counter()
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(passages, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
            build_s = time.perf_counter() - started

            def bm25(query: str, retriever=retriever, stemmer=stemmer):
                tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False)
                hits, scores = retriever.retrieve(tokens, k=min(300, len(passages)), show_progress=False, n_threads=1)
                return [(int(h), float(s)) for h, s in zip(hits[0], scores[0]) if s > 0]
            rows.append(measure(f"bm25s, title + chunk, {'Snowball stemming' if stemmer else 'no stemming'}", bm25)
                        | {"build_s": round(build_s, 2)})
    print(f"{len(qids)} queries ({args.split or 'all'}) against {len(docs)} documents, {len(chunks)} chunks")
    print_table(rows, ["method", "ndcg@10", "recall@100", "p50_ms", "p95_ms", "build_s"])
    name = args.name or f"lexical-{Path(args.data).name}-{args.split or 'all'}"
    write_results(name, {"data": args.data, "split": args.split, "queries": len(qids), "documents": len(docs),
                         "chunks": len(chunks), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
