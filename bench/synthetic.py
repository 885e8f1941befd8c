"""Synthetic Matryoshka-like vectors, calibrated against real embeddings.

Documents: Gaussian vectors whose dim i has variance (i+1)^-alpha (leading dims carry most of
the variance, as in a Matryoshka model), L2-normalised.

Queries: a random document plus a little Gaussian noise of the same spectrum, then each query's
dims re-weighted by (i+1)^(gamma/2), with gamma drawn per query from N(tilt, tilt_spread). A query
with gamma > 0 puts its weight in the trailing dims, so its 64-dim prefix says little about its
full-dim neighbours (a hard query for the funnel); gamma < 0 makes an easy one. The spread of gamma
gives the mix of easy queries and a long tail of hard ones that real queries show; a single noise
level (the first generator tried) gives a curve that is far too steep.

How hard the funnel is depends on alpha, tilt and tilt_spread, so they are fitted: at the real
corpus size, the generator's curve of fast-tier recall@10 against `deep` over candidate counts
must match the curve of the real embeddings (DESIGN.md: within 0.02 at each point). Both curves
are measured at the vector level (each chunk vector is its own result, no collapsing to
documents), since synthetic vectors have no documents to collapse into.

    python bench/synthetic.py --index indexes/eval/<tuned model index> --data ../shared/data/medquad

A second generator, `generate_lowrank`, serves the fast tier's two candidate stages (64-dim prefix
and binary sign codes; bench/funnel.py): the spectrum generator's documents have no neighbourhoods
beyond their leading dims, so its sign codes carry almost nothing, unlike real ones. `--stages` fits
it so that both stages' curves match the real ones at once:

    python bench/synthetic.py --stages --index <tuned model index> --model <tuned model> --data ../shared/data/medquad
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import RESULTS, print_table, recall_against, write_results
from medsearch.index.build import BuildOptions, write_index
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher

OVERSAMPLES = (1, 2, 5, 10, 20, 40, 80)
ALPHAS = (1.0, 1.25, 1.5, 1.75)
TILTS = (-0.25, 0.0, 0.25)
TILT_SPREADS = (0.75, 1.0, 1.25, 1.5)
QUERY_NOISE = 0.5


def generate(n: int, dim: int, alpha: float, seed: int = 0, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = spectrum(dim, -alpha / 2)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), dim), dtype=np.float32) * scale
        out[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


TOPIC_LEVELS = 6  # nested topics of 3, 9, 27, ... 729 documents


def generate_lowrank(n: int, dim: int, rank: int = 48, sigma: float = 0.8, beta: float = 0.25, offset: float = 0.3,
                     seed: int = 0, block: int = 100_000, out: np.ndarray | None = None) -> np.ndarray:
    """Documents for both candidate stages (prefix and binary): a low-rank topic structure spread
    over every dim plus isotropic noise, as real embeddings are (flat per-dim variance, strong
    neighbourhoods: MedQuAD under MiniLM has top-10 cosine 0.65 against 0.13 at random).

    Each document has `rank` latent coordinates: the sum of the centres of its nested topics (groups
    of 3, 9, ... 729, TOPIC_LEVELS levels) plus its own part; a fixed random map to `dim` dims, whose
    weight on dim i falls as (i+1)^-beta (a Matryoshka model front-loads what separates documents,
    so the 64-dim prefix knows the neighbourhoods), plus `sigma` isotropic noise and a shared mean of
    `offset` per dim (the anisotropy that makes some sign bits the same for every document).
    `out`: where to write them (e.g. a float16 memory map, for sizes whose float32 would not fit)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    weight = spectrum(dim, -beta)
    mix *= weight / np.sqrt(np.mean(weight**2))
    centres = [rng.standard_normal((n // 3 ** (level + 1) + 1, rank)).astype(np.float32) for level in range(TOPIC_LEVELS)]
    mean = offset * rng.standard_normal(dim).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32) if out is None else out
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        latent = 0.5 * rng.standard_normal((len(rows), rank)).astype(np.float32)
        for level, level_centres in enumerate(centres):
            latent += level_centres[rows // 3 ** (level + 1)] / np.sqrt(TOPIC_LEVELS)
        part = latent @ mix + mean + sigma * rng.standard_normal((len(rows), dim)).astype(np.float32)
        out[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def queries_near(docs: np.ndarray, n: int, noise: float = 0.4, seed: int = 1) -> np.ndarray:
    """Queries for generate_lowrank: random documents plus isotropic noise of norm ~`noise`."""
    rng = np.random.default_rng(seed)
    picked = np.asarray(docs[rng.choice(len(docs), size=n, replace=len(docs) < n)], dtype=np.float32)
    noisy = picked + noise * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(docs.shape[1])
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


STAGE_COUNTS = (10, 20, 50, 100, 200, 400, 800)


def stage_curves(docs: np.ndarray, queries: np.ndarray, counts=STAGE_COUNTS, fast_dim: int = 64) -> dict[str, list[float]]:
    """Recall@10 against exact full-dim search of each candidate stage (64-dim prefix, binary
    codes) after an exact re-rank, per candidate count: straight faiss, no index folder."""
    import faiss

    from medsearch.index.backends.faiss import binary_codes
    from medsearch.index.backends.funnel import rerank
    from medsearch.index.backends.base import prefix

    _, truth = faiss.knn(queries, docs, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, by_prefix = faiss.knn(prefix(queries, fast_dim), prefix(docs, fast_dim), max(counts), metric=faiss.METRIC_INNER_PRODUCT)
    codes = faiss.IndexBinaryFlat(docs.shape[1])
    codes.add(binary_codes(docs))
    _, by_binary = codes.search(binary_codes(queries), max(counts))
    curves = {}
    for name, found in (("prefix", by_prefix), ("binary", by_binary)):
        curves[name] = []
        for count in counts:
            ranked, _ = rerank(queries, list(found[:, :count]), lambda rows: docs[rows])
            curves[name].append(float(np.mean([len(set(r[:10]) & set(t)) / 10 for r, t in zip(ranked, truth)])))
    return curves


def calibrate_stages(real: dict[str, list[float]], n: int, dim: int, n_queries: int, grid: dict) -> dict:
    """Grid-search generate_lowrank's (rank, sigma, beta) and the query noise so that BOTH stage
    curves at size n match the real ones: the fit minimises the largest gap over both curves."""
    import itertools

    trials = []
    for rank, sigma, beta in itertools.product(grid["rank"], grid["sigma"], grid["beta"]):
        docs = generate_lowrank(n, dim, rank, sigma, beta)
        for noise in grid["noise"]:
            curves = stage_curves(docs, queries_near(docs, n_queries, noise))
            gap = max(float(np.max(np.abs(np.array(curves[s]) - np.array(real[s])))) for s in real)
            trials.append({"rank": rank, "sigma": sigma, "beta": beta, "noise": noise, "curves": curves, "max_gap": gap})
            print(f"  rank {rank} sigma {sigma} beta {beta} noise {noise}: gap {gap:.3f} "
                  + "; ".join(f"{s} " + ",".join(f"{r:.2f}" for r in curves[s]) for s in curves), flush=True)
    return {"best": min(trials, key=lambda t: t["max_gap"]), "trials": trials}


def spectrum(dim: int, power: float | np.ndarray) -> np.ndarray:
    """(i+1)^power for i = 0..dim-1 (power may be a column of per-row powers)."""
    return np.arange(1, dim + 1, dtype=np.float32) ** np.asarray(power, dtype=np.float32)


def queries_for(docs: np.ndarray, n: int, alpha: float, tilt: float, tilt_spread: float, seed: int = 1,
                noise: float = QUERY_NOISE) -> np.ndarray:
    """Noisy copies of random documents, each re-weighted by its own spectral tilt (module docstring)."""
    rng = np.random.default_rng(seed)
    dim = docs.shape[1]
    scale = spectrum(dim, -alpha / 2)
    picked = np.asarray(docs[rng.choice(len(docs), size=n, replace=len(docs) < n)], dtype=np.float32)
    noisy = picked + noise * rng.standard_normal((n, dim), dtype=np.float32) * scale / np.linalg.norm(scale)
    gamma = rng.normal(tilt, tilt_spread, size=(n, 1))
    tilted = noisy * spectrum(dim, gamma / 2)
    return (tilted / np.linalg.norm(tilted, axis=1, keepdims=True)).astype(np.float32)


def recall_curve(searcher: Searcher, queries: np.ndarray, oversamples=OVERSAMPLES, k: int = 10) -> list[float]:
    """Fast-tier recall@k against deep with the 64-dim prefix candidate stage (what the spectrum
    generator is fitted to), one value per oversampling factor (candidates = k x factor)."""
    searcher.index.manifest["fast"] = {**(searcher.index.manifest.fast or {}), "stage": "prefix"}
    deep, _ = searcher.search_vectors(queries, tier="deep", k=k)
    return [recall_against(searcher.search_vectors(queries, tier="fast", k=k, oversample=factor)[0], deep, k) for factor in oversamples]


def synthetic_searcher(vectors: np.ndarray, folder: Path, **kwargs) -> Searcher:
    """An index folder over synthetic vectors (one chunk per document, no docs.db), opened for search."""
    write_index(folder, vectors, np.arange(len(vectors)), {"model": {"spec": "synthetic", "name": "synthetic", "fingerprint": "synthetic"}, "documents": len(vectors)}, BuildOptions(**kwargs))
    return Searcher(open_index(folder), None)


def calibrate(real_curve: list[float], n: int, dim: int, n_queries: int, workdir: Path, oversamples=OVERSAMPLES) -> dict:
    """Grid-search (alpha, tilt, tilt_spread) so the synthetic curve at size n matches the real one:
    a coarse grid, then a finer one around the best point."""
    trials: dict[tuple, dict] = {}  # (alpha, tilt, tilt_spread) -> trial

    def grid(alphas, tilts, spreads):
        for alpha in alphas:
            docs = generate(n, dim, alpha)
            folder = workdir / f"cal-{dim}-{alpha:.4f}"
            searcher = synthetic_searcher(docs, folder, vector_dtype="float32")
            for tilt in tilts:
                for spread in spreads:
                    point = (round(float(alpha), 4), round(float(tilt), 4), round(float(spread), 4))
                    if point in trials:  # the refined grid is centred on a point the coarse one measured
                        continue
                    curve = recall_curve(searcher, queries_for(docs, n_queries, alpha, tilt, spread), oversamples)
                    gap = float(np.max(np.abs(np.array(curve) - np.array(real_curve))))
                    trials[point] = {"alpha": point[0], "tilt": point[1], "tilt_spread": point[2], "curve": curve, "max_gap": gap}
            shutil.rmtree(folder, ignore_errors=True)

    grid(ALPHAS, TILTS, TILT_SPREADS)
    coarse = min(trials.values(), key=lambda t: t["max_gap"])
    steps = np.array([-0.0625, 0.0, 0.0625])
    grid([a for a in coarse["alpha"] + steps if a > 0], coarse["tilt"] + steps, [s for s in coarse["tilt_spread"] + 2 * steps if s > 0])
    best = min(trials.values(), key=lambda t: t["max_gap"])
    return {"best": best, "trials": list(trials.values())}


def real_curve_from_index(index_dir: str, data: str, split: str, workdir: Path, oversamples=OVERSAMPLES) -> tuple[list[float], int]:
    """Recall curve of the split's queries over the index's chunk vectors, one result per vector."""
    from medsearch.encoding.encoder import Encoder
    from medsearch.training.evaluation import load_benchmark

    index = open_index(index_dir)
    texts = list(load_benchmark(data, split).queries.values())
    queries = Encoder(index.manifest["model"]["spec"]).encode_queries(texts)
    searcher = synthetic_searcher(np.asarray(index.backend.vectors, dtype=np.float32), workdir / "real", vector_dtype="float32")
    return recall_curve(searcher, queries, oversamples), index.chunks


def main_stages(args) -> None:
    """Both candidate stages' curves, real vs the fitted generator (bench/results/calibration-stages.json)."""
    from medsearch.encoding.encoder import Encoder
    from medsearch.training.evaluation import load_benchmark

    earlier = {"fits": {}, "trials": {}}
    if args.real_curves:  # the real side of an earlier run (its index may be gone): fit more dims to it
        earlier = json.loads(Path(args.real_curves).read_text())
        real, size = earlier["real_curves"], earlier["real_size"]
        args.index, args.model = earlier["index"], earlier["model"]
    else:
        index = open_index(args.index)
        docs = np.asarray(index.backend.vectors, dtype=np.float32)
        texts = list(load_benchmark(args.data, args.split).queries.values())
        queries = Encoder(args.model or index.manifest["model"]["spec"]).encode_queries(texts)
        real, size = stage_curves(docs, queries), len(docs)
    print("real: " + "; ".join(f"{s} " + ", ".join(f"{c}: {r:.3f}" for c, r in zip(STAGE_COUNTS, real[s])) for s in real), flush=True)
    grid = {"rank": [int(r) for r in args.ranks.split(",")], "sigma": [float(x) for x in args.sigmas.split(",")],
            "beta": [float(b) for b in args.betas.split(",")], "noise": [float(x) for x in args.noises.split(",")]}
    fits = {}
    for dim in map(int, args.dims.split(",")):
        fits[str(dim)] = calibrate_stages(real, size, dim, args.queries, grid)
        best = fits[str(dim)]["best"]
        print(f"dim {dim}: " + ", ".join(f"{k} {best[k]}" for k in ("rank", "sigma", "beta", "noise", "max_gap")))
    rows = [{"stage": s, "candidates": c, "real": real[s][i], **{f"synthetic {d}": f["best"]["curves"][s][i] for d, f in fits.items()}}
            for s in real for i, c in enumerate(STAGE_COUNTS)]
    print_table(rows, list(rows[0]))
    write_results(args.name, {"index": args.index, "model": args.model, "real_size": size, "counts": list(STAGE_COUNTS),
                              "real_curves": real, "fits": {**earlier["fits"], **{d: f["best"] for d, f in fits.items()}},
                              "trials": {**earlier["trials"], **{d: f["trials"] for d, f in fits.items()}}}, Path(args.out))


def main() -> None:
    if "--stages" in sys.argv:
        parser = argparse.ArgumentParser(description="Fit the generator to both candidate stages' real curves.")
        parser.add_argument("--stages", action="store_true")
        parser.add_argument("--index", default=None)
        parser.add_argument("--real-curves", default=None, help="an earlier --stages JSON: fit --dims to its real curves")
        parser.add_argument("--model", default=None, help="the index's model, if it has moved")
        parser.add_argument("--data", default="../shared/data/medquad")
        parser.add_argument("--split", default="test")
        parser.add_argument("--dims", default="1024")
        parser.add_argument("--queries", type=int, default=1000)
        parser.add_argument("--ranks", default="40,48,56")
        parser.add_argument("--sigmas", default="0.7,0.8")
        parser.add_argument("--betas", default="0.2,0.25,0.3")
        parser.add_argument("--noises", default="0.35,0.4,0.45", help="query noise (queries_near)")
        parser.add_argument("--name", default="calibration-stages")
        parser.add_argument("--out", default=str(RESULTS))
        main_stages(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index of real embeddings (e.g. MedQuAD encoded by the model)")
    parser.add_argument("--data", default="../shared/data/medquad")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dims", default="1024,384", help="generator dims to calibrate")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries per trial (the real curve uses every query of the split)")
    parser.add_argument("--workdir", default=None, help="where trial indexes are built (default: a temporary folder)")
    parser.add_argument("--name", default="calibration")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        real, n = real_curve_from_index(args.index, args.data, args.split, Path(tmp))
        print(f"real curve ({n} chunk vectors): " + ", ".join(f"x{o}: {r:.3f}" for o, r in zip(OVERSAMPLES, real)))
        for dim in map(int, args.dims.split(",")):
            fit = calibrate(real, n, dim, args.queries, Path(tmp))
            best = fit["best"]
            results[str(dim)] = fit
            print(f"dim {dim}: alpha {best['alpha']}, tilt {best['tilt']}, tilt spread {best['tilt_spread']}, max gap {best['max_gap']:.3f}")
    rows = [{"oversample": o, "candidates": 10 * o, "real": r, **{f"synthetic {d}": results[d]["best"]["curve"][i] for d in results}}
            for i, (o, r) in enumerate(zip(OVERSAMPLES, real))]
    print()
    print_table(rows, list(rows[0]))
    write_results(args.name, {"index": args.index, "real_size": n, "oversamples": list(OVERSAMPLES), "real_curve": real,
                              "fits": {d: r["best"] for d, r in results.items()}, "trials": {d: r["trials"] for d, r in results.items()}}, Path(args.out))


if __name__ == "__main__":
    main()
