"""The growth curve: every tier as the corpus grows, on the calibrated synthetic generator.

Each size runs in its own process (so that its peak RSS is its own): the vectors are generated into a
float16 memory map (10M x 384 in float32 would not fit beside the index), written by the product's
own `write_index` (the fast tier's calibration included, inside `build_s`), then each tier answers
single queries (p50, p95) and batches of 32 (queries a second), and its recall@10 is measured against
deep's answers. Bytes on disk are counted per file, and per passage. Query encoding is excluded.

    python bench/growth.py --points 100000x384,1000000x384,10000000x384,1000000x1024 --workdir /tmp --name growth
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, print_table, recall_against, write_results  # noqa: E402

TIERS = ("fast", "light", "standard", "deep")
BATCH = 32


def rss_now_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_point(n: int, dim: int, fit: dict, queries: int, timed: int, slow_timed: int, workdir: Path) -> list[dict]:
    """Build and measure one (size, dim) point in this process."""
    from synthetic import generate_lowrank, queries_near

    from medsearch.index.build import BuildOptions, write_index
    from medsearch.index.folder import open_index
    from medsearch.retrieval.search import Searcher

    started = time.perf_counter()
    source = workdir / f"vectors-{n}x{dim}.npy"
    docs = np.lib.format.open_memmap(source, mode="w+", dtype=np.float16, shape=(n, dim))
    generate_lowrank(n, dim, fit["rank"], fit["sigma"], fit["beta"], out=docs)
    docs.flush()
    del docs  # written: what the build reads is the file, as a corpus's vectors on disk would be
    docs = np.load(source, mmap_mode="r")
    probes = queries_near(docs, queries, fit["noise"])
    generate_s = time.perf_counter() - started
    folder = workdir / f"index-{n}x{dim}"
    started = time.perf_counter()
    manifest = write_index(folder, docs, np.arange(n), {"model": {"spec": "synthetic", "name": "synthetic", "fingerprint": "s"},
                                                         "documents": n}, BuildOptions(vector_dtype="float16"))
    build_s = time.perf_counter() - started
    del docs
    source.unlink()
    build_peak = peak_rss_mib()
    searcher = Searcher(open_index(folder), None)
    files = searcher.index.files()
    deep, _ = searcher.search_vectors(probes, tier="deep", k=10)
    rows = []
    for tier in TIERS:
        got, _ = searcher.search_vectors(probes, tier=tier, k=10) if tier != "deep" else (deep, None)
        count = timed if tier in ("fast", "deep") else slow_timed
        seconds = []
        for q in probes[:count]:
            t = time.perf_counter()
            searcher.search_vectors(q[None, :], tier=tier, k=10)
            seconds.append(time.perf_counter() - t)
        batches = [probes[i:i + BATCH] for i in range(0, min(len(probes), 4 * BATCH), BATCH)]
        t = time.perf_counter()
        for batch in batches:
            searcher.search_vectors(batch, tier=tier, k=10)
        qps = sum(map(len, batches)) / (time.perf_counter() - t)
        rows.append({"size": n, "dim": dim, "tier": tier, "tier_dim": manifest["tier_dims"][tier],
                     "recall_vs_deep": recall_against(got, deep), "p50_ms": float(np.median(seconds) * 1000),
                     "p95_ms": float(np.percentile(seconds, 95) * 1000), "timed": count, "batched_qps": qps})
        print(f"  {n} x {dim} {tier}: recall {rows[-1]['recall_vs_deep']:.4f}, p50 {rows[-1]['p50_ms']:.2f} ms, "
              f"{qps:.1f} q/s in batches of {BATCH}", flush=True)
    disk = {name: size for name, size in files.items() if not name.startswith("lexical")}
    common = {"generate_s": generate_s, "build_s": build_s, "build_peak_rss_mib": build_peak,
              "peak_rss_mib": peak_rss_mib(), "query_rss_mib": rss_now_mib(), "disk_bytes": disk,
              "bytes_per_passage": {name: size / n for name, size in disk.items() if name in ("vectors.faiss", "binary.faiss")},
              "fast": {k: manifest["fast"][k] for k in ("stage", "candidates", "measured_recall")}}
    return [{**row, **common} for row in rows]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for dim, style in ((384, "-"), (1024, "--")):
        for tier, colour in zip(TIERS, ("tab:red", "tab:blue", "tab:green", "black")):
            pts = sorted((r for r in rows if r["dim"] == dim and r["tier"] == tier), key=lambda r: r["size"])
            if pts:
                axes[0].plot([r["size"] for r in pts], [r["p50_ms"] for r in pts], style, marker="o", color=colour, label=f"{tier} ({dim})")
                axes[1].plot([r["size"] for r in pts], [r["recall_vs_deep"] for r in pts], style, marker="o", color=colour, label=f"{tier} ({dim})")
        pts = sorted((r for r in rows if r["dim"] == dim and r["tier"] == "deep"), key=lambda r: r["size"])
        if pts:
            axes[2].plot([r["size"] for r in pts], [r["peak_rss_mib"] / 1024 for r in pts], style, marker="o", label=f"peak RSS ({dim})")
            axes[2].plot([r["size"] for r in pts], [sum(r["disk_bytes"].values()) / 2**30 for r in pts], style, marker="s", label=f"on disk ({dim})")
    for ax, title, label in ((axes[0], "single-query p50 (ms, log)", "ms"), (axes[1], "recall@10 against deep", "recall"),
                             (axes[2], "memory and disk (GiB)", "GiB")):
        ax.set_xscale("log")
        ax.set_xlabel("passages (log)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="100000x384,1000000x384,10000000x384,1000000x1024", help="SIZExDIM, comma-separated")
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"),
                        help="bench/synthetic.py --stages output: the generator fitted to the real curves")
    parser.add_argument("--queries", type=int, default=200, help="queries whose recall is measured")
    parser.add_argument("--timed", type=int, default=50, help="single queries timed for fast and deep")
    parser.add_argument("--slow-timed", type=int, default=10, help="single queries timed for light and standard (prefix scans)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--name", default="growth")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # SIZExDIM:JSON, run by the parent
    args = parser.parse_args()
    fits = json.loads(Path(args.calibration).read_text())["fits"]  # per generator dim, each fitted to the real curves
    if args.one:
        point, out = args.one.split(":", 1)
        n, dim = map(int, point.split("x"))
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            rows = one_point(n, dim, fits[str(dim)], args.queries, args.timed, args.slow_timed, Path(tmp))
        Path(out).write_text(json.dumps(rows))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for point in args.points.split(","):
            out = Path(tmp) / f"{point}.json"
            command = [sys.executable, __file__, "--one", f"{point}:{out}", "--calibration", args.calibration, "--queries",
                       str(args.queries), "--timed", str(args.timed), "--slow-timed", str(args.slow_timed)]
            subprocess.run(command + (["--workdir", args.workdir] if args.workdir else []), check=True)
            rows += json.loads(out.read_text())
    print()
    print_table(rows, ["size", "dim", "tier", "tier_dim", "recall_vs_deep", "p50_ms", "p95_ms", "batched_qps", "build_s",
                       "peak_rss_mib"])
    generator = {dim: {key: fit[key] for key in ("rank", "sigma", "beta", "noise", "max_gap")} for dim, fit in fits.items()}
    write_results(args.name, {"generator": generator, "queries": args.queries, "rows": rows}, Path(args.out))
    plot(rows, Path(args.out) / f"{args.name}.png")


if __name__ == "__main__":
    main()
