"""The re-ranking stage: a sentence-transformers CrossEncoder re-scores a query's top N documents
(the query paired with each document's best chunk, title first), and the top k of its scores are
the answer. Any cross-encoder folder or model id works: an index records one (`medsearch index
--reranker`, the manifest's `reranker`: the model and how many documents a query re-ranks by
default), or a searcher is given one (`Searcher.open(..., reranker=...)`, the CLI's and the
service's `--reranker`). It runs on the encoder's runtime family (torch, or OpenVINO for both
OpenVINO runtimes: int8 cross-encoders are not made here).

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
            source = _openvino_export(spec) if runtime == "openvino" and Path(spec, "config.json").is_file() else spec
            self.model = CrossEncoder(source, device=select_device(device) if runtime == "torch" else "cpu",
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


def _openvino_export(folder: str) -> str:
    """A cross-encoder folder's OpenVINO export, made once per weights and kept in the encoder's
    export cache (encoder.exported_model): a load then takes a fraction of a second, not an export."""
    from sentence_transformers import CrossEncoder

    from medsearch.encoder import exported_model, weights_fingerprint

    def make(source: Path, out: Path) -> None:
        CrossEncoder(str(source), device="cpu", backend="openvino", max_length=MAX_LENGTH).save(str(out))

    return str(exported_model(Path(folder), weights_fingerprint(folder), "openvino", make=make, kind="cross-encoder-"))


def runtime_for(encoder_runtime: str | None) -> str:
    """The cross-encoder's runtime for an encoder's: OpenVINO for openvino and openvino-int8, else torch."""
    return "openvino" if (encoder_runtime or "").startswith("openvino") else "torch"


def reranker_entry(spec: str, rerank: int | None = None) -> dict:
    """The manifest's `reranker` entry for a cross-encoder folder or model id: a folder is recorded
    by its absolute path; `rerank` (the default N) is the number given, else the one a re-ranker
    trained here chose on its dev data (reranker_training.py: 0 when it did not beat hybrid), else
    DEFAULT_RERANK."""
    from medsearch.options import DEFAULT_RERANK
    from medsearch.reranker_training import reranker_record

    if rerank is not None and rerank < 0:
        raise BadInputError(f"rerank must be 0 (off) or more; got {rerank}")
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise BadInputError(f"{spec} is not a model folder (no config.json): give a cross-encoder folder, "
                                "e.g. one written by medsearch train-reranker")
        spec = str(path.resolve())
        if rerank is None:
            rerank = reranker_record(path).get("default_rerank")
    return {"model": spec, "rerank": DEFAULT_RERANK if rerank is None else int(rerank)}


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
