"""The README's quick start as a newcomer runs it (issue 32's bar): a fresh clone of this repository
in a temporary folder, the README's first command verbatim in a fresh venv with an empty medsearch
cache, then cold `medsearch query --json` on the index it built, each in a new process: wall time,
and whether the process imported torch (or transformers, sentence-transformers, optimum), as the
process's sys.modules says at exit.

    python bench/quickstart.py [--trials 3] [--keep DIR]

Needs the package index (pip installs torch and medsearch's requirements; pip's own cache helps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUERY = "what are the early signs of type 2 diabetes"
HEAVY = ("torch", "transformers", "sentence_transformers", "optimum")


def first_command(readme: Path) -> str:
    """The first bash block of the README's quick start."""
    section = readme.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


# `medsearch query` as its console script runs it, then the heavy modules the process imported (on stderr, at exit)
PROBE = """
import atexit, sys
atexit.register(lambda: print("HEAVY", *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
from medsearch.cli import main
sys.argv = ["medsearch", *sys.argv[1:]]
main()
"""


def cold_query(clone: Path, env: dict) -> dict:
    """One cold `medsearch query --json` in the clone's venv: wall seconds, hits, heavy modules imported."""
    started = time.perf_counter()
    done = subprocess.run([str(clone / ".venv/bin/python"), "-c", PROBE.format(heavy=HEAVY), "query", QUERY, "--json"],
                          cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"query failed: {done.stderr[-2000:]}")
    heavy = next(line.split()[1:] for line in done.stderr.splitlines() if line.startswith("HEAVY"))
    return {"wall_s": round(wall, 3), "hits": len(json.loads(done.stdout.splitlines()[0])["results"]), "heavy_imports": heavy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Clone into this folder and keep it (default: a temporary one, removed).")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="medsearch-quickstart-"))
    clone, cache = root / "medsearch", root / "cache"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MEDSEARCH_INDEX")}
    env.update(MEDSEARCH_CACHE=str(cache), PATH=f"{clone / '.venv/bin'}:{os.environ['PATH']}")
    command = first_command(REPO / "README.md")
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
    setup = time.perf_counter() - started
    print(done.stderr[-1500:], done.stdout[-1500:], sep="\n")
    if done.returncode:
        raise SystemExit(f"the README's first command exited {done.returncode}")
    answer = done.stdout[done.stdout.rfind(QUERY):] if QUERY in done.stdout else ""
    if not re.search(r"^\s+1\. ", answer, re.M):
        raise SystemExit("the README's first command printed no hit")
    runtime = json.loads(subprocess.run([str(clone / ".venv/bin/medsearch"), "info", "--json"], cwd=clone, env=env,
                                        capture_output=True, text=True, check=True).stdout)
    queries = [cold_query(clone, env) for _ in range(args.trials)]
    rows = [{"step": "README first command (installs, index, query)", "seconds": round(setup, 1), "note": f"exit {done.returncode}"}]
    rows += [{"step": f"cold query --json #{i + 1}", "seconds": q["wall_s"],
              "note": f"{q['hits']} hits; heavy imports: {', '.join(q['heavy_imports']) or 'none'}"} for i, q in enumerate(queries)]
    print_table(rows, ["step", "seconds", "note"])
    median = statistics.median(q["wall_s"] for q in queries)
    print(f"median cold query: {median:.2f} s; index runtime {runtime['model']['runtime']}; auto: {runtime['auto_runtime']}")
    write_results("quickstart", {"command": command, "setup_s": round(setup, 1), "exit": done.returncode,
                                 "first_command_answer": answer[:800], "queries": queries, "median_query_s": median,
                                 "index_runtime": runtime["model"]["runtime"], "auto": runtime["auto_runtime"]})
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
