"""kill -9 at random moments of `medsearch add`, 10 trials (bench/crash.py runs more): the index
always opens and answers exactly as before the write or exactly as after it, and the next write
goes through. The trial loop is bench/crash.py's `run_trials`, which asserts both."""

import sys

from conftest import BUNDLED, REPO

from medsearch.index.build import build_index

sys.path.insert(0, str(REPO / "bench"))
from crash import run_trials  # noqa: E402

SEED = 20261129


def test_kill_9_during_add_leaves_before_or_after(tmp_path, minilm):
    build_index(BUNDLED, tmp_path / "base", minilm)
    result = run_trials(tmp_path / "base", tmp_path, minilm, trials=10, seed=SEED)
    assert len(result["trials"]) == 10
    assert sum(result["states"].values()) == 10
    print(f"kill -9 outcomes (add takes {result['add_seconds']}s): {result['states']}")
