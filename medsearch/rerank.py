"""The re-ranking stage: a sentence-transformers CrossEncoder re-scores a query's top N documents
(the query paired with each document's best chunk, title first), and the top k of its scores are
the answer. Any cross-encoder folder or model id works (`Searcher.open(..., reranker=...)`, the
CLI's and the service's `--reranker`).

One model, loaded once per process and spec; its calls take turns (a lock), so concurrent queries
never share the tokenizer mid-call.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from medsearch.errors import BadInputError, ModelLoadError

# Pairs scored per forward pass
BATCH_SIZE = 32
# The re-ranker reads the query and one chunk: 256 tokens hold a 250-word chunk (chunking.py) and a question
MAX_LENGTH = 256
RUNTIMES = {"torch": "torch", "openvino": "openvino", "onnx": "onnx"}  # medsearch runtime -> CrossEncoder backend


class Reranker:
    """A cross-encoder that scores (query, passage) pairs: higher is more relevant."""

    def __init__(self, spec: str, device: str | None = None, runtime: str = "torch"):
        if runtime not in RUNTIMES:
            raise BadInputError(f"the re-ranker runs on {', '.join(RUNTIMES)}; got '{runtime}'")
        from sentence_transformers import CrossEncoder

        from medsearch.encoder import quiet_libraries, select_device

        quiet_libraries()
        try:
            self.model = CrossEncoder(spec, device=select_device(device) if runtime == "torch" else "cpu",
                                      backend=RUNTIMES[runtime], max_length=MAX_LENGTH)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load the re-ranker '{spec}': {err}", remote=not Path(spec).exists()) from None
        self.spec = spec
        self.runtime = runtime
        self._turn = threading.Lock()

    def scores(self, query: str, passages: list[str]) -> np.ndarray:
        """The cross-encoder's score of each passage for the query."""
        if not passages:
            return np.empty(0, dtype=np.float32)
        with self._turn:
            out = self.model.predict([(query, p) for p in passages], batch_size=BATCH_SIZE, show_progress_bar=False,
                                     convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32).reshape(len(passages), -1)[:, -1]


_loaded: dict[tuple[str, str | None, str], Reranker] = {}
_loading = threading.Lock()


def load_reranker(spec: str, device: str | None = None, runtime: str = "torch") -> Reranker:
    """The process's re-ranker for `spec` (loaded on first use, then shared)."""
    with _loading:
        key = (spec, device, runtime)
        if key not in _loaded:
            _loaded[key] = Reranker(spec, device, runtime)
        return _loaded[key]


def rerank(reranker: Reranker, query: str, hits: list[tuple[int, float, dict[str, int]]], passages: list[str],
           n: int) -> tuple[list[tuple[int, float, dict[str, int]]], float]:
    """Ranked (chunk row, score, {list: rank}) hits, each with its passage, with the first `n` in
    the re-ranker's order (its score as theirs, their rank as found_by's `cross_encoder`), then the
    rest as they were; and the time taken in ms."""
    started = time.perf_counter()
    head = min(n, len(hits))
    scores = reranker.scores(query, passages[:head])
    order = sorted(range(head), key=lambda i: (-float(scores[i]), i))
    ranked = [(hits[i][0], float(scores[i]), {**hits[i][2], "cross_encoder": rank}) for rank, i in enumerate(order, 1)]
    return ranked + list(hits[head:]), (time.perf_counter() - started) * 1000
