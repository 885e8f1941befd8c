"""kill -9 at random moments of `medsearch add`: after each kill the index must open and answer
exactly as before the write or exactly as after it, and the next write must go through.

Each trial copies a fresh index, starts `medsearch add` on three documents (two new, one
changed), kills it with SIGKILL after a random delay (half anywhere in the run, half in its last
quarter, where the new generation is written), then compares the answers of the fast and deep
tiers (rows and scores) with those of the index before the write and after an unkilled write.

    python bench/crash.py --trials 40          (tests/test_crash.py runs 10)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import RESULTS, write_results
from medsearch.documents.corpus import read_corpus
from medsearch.encoding.encoder import Encoder
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.index.writes import upsert

REPO = Path(__file__).resolve().parent.parent
NEW = [
    {"id": "new-a", "title": "Quillan syndrome", "text": "Quillan syndrome makes the fingernails glow faintly blue at night.", "topic": "condition"},
    {"id": "new-b", "title": "Marrow lantern test", "text": "The marrow lantern test shines light through the shin to look for thin bone.", "topic": "test"},
    {"id": "doc-020", "title": "Type 2 diabetes: early signs", "text": "Rewritten: early type 2 diabetes often shows as thirst and tiredness."},
]


def answers(index_dir: Path, vectors) -> list:
    """Rows and scores of the fast and deep tiers for each query vector."""
    searcher = Searcher(open_index(index_dir), None)
    out = []
    for tier in ("fast", "deep"):
        ranked, _ = searcher.search_vectors(vectors, tier=tier, k=10)
        out.append([[(row, round(float(score), 6)) for row, score in hits] for hits in ranked])
    return out


def run_add(index_dir: Path, new_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medsearch", "add", str(new_file), "--index", str(index_dir), "-q"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_trials(base: Path, work: Path, encoder: Encoder, trials: int, seed: int) -> dict:
    """Kill `medsearch add` `trials` times; raise AssertionError on any state that is neither
    before nor after, or on a next write that does not reach the after state."""
    new_file = work / "new.jsonl"
    new_file.write_text("".join(json.dumps(d) + "\n" for d in NEW))
    queries = [d["text"] for d in NEW] + [json.loads(line)["text"] for line in open(REPO / "corpus" / "queries.jsonl")][:10]
    vectors = encoder.encode_queries(queries)
    before = answers(base, vectors)
    done = work / "done"
    shutil.copytree(base, done)
    started = time.monotonic()
    process = run_add(done, new_file)
    if process.wait(300):
        raise RuntimeError(process.stderr.read().decode())
    duration = time.monotonic() - started
    after = answers(done, vectors)
    assert after != before, "the write changed nothing"
    rng = random.Random(seed)
    outcomes = []
    for trial in range(trials):
        target = work / f"trial{trial}"
        shutil.copytree(base, target)
        moment = rng.uniform(0, duration) if trial % 2 == 0 else rng.uniform(0.75 * duration, 1.05 * duration)
        process = run_add(target, new_file)
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        state = answers(target, vectors)
        assert state in (before, after), f"trial {trial}: kill at {moment:.2f}s of {duration:.2f}s (seed {seed})"
        outcome = "after" if state == after else "before"
        report = upsert(target, read_corpus(new_file), encoder)  # the lock is free, leftovers are cleared
        assert answers(target, vectors) == after and report.unchanged == (3 if outcome == "after" else 0), f"trial {trial}"
        assert not [p for p in target.iterdir() if p.name.startswith(".tmp-")], f"trial {trial}: a temporary folder is left"
        outcomes.append({"trial": trial, "kill_at_s": round(moment, 3), "state": outcome})
        shutil.rmtree(target)
    return {"add_seconds": round(duration, 2), "trials": outcomes, "states": dict(Counter(o["state"] for o in outcomes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--name", default="crash")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medsearch-crash-"))
    encoder = Encoder()
    build_index(REPO / "corpus", work / "base", encoder)
    result = run_trials(work / "base", work, encoder, args.trials, args.seed)
    print(f"{args.trials} kills of `medsearch add` ({result['add_seconds']}s a run): {result['states']}; "
          "every index opened and answered exactly as before or after, and the next write completed")
    write_results(args.name, {"seed": args.seed, **result}, Path(args.out))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
