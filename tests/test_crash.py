"""kill -9 at random moments of `medsearch add`: the index always opens and answers exactly as
before the write or exactly as after it, and the next write goes through."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from medsearch.corpus import read_corpus
from medsearch.index import build_index, open_index
from medsearch.search import Searcher
from medsearch.updates import upsert

from conftest import BUNDLED, REPO, write_jsonl

NEW = [
    {"id": "new-a", "title": "Quillan syndrome", "text": "Quillan syndrome makes the fingernails glow faintly blue at night.", "topic": "condition"},
    {"id": "new-b", "title": "Marrow lantern test", "text": "The marrow lantern test shines light through the shin to look for thin bone.", "topic": "test"},
    {"id": "doc-020", "title": "Type 2 diabetes: early signs", "text": "Rewritten: early type 2 diabetes often shows as thirst and tiredness."},
]
SEED = 20261129
TRIALS = 10


def answers(index_dir, vectors):
    searcher = Searcher(open_index(index_dir), None)
    out = []
    for tier in ("fast", "deep"):
        ranked, _ = searcher.search_vectors(vectors, tier=tier, k=10)
        out.append([[(row, round(float(score), 6)) for row, score in hits] for hits in ranked])
    return out


def run_add(index_dir, new_file):
    return subprocess.Popen([sys.executable, "-m", "medsearch", "add", str(new_file), "--index", str(index_dir), "-q"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_during_add_leaves_before_or_after(tmp_path, minilm):
    base = tmp_path / "base"
    build_index(BUNDLED, base, minilm)
    new_file = write_jsonl(tmp_path / "new.jsonl", NEW)
    queries = [d["text"] for d in NEW] + [json.loads(line)["text"] for line in open(BUNDLED / "queries.jsonl")][:10]
    vectors = minilm.encode_queries(queries)
    before = answers(base, vectors)

    done = tmp_path / "done"
    shutil.copytree(base, done)
    started = time.monotonic()
    process = run_add(done, new_file)
    assert process.wait(120) == 0, process.stderr.read()
    duration = time.monotonic() - started
    after = answers(done, vectors)
    assert after != before

    rng = random.Random(SEED)
    outcomes = []
    for trial in range(TRIALS):
        target = tmp_path / f"trial{trial}"
        shutil.copytree(base, target)
        # Half the kills anywhere in the run, half in its last quarter, where the new generation is written.
        moment = rng.uniform(0, duration) if trial % 2 == 0 else rng.uniform(0.75 * duration, 1.05 * duration)
        process = run_add(target, new_file)
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        state = answers(target, vectors)
        assert state in (before, after), f"trial {trial} (kill at {moment:.2f}s of {duration:.2f}s, seed {SEED})"
        outcomes.append("after" if state == after else "before")
        report = upsert(target, read_corpus(new_file), minilm)  # the lock is free, leftovers are cleared
        assert answers(target, vectors) == after and report.unchanged == (3 if state == after else 0)
        assert not [p for p in target.iterdir() if p.name.startswith(".tmp-")]
    print(f"kill -9 outcomes over {TRIALS} trials (add takes {duration:.1f}s): {outcomes}")
