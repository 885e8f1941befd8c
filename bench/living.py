"""The living index, timed: `medsearch add` of a few documents and `medsearch delete` of 1%
against a full rebuild (`medsearch index --rebuild`), all as whole commands in one run (start-up
counts); then checks (new documents at rank 1 by their own text, deleted ones in no tier, info
counts, a narrow filter), and query latency (search only, no encoding) with 0%, 10% and 29% of
the rows dead (30% triggers a compaction).

    python bench/living.py --extra ../shared/data/medquad/corpus.jsonl --extra-docs 663
(the bundled corpus plus 663 MedQuAD documents: about 850; without --extra, the bundled corpus alone)
    python bench/living.py --corpus ../shared/data/medquad --add 158 --repeat 1 --name living-medquad
(MedQuAD, 15,820 documents: add 1% and delete 1% against one full rebuild)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, median_ms, print_table, write_results
from medsearch.documents.corpus import read_queries
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.index.writes import compact, delete

REPO = Path(__file__).resolve().parent.parent
TIERS = ("fast", "light", "standard", "deep")


def command(*args: str) -> float:
    """Seconds that `medsearch ARGS` takes as a whole process."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "medsearch", *args], cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return time.perf_counter() - started


def new_documents(batch: int, count: int) -> list[dict]:
    words = ["quillan", "marrow", "lantern", "zorblax", "tessellate", "umbral", "cobalt", "harrow", "vesper", "kestrel"]
    return [
        {"id": f"bench-{batch}-{i}", "title": f"{words[i % 10].title()} {words[(batch + i) % 10]} disorder {batch}-{i}",
         "text": f"The {words[i % 10]} {words[(batch + i) % 10]} disorder number {batch}-{i} makes the left earlobe "
                 f"hum softly at {batch * 7 + i} hertz after meals.", "topic": "condition"}
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="corpus", help="BEIR folder or file to start from")
    parser.add_argument("--extra", default=None, help="a .jsonl corpus to take --extra-docs more documents from")
    parser.add_argument("--extra-docs", type=int, default=663)
    parser.add_argument("--add", type=int, default=3, help="documents per `medsearch add`")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (medians)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--name", default="living")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medsearch-living-"))
    corpus = work / "corpus.jsonl"
    lines = (Path(args.corpus) / "corpus.jsonl" if Path(args.corpus).is_dir() else Path(args.corpus)).read_text().splitlines()
    if args.extra:
        lines += Path(args.extra).read_text().splitlines()[: args.extra_docs]
    corpus.write_text("\n".join(lines) + "\n")
    index = work / "index"
    rebuilds = [command("index", str(corpus), "--index", str(index), "--rebuild", "-q") for _ in range(args.repeat)]
    documents = open_index(index).manifest["documents"]
    adds, added = [], []
    for batch in range(args.repeat):
        docs = new_documents(batch, args.add)
        path = work / f"add-{batch}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        adds.append(command("add", str(path), "--index", str(index), "-q"))
        added += docs
    original = sorted(str(r.get("_id", r.get("id"))) for r in map(json.loads, filter(str.strip, lines)))
    doomed = random.Random(0).sample(original, max(1, documents // 100))
    ids_file = work / "delete.txt"
    ids_file.write_text("\n".join(doomed) + "\n")
    deletes = [command("delete", "--ids-file", str(ids_file), "--index", str(index))]

    # Checks on the result.
    searcher = Searcher.open(index)
    manifest = searcher.index.manifest
    rank_one = sum(
        all(searcher.search([d["text"]], tier=tier, k=1)[0].hits[0].id == d["id"] for tier in TIERS) for d in added
    )
    _, questions = read_queries(REPO / "corpus" / "queries.jsonl")
    leaked = sum(h.id in set(doomed) for tier in TIERS for r in searcher.search(questions, tier=tier, k=50) for h in r.hits)
    live_docs, live_chunks = searcher.index.store.counts()
    has_topic = "topic" in manifest.get("metadata_fields", [])
    filtered = searcher.search(["chest pain when climbing stairs"], tier="fast", k=10,
                               filters=["topic=symptom"])[0].hits if has_topic else []
    checks = {
        "documents": manifest["documents"], "documents_in_store": live_docs,
        "chunks_live": manifest["chunks"] - manifest["dead_chunks"], "chunks_in_store": live_chunks,
        "added_found_at_rank_1_in_every_tier": f"{rank_one}/{len(added)}",
        "deleted_hits_in_any_tier": leaked,
        "filter_topic_symptom_hits": len(filtered) if has_topic else "no topic field",
        "filter_all_match": all(h.metadata.get("topic") == "symptom" for h in filtered),
    }

    # Query latency as dead rows accumulate, from a compacted copy (0%) up to just under the
    # automatic compaction threshold: documents are deleted until that share of the rows is dead.
    latency = []
    encoder = searcher.encoder
    vectors = encoder.encode_queries(questions)
    base = work / "latency"
    shutil.copytree(index, base)
    compact(base)
    reader = Searcher(open_index(base), encoder)
    per_doc = {}
    for doc_id, rows in reader.index.store.db.execute(
            "SELECT d.id, count(*) FROM chunks c JOIN documents d ON d.ordinal = c.doc GROUP BY d.id ORDER BY d.id"):
        per_doc[doc_id] = rows
    order = random.Random(1).sample(sorted(per_doc), len(per_doc))
    for share in (0.0, 0.10, 0.29):
        index_now = reader.current()
        doomed_now, dead = [], index_now.manifest["dead_chunks"]
        while order and (dead + per_doc[order[0]]) / index_now.chunks <= share:
            dead += per_doc[order[0]]
            doomed_now.append(order.pop(0))
        if doomed_now:
            delete(base, doomed_now)
        index_now = reader.current()
        for tier in ("fast", "deep"):
            samples = []
            for _ in range(3):
                for vector in vectors:
                    started = time.perf_counter()
                    reader.search_vectors(vector[None, :], tier=tier, k=10)
                    samples.append(time.perf_counter() - started)
            latency.append({"dead_share": round(index_now.manifest["dead_chunks"] / index_now.chunks, 3), "tier": tier,
                            "p50_ms": median_ms(samples)})

    rows = [
        {"command": "medsearch index --rebuild", "documents": documents, "median_s": statistics.median(rebuilds)},
        {"command": f"medsearch add ({args.add} documents)", "documents": documents, "median_s": statistics.median(adds)},
        {"command": f"medsearch delete ({len(doomed)} documents, 1%)", "documents": documents, "median_s": statistics.median(deletes)},
    ]
    for row in rows:
        row["of_rebuild"] = round(row["median_s"] / rows[0]["median_s"], 3)
    print(f"\n{documents} documents; whole commands, medians of {args.repeat} (delete: 1 run)\n")
    print_table(rows, ["command", "documents", "median_s", "of_rebuild"])
    print()
    print_table(latency, ["dead_share", "tier", "p50_ms"])
    print("\n" + "\n".join(f"{key}: {value}" for key, value in checks.items()))
    write_results(args.name, {"rows": rows, "runs": {"rebuild": rebuilds, "add": adds, "delete": deletes},
                              "latency": latency, "checks": checks}, Path(args.out))


if __name__ == "__main__":
    main()
