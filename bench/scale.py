"""Scale: per tier latency (p50/p95), batched throughput, recall@10 against deep, build time, size on
disk and resident memory, at several corpus sizes and dims; then the funnel sweep (candidates x
64-dim index type x re-rank vector dtype) at the largest size, and a recall-vs-latency plot.

Vectors are synthetic (bench/synthetic.py), with the spectrum fitted to real embeddings by
`python bench/synthetic.py` (its JSON is read with --calibration). Query encoding is excluded from
the search figures; `encode_p50_ms` (the default model, measured here on real questions) is
reported beside them, and `p50_with_encode_ms` adds the two.

    python bench/scale.py --dims 1024,384 --sizes 10000,100000,1000000 --calibration bench/results/calibration.json
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

import faiss
import numpy as np

from common import RESULTS, median_ms, p95_ms, query_encode_p50_ms, single_query_latencies, print_table, recall_against, write_results
from medsearch.index.backends.faiss import FaissTier
from medsearch.index.backends.base import prefix
from medsearch.index.backends.faiss import HNSW_MIN_CHUNKS
from medsearch.index.folder import TIERS, open_index
from medsearch.retrieval.search import DEFAULT_OVERSAMPLE, Searcher
from synthetic import generate, queries_for, synthetic_searcher


def recall_vs_deep(searcher: Searcher, queries: np.ndarray, deep: list, **kwargs) -> float:
    got, _ = searcher.search_vectors(queries, k=10, **kwargs)
    return recall_against(got, deep)


def memory_probe(folder: str, tier: str, queries_file: str) -> None:
    """Child process: open the index, answer every query with one tier, report resident memory."""
    def status() -> dict:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024  # MiB
        return fields

    before = status()
    searcher = Searcher(open_index(folder), None)
    for q in np.load(queries_file):
        searcher.search_vectors(q[None, :], tier=tier, k=10)
    after = status()
    print(json.dumps({"before_mib": before, "after_mib": after, "tier_mib": after["VmRSS"] - before["VmRSS"]}))


def measure_memory(folder: Path, tier: str, queries_file: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", str(folder), tier, str(queries_file)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def encode_p50_ms(n: int = 50) -> float:
    from medsearch.documents.corpus import read_queries
    from medsearch.encoding.encoder import Encoder

    encoder = Encoder("default")
    return query_encode_p50_ms(encoder, read_queries(Path(__file__).resolve().parent.parent / "corpus" / "queries.jsonl")[1][:n])


def scale_run(dim: int, n: int, fit: dict, n_queries: int, workdir: Path, encode_ms: float | None) -> tuple[list[dict], Searcher, np.ndarray]:
    docs = generate(n, dim, fit["alpha"])
    queries = queries_for(docs, n_queries, fit["alpha"], fit["tilt"], fit["tilt_spread"])
    started = time.perf_counter()
    searcher = synthetic_searcher(docs, workdir / f"idx-{dim}-{n}")
    build_seconds = time.perf_counter() - started
    del docs
    index = searcher.index
    files = index.files()
    queries_file = workdir / f"q-{dim}-{n}.npy"
    np.save(queries_file, queries)
    deep, _ = searcher.search_vectors(queries, tier="deep", k=10)
    rows = []
    for tier in TIERS:
        tier_dim = index.manifest["tier_dims"][tier]
        lat = single_query_latencies(searcher, queries, tier=tier, k=10)
        started = time.perf_counter()
        searcher.search_vectors(queries, tier=tier, k=10)
        qps = len(queries) / (time.perf_counter() - started)
        disk = files[f"dim{tier_dim}.faiss"] + (files["vectors.npy"] if tier == "fast" else 0)
        memory = measure_memory(index.path, tier, queries_file)
        rows.append({
            "dim": dim, "n": n, "tier": tier, "tier_dim": tier_dim, "index_type": index.manifest.index_type(tier_dim),
            "p50_ms": median_ms(lat), "p95_ms": p95_ms(lat), "qps_batched": qps,
            "recall@10_vs_deep": recall_vs_deep(searcher, queries, deep, tier=tier),
            "encode_p50_ms": encode_ms, "p50_with_encode_ms": None if encode_ms is None else median_ms(lat) + encode_ms,
            "disk_mb": disk / 1e6, "rss_mib": memory["after_mib"]["VmRSS"], "rss_anon_mib": memory["after_mib"]["RssAnon"],
            "rss_file_mib": memory["after_mib"]["RssFile"], "rss_tier_mib": memory["tier_mib"],
            "flat_f32_full_mib": n * dim * 4 / 2**20, "build_s_all_tiers": build_seconds,
        })
        print(f"  {dim}d x {n}: {tier} p50 {rows[-1]['p50_ms']:.2f} ms, recall {rows[-1]['recall@10_vs_deep']:.3f}, "
              f"rss {rows[-1]['rss_mib']:.0f} MiB", flush=True)
    return rows, searcher, queries


def build_ivf(vectors: np.ndarray, nprobe: int) -> faiss.Index:
    """IVF-flat over normalised prefix vectors, 4 * sqrt(n) lists, trained on up to 100k of them."""
    nlist = max(1, int(4 * np.sqrt(len(vectors))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 100_000), replace=False)]
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    return index


def funnel_sweep(searcher: Searcher, queries: np.ndarray, oversamples: list[int], workdir: Path, ivf_nprobe: int = 256) -> list[dict]:
    """Candidates x candidate index x re-rank vectors, at one size. The fast tier's 64-dim candidates
    come from flat, HNSW (float16 and float32 re-rank vectors) and IVF indexes; one more series takes
    its candidates from an HNSW index over 128-dim prefixes, to show what a wider candidate dim buys."""
    index = searcher.index
    fast_dim = index.manifest["tier_dims"]["fast"]
    deep, _ = searcher.search_vectors(queries, tier="deep", k=10)
    float16 = index.backend.vectors
    full = np.asarray(float16, dtype=np.float32)
    np.save(workdir / "vectors32.npy", full)
    float32 = np.load(workdir / "vectors32.npy", mmap_mode="r")
    prefixes = {dim: prefix(full, dim) for dim in (fast_dim, 2 * fast_dim) if dim < index.full_dim}
    del full
    backend = index.backend  # the FAISS backend: its tiers and re-rank vectors are swapped per configuration
    saved = dict(index.manifest["tier_dims"]), dict(index.manifest["index_types"]), dict(backend._tiers)
    configs = [(fast_dim, "flat", ("float16",)), (fast_dim, "hnsw", ("float16", "float32")), (fast_dim, f"ivf nprobe {ivf_nprobe}", ("float16",))]
    configs += [(dim, "hnsw", ("float16",)) for dim in prefixes if dim != fast_dim]
    rows = []
    for dim, kind, dtypes in configs:
        backend._tiers, index.manifest["index_types"] = dict(saved[2]), dict(saved[1])  # the index as built
        if saved[1].get(str(dim)) == kind:
            candidate = backend.tier(dim)
        else:
            started = time.perf_counter()
            candidate = (FaissTier(build_ivf(prefixes[dim], ivf_nprobe), kind) if kind.startswith("ivf")
                         else FaissTier.build(prefixes[dim], kind))
            print(f"  built {kind} {dim}d in {time.perf_counter() - started:.1f}s", flush=True)
        backend._tiers[dim] = candidate
        index.manifest["index_types"][str(dim)] = kind  # the searcher passes efSearch only for "hnsw"
        index.manifest["tier_dims"]["fast"] = dim
        for dtype in dtypes:
            backend.__dict__["vectors"] = float16 if dtype == "float16" else float32
            for factor in oversamples:
                lat = single_query_latencies(searcher, queries, tier="fast", k=10, oversample=factor)
                rows.append({
                    "candidate_dim": dim, "index_type": kind, "faiss_class": type(backend.tier(dim).index).__name__,
                    "vectors": dtype, "oversample": factor, "candidates": 10 * factor,
                    "recall@10_vs_deep": recall_vs_deep(searcher, queries, deep, tier="fast", oversample=factor),
                    "p50_ms": median_ms(lat), "p95_ms": p95_ms(lat),
                })
                print(f"  {kind} {dim}d {dtype} x{factor}: recall {rows[-1]['recall@10_vs_deep']:.3f}, p50 {rows[-1]['p50_ms']:.2f} ms", flush=True)
    index.manifest["tier_dims"], index.manifest["index_types"], backend._tiers = saved
    backend.__dict__["vectors"] = float16
    return rows


def plot(scale_rows: list[dict], sweep_rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = dict.fromkeys((r["candidate_dim"], r["index_type"], r["vectors"]) for r in sweep_rows)
    for (dim, kind, dtype), marker in zip(series, "os^vDP*X"):
        pts = [r for r in sweep_rows if (r["candidate_dim"], r["index_type"], r["vectors"]) == (dim, kind, dtype)]
        if pts:
            ax.plot([r["p50_ms"] for r in pts], [r["recall@10_vs_deep"] for r in pts], marker=marker, label=f"fast: {kind} {dim}d + {dtype} re-rank")
            for r in pts:
                ax.annotate(str(r["candidates"]), (r["p50_ms"], r["recall@10_vs_deep"]), fontsize=7, textcoords="offset points", xytext=(3, -8))
    for r in scale_rows:
        if r["tier"] != "fast":
            ax.scatter([r["p50_ms"]], [r["recall@10_vs_deep"]], s=60, zorder=3)
            ax.annotate(f"{r['tier']} ({r['tier_dim']}d)", (r["p50_ms"], r["recall@10_vs_deep"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set_xlabel("query latency p50 (ms, encoding excluded, log scale)")
    ax.set_ylabel("recall@10 against deep")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        memory_probe(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="1024,384")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--calibration", default=str(RESULTS / "calibration.json"), help="synthetic.py output (alpha, tilt, tilt spread per dim)")
    parser.add_argument("--alpha", type=float, default=None, help="use this spectrum for every dim instead of --calibration (uncalibrated)")
    parser.add_argument("--tilt", type=float, default=0.0, help="mean query tilt with --alpha")
    parser.add_argument("--tilt-spread", type=float, default=1.0, help="query tilt spread with --alpha")
    parser.add_argument("--sweep-oversample", default="1,5,10,20,50,100,200,500,1000")
    parser.add_argument("--sweep-at", default=None, help="sizes to run the funnel sweep at, comma-separated [default: the largest]")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-encode", action="store_true", help="skip measuring query encoding")
    parser.add_argument("--workdir", default=None, help="where index folders are built (default: a temporary folder)")
    parser.add_argument("--name", default="scale")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    if args.alpha is not None:
        fits = {d: {"alpha": args.alpha, "tilt": args.tilt, "tilt_spread": args.tilt_spread, "calibrated": False} for d in args.dims.split(",")}
    else:
        fits = json.loads(Path(args.calibration).read_text())["fits"]
    encode_ms = None if args.no_encode else encode_p50_ms()
    dims, sizes = [int(d) for d in args.dims.split(",")], [int(n) for n in args.sizes.split(",")]
    sweep_at = [int(n) for n in args.sweep_at.split(",")] if args.sweep_at else [max(sizes)]
    scale_rows, sweeps = [], {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for dim in dims:
            for n in sizes:
                rows, searcher, queries = scale_run(dim, n, fits[str(dim)], args.queries, Path(tmp), encode_ms if dim == 384 else None)
                scale_rows += rows
                if n in sweep_at and not args.no_sweep:
                    sweeps[f"{dim}x{n}"] = funnel_sweep(searcher, queries, [int(o) for o in args.sweep_oversample.split(",")], Path(tmp))
                del searcher
                shutil.rmtree(Path(tmp) / f"idx-{dim}-{n}", ignore_errors=True)
    print(f"\nsearch latency excludes query encoding; encode p50 (default model) {encode_ms if encode_ms is None else round(encode_ms, 2)} ms; "
          f"default oversample {DEFAULT_OVERSAMPLE}, HNSW from {HNSW_MIN_CHUNKS} chunks\n")
    print_table(scale_rows, ["dim", "n", "tier", "index_type", "p50_ms", "p95_ms", "qps_batched", "recall@10_vs_deep",
                             "disk_mb", "rss_mib", "rss_anon_mib", "rss_file_mib", "flat_f32_full_mib", "build_s_all_tiers"])
    for key, rows in sweeps.items():
        dim, n = key.split("x")
        print(f"\nfunnel sweep, {dim} dims x {n}")
        print_table(rows, ["candidate_dim", "index_type", "vectors", "candidates", "recall@10_vs_deep", "p50_ms", "p95_ms"])
    out = Path(args.out)
    write_results(args.name, {"fits": fits, "sizes": sizes, "dims": dims, "queries": args.queries, "default_oversample": DEFAULT_OVERSAMPLE,
                              "scale": scale_rows, "sweeps": sweeps}, out)
    for key, rows in sweeps.items():
        dim, n = map(int, key.split("x"))
        plot([r for r in scale_rows if r["dim"] == dim and r["n"] == n], rows,
             out / f"{args.name}-{dim}d-{n}.png", f"{dim}-dim vectors x {n:,}: recall vs latency per tier")


if __name__ == "__main__":
    main()
