"""The fast tier's frontier (binary sign-code candidates re-ranked from the stored matrix), and the
default that the build's calibration chose, on real vectors and on the synthetic generator at scale.

Every index is written by the product's own `write_index` (so the calibration for --target-recall
runs as in `medsearch index`, inside `build_seconds`). Then, in one process: deep's single-query
p50, the default fast tier's recall@10 against deep and p50, and for each stage a sweep of candidate
counts (recall, p50, bytes a vector of the candidate index). Query encoding is excluded.

    python bench/funnel.py --real /tmp/evalcache/IDX:MODEL --data ../shared/data/medquad --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_ms, print_table, recall_against, single_query_latencies, write_results  # noqa: E402
from synthetic import generate_lowrank, queries_near  # noqa: E402

from medsearch.index.build import BuildOptions, write_index  # noqa: E402
from medsearch.index.folder import open_index  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402

COUNTS = (20, 50, 100, 200, 500, 1000, 2000, 5000)


def measure(name: str, vectors: np.ndarray, queries: np.ndarray, folder: Path, timed: int, counts) -> list[dict]:
    started = time.perf_counter()
    manifest = write_index(folder, vectors, np.arange(len(vectors)), {"model": {"spec": name, "name": name, "fingerprint": name},
                                                                       "documents": len(vectors)}, BuildOptions(vector_dtype="float16"))
    build_s = time.perf_counter() - started
    searcher = Searcher(open_index(folder), None)
    index, n = searcher.index, len(vectors)
    fast = manifest["fast"]
    files = index.files()
    stage_bytes = {"binary": files["binary.faiss"] / n}
    deep, _ = searcher.search_vectors(queries, tier="deep", k=10)
    deep_ms = median_ms(single_query_latencies(searcher, queries[:timed], tier="deep", k=10))
    base = {"source": name, "size": n, "dim": vectors.shape[1], "build_s": build_s, "deep_p50_ms": deep_ms}
    rows = [{**base, "tier": "deep", "stage": "", "candidates": n, "default": True, "recall_vs_deep": 1.0, "p50_ms": deep_ms,
             "speedup_vs_deep": 1.0, "bytes_per_vector": files["vectors.faiss"] / n}]

    def point(stage: str, oversample: int | None, default: bool) -> dict:
        index.manifest["fast"] = {**fast, "stage": stage}
        got, _ = searcher.search_vectors(queries, tier="fast", k=10, oversample=oversample)
        ms = median_ms(single_query_latencies(searcher, queries[:timed], tier="fast", k=10, oversample=oversample))
        row = {**base, "tier": "fast", "stage": stage, "candidates": fast["candidates"] if oversample is None else 10 * oversample,
               "default": default, "recall_vs_deep": recall_against(got, deep), "p50_ms": ms, "speedup_vs_deep": deep_ms / ms,
               "bytes_per_vector": stage_bytes[stage]}
        print(f"  {name} {n}: {stage} {row['candidates']}{' (default)' if default else ''}: recall {row['recall_vs_deep']:.3f}, "
              f"p50 {ms:.2f} ms, {row['speedup_vs_deep']:.1f}x deep", flush=True)
        return row

    rows.append(point(fast["stage"], None, True))
    rows += [point("binary", c // 10, False) for c in counts if c < n]
    index.manifest["fast"] = fast
    return rows, fast


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys((r["source"], r["size"]) for r in rows))
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4.2), squeeze=False)
    for ax, (source, size) in zip(axes[0], sources):
        mine = [r for r in rows if (r["source"], r["size"]) == (source, size)]
        for stage, marker in (("binary", "s"),):
            pts = [r for r in mine if r["stage"] == stage and not r["default"]]
            ax.plot([r["p50_ms"] for r in pts], [r["recall_vs_deep"] for r in pts], marker=marker,
                    label=f"{stage} ({pts[0]['bytes_per_vector']:.0f} B/vector)" if pts else stage)
            for r in pts:
                ax.annotate(str(r["candidates"]), (r["p50_ms"], r["recall_vs_deep"]), fontsize=7, textcoords="offset points", xytext=(3, -8))
        for r in mine:
            if r["default"]:
                ax.scatter([r["p50_ms"]], [r["recall_vs_deep"]], s=90, marker="*", color="red" if r["tier"] == "fast" else "black", zorder=3)
                ax.annotate(f"{r['tier']}" + (f" default ({r['stage']}, {r['candidates']})" if r["tier"] == "fast" else ""),
                            (r["p50_ms"], r["recall_vs_deep"]), fontsize=8, textcoords="offset points", xytext=(5, 5))
        ax.set_xscale("log")
        ax.set_title(f"{source}: {size:,} x {mine[0]['dim']}", fontsize=9)
        ax.set_xlabel("p50 ms a query (log, encoding excluded)")
        ax.set_ylabel("recall@10 against deep")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="append", default=[], help="INDEX:MODEL, an index of real embeddings and the model for its queries")
    parser.add_argument("--data", default="../shared/data/medquad", help="BEIR folder whose queries (--split) query the real indexes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", default="100000,1000000", help="synthetic sizes ('' for none)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--calibration", default=str(RESULTS / "calibration-stages.json"),
                        help="bench/synthetic.py --stages output: the generator fitted to both real curves")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--timed", type=int, default=60, help="queries timed one at a time")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--name", default="funnel")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import json

    fit = json.loads(Path(args.calibration).read_text())["fits"][str(args.dim)]
    rows, defaults = [], {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for spec in args.real:
            from medsearch.encoding.encoder import Encoder
            from medsearch.training.evaluation import load_benchmark

            index_dir, model = spec.split(":", 1)
            vectors = np.asarray(open_index(index_dir).backend.vectors, dtype=np.float32)
            texts = list(load_benchmark(args.data, args.split).queries.values())
            queries = Encoder(model).encode_queries(texts)
            name = f"real {Path(model).name}"
            got, defaults[name] = measure(name, vectors, queries, Path(tmp) / f"real-{len(rows)}", args.timed, COUNTS)
            rows += got
        for n in [int(s) for s in args.sizes.split(",") if s]:
            docs = generate_lowrank(n, args.dim, fit["rank"], fit["sigma"], fit["beta"])
            queries = queries_near(docs, args.queries, fit["noise"])
            got, defaults[f"synthetic {n}"] = measure("synthetic", docs, queries, Path(tmp) / f"syn-{n}", args.timed, COUNTS)
            rows += got
            del docs
    print()
    print_table(rows, ["source", "size", "tier", "stage", "candidates", "default", "recall_vs_deep", "p50_ms", "speedup_vs_deep",
                       "bytes_per_vector", "build_s"])
    out = Path(args.out)
    generator = {key: fit[key] for key in ("rank", "sigma", "beta", "noise", "max_gap")}
    write_results(args.name, {"generator": generator,
                              "queries": args.queries, "timed": args.timed, "calibrations": defaults, "rows": rows}, out)
    plot(rows, out / f"{args.name}.png")


if __name__ == "__main__":
    main()
