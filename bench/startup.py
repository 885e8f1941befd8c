"""Where a cold `medsearch query` spends its time (issue 22's starting point), side by side with
`python -c "import sentence_transformers"` in the same run.

Each trial starts fresh processes: the whole command `medsearch query TEXT --json` (wall time), the
import of sentence-transformers alone, and a child that times the phases a query goes through as
library calls: import medsearch, open the index, load the model (runtime as the index's default
resolves), load the index, encode one query, search and hydrate it. Medians over the trials.

    python bench/startup.py [--index DIR] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, print_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUERY = "chest pain when climbing stairs"

PHASES = """
import json, sys, time
started = time.perf_counter()
marks = {}
def mark(name):
    global started
    now = time.perf_counter()
    marks[name] = round(now - started, 3)
    started = now
from medsearch.index import index_encoder, open_index
from medsearch.search import Searcher
mark("import medsearch")
index = open_index(sys.argv[1])
mark("open index")
encoder = index_encoder(index)
mark("load model")
searcher = Searcher(index, encoder)
index.load()
mark("load index")
vectors = encoder.encode_queries([sys.argv[2]])
mark("encode")
from medsearch.options import SearchOptions
options = searcher.resolve(SearchOptions())
searcher.search_encoded([sys.argv[2]], vectors, options)
mark("search + hydrate")
marks["runtime"] = encoder.runtime
modules = sys.modules
marks["imported"] = [m for m in ("torch", "transformers", "sentence_transformers", "optimum", "openvino") if m in modules]
print(json.dumps(marks))
"""


def wall(*command: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=None, help="an index folder [default: the bundled corpus, built here]")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--name", default="startup")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or str(Path(tmp) / "index")
        if args.index is None:
            wall(sys.executable, "-m", "medsearch", "index", str(REPO / "corpus"), "--index", index)
        wall(sys.executable, "-m", "medsearch", "query", QUERY, "--index", index, "--json")  # exports and caches made
        trials = []
        for _ in range(args.trials):
            query_s = wall(sys.executable, "-m", "medsearch", "query", QUERY, "--index", index, "--json")
            import_s = wall(sys.executable, "-c", "import sentence_transformers")
            done = subprocess.run([sys.executable, "-c", PHASES, index, QUERY], cwd=REPO, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"phases failed: {done.stderr.strip()[-500:]}")
            phases = json.loads(done.stdout.strip().splitlines()[-1])
            trials.append({"query_s": query_s, "import_sentence_transformers_s": import_s, **phases})
    names = [k for k, v in trials[0].items() if isinstance(v, float)]
    medians = {name: round(statistics.median(t[name] for t in trials), 3) for name in names}
    rows = [{"what": name, "median s": medians[name]} for name in names]
    rows.append({"what": "query / import sentence_transformers",
                 "median s": round(medians["query_s"] / medians["import_sentence_transformers_s"], 3)})
    print_table(rows, ["what", "median s"])
    print(f"runtime {trials[0]['runtime']}; imported: {', '.join(trials[0]['imported'])}")
    write_results(args.name, {"query": QUERY, "medians_s": medians, "trials": trials}, args.out)


if __name__ == "__main__":
    main()
