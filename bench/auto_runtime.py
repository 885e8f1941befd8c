"""Does `auto` hold its choice (issue 32)? On this CPU: the runtime measurement that `auto` makes
(runtimes._timings + decide: one build batch per runtime in interleaved rounds), repeated --trials
times on the same loaded encoders, beside whole index builds of a corpus with each runtime (the
runtimes in turn, --builds rounds, the order turning each round), so the choice can be checked
against what a build shows: the chosen runtime should never be the slower one in whole builds.

    python bench/auto_runtime.py [--corpus corpus/] [--trials 5] [--builds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from medsearch.encoding.runtimes import auto as runtimes  # noqa: E402
from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.encoding.runtimes.base import CALIBRATION_TEXTS  # noqa: E402
from medsearch.encoding.runtimes.registry import RUNTIMES, runtime_installed  # noqa: E402
from medsearch.index.build import build_index  # noqa: E402
from medsearch.encoding.runtimes.openvino_export import calibration_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[1] / "corpus"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--trials", type=int, default=5, help="auto's measurement, repeated")
    parser.add_argument("--builds", type=int, default=2, help="whole builds per runtime")
    args = parser.parse_args()

    encoders = {r: Encoder(args.model, runtime=r) for r in RUNTIMES if runtime_installed(r)}
    texts, cpu = calibration_texts(CALIBRATION_TEXTS)[:runtimes.SAMPLE_PASSAGES], runtimes.cpu_identity()
    trials = []
    for trial in range(args.trials):
        started = time.perf_counter()
        times = runtimes._timings(encoders, texts)
        decision = runtimes.decide(times, cpu)
        trials.append({"trial": trial + 1, "choice": decision["runtime"], "sure": decision["sure"], "rounds": decision["rounds"],
                       "seconds": round(time.perf_counter() - started, 1),
                       **{f"{r} p/s": round(len(texts) / statistics.median(t), 1) for r, t in times.items()},
                       "basis": decision["basis"]})
        print(trials[-1], flush=True)
    builds: dict[str, list[float]] = {r: [] for r in encoders}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.builds):
            order = list(encoders)[round_ % len(encoders):] + list(encoders)[:round_ % len(encoders)]
            for runtime in order:
                manifest = build_index(args.corpus, Path(tmp) / f"{runtime}-{round_}", encoders[runtime], progress=False)
                builds[runtime].append(manifest["chunks"] / manifest["encode_seconds"])
                print(f"build {round_ + 1} {runtime}: {builds[runtime][-1]:.1f} passages/s", flush=True)
    build_rows = [{"runtime": r, "build passages/s (median)": round(statistics.median(v), 1),
                   "builds": ", ".join(f"{x:.1f}" for x in v)} for r, v in builds.items()]
    fastest_build = max(builds, key=lambda r: statistics.median(builds[r]))
    choices = Counter(t["choice"] for t in trials)
    print_table(trials, ["trial", "choice", "sure", "rounds", "seconds", *[f"{r} p/s" for r in encoders]])
    print_table(build_rows, ["runtime", "build passages/s (median)", "builds"])
    print(f"auto chose {dict(choices)} in {args.trials} trials; the fastest whole build: {fastest_build} ({cpu})")
    write_results("auto-runtime", {"cpu": cpu, "corpus": args.corpus, "model": args.model, "trials": trials,
                                   "builds": build_rows, "choices": dict(choices), "fastest_build": fastest_build})


if __name__ == "__main__":
    main()
