"""Where a cold command spends its time (issue 22), side by side with `python -c "import
sentence_transformers"` in the same run: `query`, a small `add` against a full build, and `serve`
until it is ready.

Each trial starts fresh processes:
- query: the whole command `medsearch query TEXT --json` (wall time), the import of
  sentence-transformers alone, and a child that times the phases a query goes through as library
  calls: import medsearch, open the index, load the model (the index's runtime), load the index,
  encode one query, search and hydrate it;
- add (with --add-corpus): `medsearch index` of that corpus once, then per trial `medsearch add` of
  --add-docs documents to a fresh copy of it (whole commands), and the add's phases as the write
  reports them (model, encode, store, lexical, vectors, calibrate, commit);
- serve: `medsearch serve` started until GET /readyz answers 200.
Medians over the trials.

    python bench/startup.py [--index DIR] [--trials 3]
    python bench/startup.py --add-corpus DIR --add-docs FILE.jsonl   (the bundled corpus + 652 MedQuAD answers, 3 more)
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
from medsearch.index.folder import open_index
from medsearch.index.model_check import index_encoder
from medsearch.retrieval.search import Searcher
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
from medsearch.retrieval.options import SearchOptions
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


ADD_PHASES = """
import json, sys, time
started = time.perf_counter()
from medsearch.index.folder import open_index
from medsearch.index.model_check import index_encoder
from medsearch.index.writes import upsert
imported = time.perf_counter() - started
base = open_index(sys.argv[1])
report = upsert(sys.argv[1], sys.argv[2], lambda: index_encoder(base))
print(json.dumps({"import medsearch": round(imported, 3), **{k: round(v, 3) for k, v in report.timings.items()},
                  "write total": round(report.seconds, 3)}))
"""


def serve_ready(index: str) -> float:
    """Seconds from starting `medsearch serve` to its first 200 on /readyz."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "medsearch", "serve", "--index", index, "--port", str(port),
                               "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.02)
        raise SystemExit("serve did not get ready in 120 s")
    finally:
        server.terminate()
        server.wait()


def add_trials(corpus: str, docs: str, trials: int, tmp: Path) -> dict:
    import shutil

    built = tmp / "add-base"
    build_s = wall(sys.executable, "-m", "medsearch", "index", corpus, "--index", str(built), "-q")
    out = {"index_s": round(build_s, 3), "trials": []}
    for trial in range(trials):
        copy = tmp / f"add-{trial}"
        shutil.copytree(built, copy)
        add_s = wall(sys.executable, "-m", "medsearch", "add", docs, "--index", str(copy), "-q")
        shutil.rmtree(copy)
        shutil.copytree(built, copy)
        done = subprocess.run([sys.executable, "-c", ADD_PHASES, str(copy), docs], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"add phases failed: {done.stderr.strip()[-500:]}")
        out["trials"].append({"add_s": round(add_s, 3), **json.loads(done.stdout.strip().splitlines()[-1])})
        shutil.rmtree(copy)
    out["add_s"] = statistics.median(t["add_s"] for t in out["trials"])
    out["add / index"] = round(out["add_s"] / build_s, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=None, help="an index folder [default: the bundled corpus, built here]")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--add-corpus", default=None, help="a corpus to build, then add --add-docs to (whole commands)")
    parser.add_argument("--add-docs", default=None, help="the documents the timed add adds (JSONL)")
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
            trials.append({"query_s": query_s, "import_sentence_transformers_s": import_s, **phases,
                           "serve_ready_s": serve_ready(index)})
        added = add_trials(args.add_corpus, args.add_docs, args.trials, Path(tmp)) if args.add_corpus else None
    names = [k for k, v in trials[0].items() if isinstance(v, float)]
    medians = {name: round(statistics.median(t[name] for t in trials), 3) for name in names}
    rows = [{"what": name, "median s": medians[name]} for name in names]
    rows.append({"what": "query / import sentence_transformers",
                 "median s": round(medians["query_s"] / medians["import_sentence_transformers_s"], 3)})
    print_table(rows, ["what", "median s"])
    print(f"runtime {trials[0]['runtime']}; imported: {', '.join(trials[0]['imported']) or 'none of the heavy libraries'}")
    if added:
        phases = [k for k in added["trials"][0] if k != "add_s"]
        add_rows = [{"what": "medsearch index (whole command)", "median s": added["index_s"]},
                    {"what": "medsearch add (whole command)", "median s": added["add_s"]},
                    {"what": "add / index", "median s": added["add / index"]},
                    *({"what": f"  add phase: {k}", "median s": round(statistics.median(t[k] for t in added["trials"] if k in t), 3)}
                      for k in phases)]
        print_table(add_rows, ["what", "median s"])
    write_results(args.name, {"query": QUERY, "medians_s": medians, "trials": trials, "add": added}, args.out)


if __name__ == "__main__":
    main()
