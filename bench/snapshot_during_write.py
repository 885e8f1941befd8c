"""A snapshot taken while `medsearch add` runs restores to exactly one generation (issue 21's bar).

Builds an index of the bundled corpus (default runtime: what `medsearch index` picks), writes down
its answers (ids and scores, fast and deep tiers, dense and hybrid, for the bundled questions),
starts `medsearch add` of N new documents, takes `medsearch snapshot` DELAY seconds later (both as
whole commands), lets the add finish, writes down the answers again, restores the snapshot into a
new folder and says which generation its answers equal. Then `medsearch verify` on the restored
index, and on a copy with one byte of vectors.npy flipped. Each trial prints one row; the JSON
holds every timing.

    python bench/snapshot_during_write.py [--docs 150] [--delay 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, print_table, write_results  # noqa: E402

from medsearch.documents.corpus import read_queries  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def medsearch(*args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medsearch", *args], cwd=REPO, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip(), time.perf_counter() - started


def answers(index: Path, queries: list[str]) -> list:
    searcher = Searcher.open(index)
    out = []
    for tier in ("fast", "deep"):
        for mode in ("dense", "hybrid"):
            out += [[(h.id, round(h.score, 5)) for h in r.hits] for r in searcher.search(queries, tier=tier, mode=mode, k=10)]
    searcher.index.close()
    return out


def new_documents(n: int) -> list[dict]:
    return [{"id": f"snapshot-bench-{i}", "title": f"Leaflet {i}: a cough that will not go away",
             "text": f"Leaflet {i}. A cough lasting more than eight weeks in adults has many causes, among them asthma, "
                     f"acid reflux, postnasal drip and some blood pressure medicines; see a doctor if it brings up blood, "
                     f"or comes with weight loss, fever or night sweats. Number {i} of the series."} for i in range(n)]


def trial(base: Path, work: Path, docs: Path, queries: list[str], delay: float, number: int) -> dict:
    index = work / f"index-{number}"
    shutil.copytree(base, index)
    before = answers(index, queries)
    writer = subprocess.Popen([sys.executable, "-m", "medsearch", "add", str(docs), "--index", str(index), "--quiet"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    time.sleep(delay)
    archive = work / f"snapshot-{number}.tar.zst"
    code, said, snapshot_s = medsearch("snapshot", str(index), str(archive))
    if code:
        raise SystemExit(f"snapshot failed: {said}")
    writing = writer.poll() is None  # the add was still running when the snapshot finished
    if writer.wait() != 0:
        raise SystemExit(f"add failed: {writer.stdout.read()}")
    add_s = time.perf_counter() - started
    after = answers(index, queries)
    restored = work / f"restored-{number}"
    code, said, restore_s = medsearch("restore", str(archive), str(restored))
    if code:
        raise SystemExit(f"restore failed: {said}")
    got = answers(restored, queries)
    code, said, verify_s = medsearch("verify", str(restored))
    verified = code == 0
    flipped = work / f"flipped-{number}"
    shutil.copytree(restored, flipped)
    vectors = next(flipped.glob("gen-*")) / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0x01
    vectors.unlink()
    vectors.write_bytes(bytes(data))
    code, flip_said, _ = medsearch("verify", str(flipped))
    return {"trial": number, "add_running_at_snapshot_end": writing,
            "restored_equals": "before" if got == before else "after" if got == after else "neither",
            "snapshot_s": round(snapshot_s, 2), "add_s": round(add_s, 2), "restore_s": round(restore_s, 2),
            "verify_s": round(verify_s, 2), "verify_restored": "pass" if verified else said,
            "verify_flipped": f"exit {code}: {flip_said}", "snapshot_bytes": archive.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--delay", type=float, default=3.0, help="seconds from the start of `add` to the snapshot")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--name", default="snapshot-during-write")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    _, queries = read_queries(REPO / "corpus" / "queries.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code, said, build_s = medsearch("index", str(REPO / "corpus"), "--index", str(work / "base"))
        if code:
            raise SystemExit(f"index failed: {said}")
        docs = work / "new.jsonl"
        docs.write_text("".join(json.dumps(d) + "\n" for d in new_documents(args.docs)))
        rows = [trial(work / "base", work, docs, queries, args.delay, n) for n in range(1, args.trials + 1)]
    print_table(rows, ["trial", "add_running_at_snapshot_end", "restored_equals", "snapshot_s", "add_s", "restore_s",
                       "verify_s", "verify_restored", "verify_flipped"])
    write_results(args.name, {"docs": args.docs, "delay_s": args.delay, "build_s": round(build_s, 2),
                              "queries": len(queries), "trials": rows}, args.out)


if __name__ == "__main__":
    main()
