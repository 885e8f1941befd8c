"""Synthetic Matryoshka-like vectors, calibrated against real embeddings.

Documents: Gaussian vectors whose dim i has variance (i+1)^-alpha (leading dims carry most of
the variance, as in a Matryoshka model), L2-normalised. Queries: a random document plus Gaussian
noise of the same spectrum scaled by `noise`, normalised (a query has a true near neighbour).

How hard the funnel is depends on alpha and noise, so they are fitted: at the real corpus size,
the generator's curve of fast-tier recall@10 against `deep` over candidate counts must match the
curve measured on real embeddings (DESIGN.md: within 0.02 at each point).

    python bench/synthetic.py --index indexes/eval/<tuned model index> --data ../shared/data/medquad
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import RESULTS, print_table, recall_against, write_results
from medsearch.index import open_index, write_index
from medsearch.search import Searcher

OVERSAMPLES = (1, 2, 5, 10, 20, 40, 80)
ALPHAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
NOISES = (0.25, 0.5, 1.0, 1.5, 2.0)
SPREADS = (1.0, 2.0, 4.0)


def generate(n: int, dim: int, alpha: float, seed: int = 0, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** (-alpha / 2)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), dim), dtype=np.float32) * scale
        out[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def queries_for(docs: np.ndarray, n: int, alpha: float, noise: float, spread: float = 1.0, seed: int = 1) -> np.ndarray:
    """Noisy copies of random documents; each query's noise level is drawn log-uniformly from
    [noise / spread, noise * spread], so queries range from easy to hard as real ones do."""
    rng = np.random.default_rng(seed)
    dim = docs.shape[1]
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** (-alpha / 2)).astype(np.float32)
    picked = docs[rng.choice(len(docs), size=n, replace=False)]
    levels = noise * np.exp(rng.uniform(-np.log(spread), np.log(spread), size=(n, 1))).astype(np.float32)
    noisy = picked + levels * rng.standard_normal((n, dim), dtype=np.float32) * scale / np.sqrt(scale @ scale)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def recall_curve(searcher: Searcher, queries: np.ndarray, oversamples=OVERSAMPLES, k: int = 10) -> list[float]:
    """Fast-tier recall@k against deep, one value per oversampling factor (candidates = k x factor)."""
    deep, _ = searcher.search_vectors(queries, tier="deep", k=k)
    return [recall_against(searcher.search_vectors(queries, tier="fast", k=k, oversample=factor)[0], deep, k) for factor in oversamples]


def synthetic_searcher(vectors: np.ndarray, folder: Path, **kwargs) -> Searcher:
    """An index folder over synthetic vectors (one chunk per document, no docs.db), opened for search."""
    write_index(folder, vectors, np.arange(len(vectors)), {"model": {"spec": "synthetic", "name": "synthetic", "fingerprint": "synthetic"}, "documents": len(vectors)}, **kwargs)
    return Searcher(open_index(folder), None)


def calibrate(real_curve: list[float], n: int, dim: int, n_queries: int, workdir: Path, oversamples=OVERSAMPLES) -> dict:
    """Grid-search (alpha, noise) so the synthetic curve at size n matches the real one: a coarse
    grid, then a finer one around the best point."""
    trials = []

    def grid(alphas, noises, spreads):
        for alpha in alphas:
            docs = generate(n, dim, alpha)
            searcher = synthetic_searcher(docs, workdir / f"cal-{dim}-{alpha:.4f}", vector_dtype="float32")
            for noise in noises:
                for spread in spreads:
                    curve = recall_curve(searcher, queries_for(docs, n_queries, alpha, noise, spread), oversamples)
                    gap = float(np.max(np.abs(np.array(curve) - np.array(real_curve))))
                    trials.append({"alpha": round(alpha, 4), "noise": round(noise, 4), "spread": spread, "curve": curve, "max_gap": gap})
            shutil.rmtree(workdir / f"cal-{dim}-{alpha:.4f}", ignore_errors=True)

    grid(ALPHAS, NOISES, SPREADS)
    coarse = min(trials, key=lambda t: t["max_gap"])
    grid([a for a in coarse["alpha"] + np.array([-0.125, -0.0625, 0.0625, 0.125]) if a > 0],
         [m for m in coarse["noise"] + np.array([-0.25, -0.125, 0.0, 0.125, 0.25]) if m > 0],
         sorted({coarse["spread"], coarse["spread"] * 1.5, coarse["spread"] * 2, max(1.0, coarse["spread"] / 1.5)}))
    best = min(trials, key=lambda t: t["max_gap"])
    return {"best": best, "trials": trials}


def real_curve_from_index(index_dir: str, data: str, split: str, n_queries: int, oversamples=OVERSAMPLES) -> tuple[list[float], int]:
    from medsearch.encoder import Encoder
    from medsearch.evaluation import load_benchmark

    index = open_index(index_dir)
    searcher = Searcher(index, Encoder(index.manifest["model"]["spec"]))
    texts = list(load_benchmark(data, split).queries.values())[:n_queries]
    return recall_curve(searcher, searcher.encoder.encode_queries(texts), oversamples), index.chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index of real embeddings (e.g. MedQuAD encoded by the model)")
    parser.add_argument("--data", default="../shared/data/medquad")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dims", default="1024,384", help="generator dims to calibrate")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workdir", default=None, help="where trial indexes are built (default: a temporary folder)")
    parser.add_argument("--name", default="calibration")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    real, n = real_curve_from_index(args.index, args.data, args.split, args.queries)
    print(f"real curve ({n} chunks): " + ", ".join(f"x{o}: {r:.3f}" for o, r in zip(OVERSAMPLES, real)))
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for dim in map(int, args.dims.split(",")):
            fit = calibrate(real, n, dim, args.queries, Path(tmp))
            best = fit["best"]
            results[str(dim)] = fit
            print(f"dim {dim}: alpha {best['alpha']}, noise {best['noise']}, max gap {best['max_gap']:.3f}")
    rows = [{"oversample": o, "candidates": 10 * o, "real": r, **{f"synthetic {d}": results[d]["best"]["curve"][i] for d in results}}
            for i, (o, r) in enumerate(zip(OVERSAMPLES, real))]
    print()
    print_table(rows, list(rows[0]))
    write_results(args.name, {"index": args.index, "real_size": n, "oversamples": list(OVERSAMPLES), "real_curve": real,
                              "fits": {d: r["best"] for d, r in results.items()}, "trials": {d: r["trials"] for d, r in results.items()}}, Path(args.out))


if __name__ == "__main__":
    main()
