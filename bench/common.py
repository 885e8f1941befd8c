"""Shared by the bench/ scripts: machine and version facts, a table printer, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import faiss
    import numpy
    import torch

    import medsearch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "medsearch": medsearch.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_results(name: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def single_query_latencies(searcher, queries: np.ndarray, **kwargs) -> list[float]:
    """Seconds of each query searched alone (`kwargs` go to Searcher.search_vectors), after a warm-up."""
    searcher.search_vectors(queries[:3], **kwargs)
    seconds = []
    for q in queries:
        started = time.perf_counter()
        searcher.search_vectors(q[None, :], **kwargs)
        seconds.append(time.perf_counter() - started)
    return seconds


def query_encode_p50_ms(encoder, texts: list[str]) -> float:
    """p50 of encoding one query at a time (after a warm-up), as a service meets them."""
    encoder.encode_queries(texts[:3])
    seconds = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode_queries([text])
        seconds.append(time.perf_counter() - started)
    return median_ms(seconds)


def p95_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] * 1000 if len(samples) > 1 else samples[0] * 1000


def recall_against(ranked: list[list[tuple]], truth: list[list[tuple]], k: int = 10) -> float:
    """Mean share of each reference top-k (lists of (id, score)) that the ranked list also has in its top k."""
    return float(np.mean([len({x for x, _ in r[:k]} & {x for x, _ in t[:k]}) / k for r, t in zip(ranked, truth)]))


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, process, limit: float = 300) -> None:
    """Return once the `medsearch serve` `process` on `port` answers /readyz with 200; SystemExit when
    it exits or `limit` seconds pass first."""
    import http.client
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = f": {process.stderr.read()}" if process.stderr is not None else ""  # (when the caller keeps it)
            raise SystemExit(f"serve exited with {process.returncode}{said}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("serve did not get ready")
