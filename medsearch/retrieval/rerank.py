"""The re-ranking stage: a sentence-transformers CrossEncoder re-scores a query's top N documents
(the query paired with each document's best chunk, title first), and the top k of its scores are
the answer. Any cross-encoder folder or model id works: an index records one (`medsearch index
--reranker`, the manifest's `reranker`: the model and how many documents a query re-ranks by
default), or a searcher is given one (`Searcher.open(..., reranker=...)`, the CLI's and the
service's `--reranker`). It runs on the encoder's runtime family (torch, or OpenVINO for both
OpenVINO runtimes where the `openvino` extra brings sentence-transformers' OpenVINO backend: int8
cross-encoders are not made here).

One model, loaded once per process and spec. Concurrent queries share its forward passes: a
query's pairs join a queue, a pass's worth (BATCH_SIZE) at a time, and whichever caller takes the
model next scores everything queued (up to MAX_PAIRS pairs) in one call, so under load the batches
grow by themselves, as the encoder's micro-batcher does (server/batching.py) but on the callers'
own threads, and a query of many pairs takes turns with the others instead of holding the model.
A pass that fails is run again per query, so one query's failure is never another's.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.encoding.runtimes.registry import REGISTRY
from medsearch.errors import (
    BadInputError,
    MedsearchError,
    RerankerLoadError,
    RerankerUnavailableError,
)
from medsearch.index.manifest import (
    MAX_DEFAULT_RERANK,  # the most a query re-ranks by default: the API's bound on rerank
)


class RerankStopped(Exception):
    """A query's re-ranking stopped between forward passes: its client has gone or its deadline passed."""

    def __init__(self):
        super().__init__("the request's re-ranking was stopped (its client left, or its time ran out)")


# How far below the last re-ranked hit's score the first hit past the re-ranked ones is put
TAIL_GAP = 1e-3
# Pairs scored per forward pass (a query's `stop` is asked between passes), and at most per shared
# call (queries queued together)
BATCH_SIZE = 32
MAX_PAIRS = 256
# The re-ranker reads the query and one chunk: 256 tokens hold a 250-word chunk (chunking.py) and a question
MAX_LENGTH = 256
# The re-ranker's runtimes -> CrossEncoder backend: each encoder runtime's `reranker` (the registry's
# fact: torch for torch, openvino for both OpenVINO runtimes), and onnx, the re-ranker's alone
RUNTIMES = {**{r.reranker: r.reranker for r in REGISTRY.values()}, "onnx": "onnx"}
# A re-ranker's record, written by reranker_training.py: its recipe, dev figures and default N
RECORD = "medsearch_reranker.json"
# A re-ranker that failed to load is not tried again for this long (each query would retry it)
RETRY_LOAD_S = 30.0


class Reranker:
    """A cross-encoder that scores (query, passage) pairs: higher is more relevant."""

    def __init__(self, spec: str, device: str | None = None, runtime: str = "torch"):
        if runtime not in RUNTIMES:
            raise BadInputError(f"the re-ranker runs on {', '.join(RUNTIMES)}; got '{runtime}'")
        from sentence_transformers import CrossEncoder

        from medsearch.encoding.loading import quiet_libraries, select_device

        quiet_libraries()
        local = Path(spec).expanduser().is_dir()
        if local:
            check_cross_encoder_folder(Path(spec).expanduser())
        try:
            source = _openvino_export(spec) if runtime == "openvino" and local else spec
            self.model = CrossEncoder(source, device=select_device(device) if runtime == "torch" else "cpu",
                                      backend=RUNTIMES[runtime], max_length=MAX_LENGTH)
        except (OSError, ValueError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RerankerLoadError(f"cannot load the re-ranker '{spec}': {message}", remote=not local) from None
        architectures = getattr(getattr(self.model.model, "config", None), "architectures", None) or []
        if not local and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise RerankerLoadError(f"'{spec}' is not a cross-encoder (a {', '.join(architectures) or 'model'} without a "
                                    "scoring head)", remote=True)
        self.spec = spec
        self.runtime = runtime
        self._turn = threading.Lock()  # one call of the model at a time
        self._queued: list[_Pairs] = []
        self._queue = threading.Lock()  # guards _queued (held briefly)
        self.calls = 0  # model calls made (each may serve several queries)
        self.seconds_per_pair: float | None = None  # measured, once the model has been called

    def scores(self, query: str, passages: list[str], stop: Callable[[], bool] | None = None) -> np.ndarray:
        """The cross-encoder's score of each passage for the query. The passages take turns with
        other threads' queries BATCH_SIZE at a time (each turn's call scores everything queued by
        then, up to MAX_PAIRS pairs), so a query of many pairs never holds the model for all of them
        while others wait. `stop`: asked before each turn and each forward pass; once it answers
        True, this query's remaining pairs are dropped and RerankStopped is raised (its client has
        gone, or its deadline has passed)."""
        out = np.empty(len(passages), dtype=np.float32)
        for start in range(0, len(passages), BATCH_SIZE):  # one pass's worth a turn: others get theirs between
            if stop is not None and stop():
                raise RerankStopped()
            out[start:start + BATCH_SIZE] = self._turn_scores(query, passages[start:start + BATCH_SIZE], stop)
        return out

    def _turn_scores(self, query: str, passages: list[str], stop: Callable[[], bool] | None) -> np.ndarray:
        """The scores of at most BATCH_SIZE passages, in the next call of the model (shared with the
        other callers queued by then, up to MAX_PAIRS pairs)."""
        mine = _Pairs([(query, p) for p in passages], stop)
        with self._queue:
            self._queued.append(mine)
        with self._turn:
            with self._queue:  # still queued: not scored by another caller's call; this call takes it first
                batch, size = ([mine], len(mine.pairs)) if mine in self._queued else ([], 0)
                if batch:
                    self._queued.remove(mine)
                    while self._queued and size + len(self._queued[0].pairs) <= MAX_PAIRS:
                        batch.append(self._queued.pop(0))
                        size += len(batch[-1].pairs)
            if batch:
                self._score(batch)
        if mine.error is not None:
            raise mine.error
        return mine.scores

    def _score(self, batch: list["_Pairs"]) -> None:
        """Score the queued queries' pairs in forward passes of BATCH_SIZE, asking each query's `stop`
        before every pass that holds its pairs. A pass that fails is run again query by query: only
        the query that fails gets its error."""
        for item in batch:
            item.scores = np.empty(len(item.pairs), dtype=np.float32)
        flat = [(item, i) for item in batch for i in range(len(item.pairs))]
        for start in range(0, len(flat), BATCH_SIZE):
            part = [(item, i) for item, i in flat[start:start + BATCH_SIZE] if item.error is None]
            for item in {id(item): item for item, _ in part}.values():
                if item.stop is not None and item.stop():
                    item.error = RerankStopped()
            part = [(item, i) for item, i in part if item.error is None]
            if not part:
                continue
            try:
                out = self._predict([item.pairs[i] for item, i in part])
            except Exception:
                error = sys.exc_info()[1]
                owners = {id(item): item for item, _ in part}
                if len(owners) == 1:
                    next(iter(owners.values())).error = error
                    continue
                for item in owners.values():  # once more one by one
                    rows = [i for owner, i in part if owner is item]
                    try:
                        item.scores[rows] = self._predict([item.pairs[i] for i in rows])
                    except Exception:
                        item.error = sys.exc_info()[1]
                continue
            for (item, i), score in zip(part, out):
                item.scores[i] = score

    def _predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        self.calls += 1
        started = time.perf_counter()
        out = self.model.predict(pairs, batch_size=BATCH_SIZE, show_progress_bar=False, convert_to_numpy=True)
        per_pair = (time.perf_counter() - started) / len(pairs)
        # what a pair costs on this machine now (a moving average): the service admits re-ranking by it
        self.seconds_per_pair = per_pair if self.seconds_per_pair is None else 0.8 * self.seconds_per_pair + 0.2 * per_pair
        return np.asarray(out, dtype=np.float32).reshape(len(pairs), -1)[:, -1]


@dataclass
class _Pairs:
    """One query's (query, passage) pairs waiting for the model, then their scores or the error."""

    pairs: list[tuple[str, str]]
    stop: Callable[[], bool] | None = None
    scores: np.ndarray | None = None
    error: BaseException | None = None


def check_cross_encoder_folder(folder: Path) -> None:
    """RerankerLoadError unless `folder` holds a cross-encoder: a sequence-classification head in its
    config.json, or sentence-transformers' CrossEncoder config (a bi-encoder's folder would load
    with a random, unsaved head: its scores would change with every load)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        st_config = folder / "config_sentence_transformers.json"
        st_type = json.loads(st_config.read_text()).get("model_type") if st_config.is_file() else None
    except (OSError, ValueError, AttributeError):
        raise RerankerLoadError(f"{folder} is not a model folder (no readable config.json)", remote=False) from None
    architectures = config.get("architectures") or [] if isinstance(config, dict) else []
    if st_type != "CrossEncoder" and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise RerankerLoadError(f"{folder} is not a cross-encoder (a {', '.join(map(str, architectures)) or 'model'} "
                                "without a scoring head): give one trained as a cross-encoder, e.g. by medsearch "
                                "train-reranker", remote=False)


def _openvino_export(folder: str) -> str:
    """A cross-encoder folder's OpenVINO export, made once per weights and settings (config, tokenizer,
    activation) and kept in the encoder's export cache (runtimes/openvino.py): a load then takes a
    fraction of a second, not an export."""
    import hashlib

    from sentence_transformers import CrossEncoder

    from medsearch.encoding.loading import weights_fingerprint
    from medsearch.encoding.runtimes.openvino import exported_model

    def make(source: Path, out: Path) -> None:
        CrossEncoder(str(source), device="cpu", backend="openvino", max_length=MAX_LENGTH).save(str(out))

    settings = hashlib.sha256()
    for path in sorted(Path(folder).glob("*")):  # everything beside the weights that shapes the scores
        if path.is_file() and path.suffix in (".json", ".txt", ".model") and not path.name.startswith("medsearch_"):
            settings.update(path.name.encode() + path.read_bytes())
    return str(exported_model(Path(folder), weights_fingerprint(folder), "openvino", make=make,
                              kind=f"cross-encoder-{settings.hexdigest()[:8]}-"))


def runtime_for(encoder_runtime: str | None) -> str:
    """The cross-encoder's runtime for an encoder's: its registry entry's `reranker` where that one is
    installed (OpenVINO for openvino and openvino-int8 where the `openvino` extra brings
    sentence-transformers' OpenVINO backend, optimum-intel), else torch."""
    runtime = REGISTRY.get(encoder_runtime or "")
    return runtime.reranker if runtime is not None and runtime.reranker_installed() else "torch"


def reranker_entry(spec: str, rerank: int | None = None) -> dict:
    """The manifest's `reranker` entry for a cross-encoder folder or model id: a folder is recorded
    by its absolute path; `rerank` (the default N) is the number given, else the one a re-ranker
    trained here chose on its dev data (reranker_training.py: 0 when it did not beat hybrid), else
    DEFAULT_RERANK."""
    from medsearch.retrieval.options import DEFAULT_RERANK

    if rerank is not None and rerank < 0:
        raise BadInputError(f"rerank must be 0 (off) or more; got {rerank}")
    if rerank is not None and rerank > MAX_DEFAULT_RERANK:
        raise BadInputError(f"rerank by default must be at most {MAX_DEFAULT_RERANK}; got {rerank}")
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        check_cross_encoder_folder(path)
        spec = str(path.resolve())
        if rerank is None:
            rerank = reranker_record(path).get("default_rerank")
    else:  # a model id: it must load now (offline, from the cache), not fail every query later
        Reranker(spec, "cpu")
    return {"model": spec, "rerank": DEFAULT_RERANK if rerank is None else int(rerank)}


def reranker_record(spec: str | Path) -> dict:
    """A re-ranker folder's record (RECORD), or {} for one trained elsewhere (a public model);
    BadInputError for one that is not a record this version wrote."""
    path = Path(spec) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadInputError(f"{path}: unreadable ({type(err).__name__}): train the re-ranker again, or remove "
                            "the file to re-rank 20 by default") from None
    default = record.get("default_rerank") if isinstance(record, dict) else None
    if type(default) is not int or not 0 <= default <= MAX_DEFAULT_RERANK:
        raise BadInputError(f"{path}: default_rerank must be a whole number from 0 to {MAX_DEFAULT_RERANK}; got {default!r}")
    return record


_loaded: dict[tuple[str, str | None, str], Reranker] = {}
_failed: dict[tuple[str, str | None, str], tuple[float, MedsearchError]] = {}
_loading = threading.Lock()


def load_reranker(spec: str, device: str | None = None, runtime: str = "torch", load: bool = True) -> Reranker | None:
    """The process's re-ranker for `spec` (loaded on first use, then shared; one that failed is not
    tried again for RETRY_LOAD_S: its error is raised again at once). `load=False`: the one loaded
    already, else None (without waiting for a load in progress)."""
    key = (spec, device, runtime)
    if not load:
        return _loaded.get(key)
    with _loading:
        if key not in _loaded:
            failed = _failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < RETRY_LOAD_S:
                raise failed[1]
            try:
                _loaded[key] = Reranker(spec, device, runtime)
            except MedsearchError as err:
                _failed[key] = (time.monotonic(), err)
                raise
            _failed.pop(key, None)
        return _loaded[key]


def load_index_reranker(entry: dict, device: str | None, runtime: str, load: bool = True) -> Reranker | None:
    """The re-ranker an index records (its manifest's `reranker`); RerankerUnavailableError when it
    cannot be loaded now (its folder moved, say): the index's queries that re-rank fail, not the rest.
    `load=False`: as load_reranker's."""
    try:
        return load_reranker(entry["model"], device, runtime, load)
    except MedsearchError as err:
        raise RerankerUnavailableError(f"the index's re-ranker cannot be loaded ({err})") from None


def rerank(reranker: Reranker, query: str, hits: list[tuple[int, float, dict[str, int]]], passages: list[str],
           n: int, stop: Callable[[], bool] | None = None) -> tuple[list[tuple[int, float, dict[str, int]]], float]:
    """Ranked (chunk row, score, {list: rank}) hits, each with its passage, with the first `n` in
    the re-ranker's order (its score as theirs, their rank as found_by's `cross_encoder`), then the
    rest in their order, their first-stage scores shifted by one constant to sit below the last
    re-ranked one (as Vespa does for hits outside its rerank-count): the list is in the order of its
    scores; and the time taken in ms. `stop`: as in Reranker.scores."""
    started = time.perf_counter()
    head = min(n, len(hits))
    scores = reranker.scores(query, passages[:head], stop)
    order = sorted(range(head), key=lambda i: (-float(scores[i]), i))
    ranked = [(hits[i][0], float(scores[i]), {**hits[i][2], "cross_encoder": rank}) for rank, i in enumerate(order, 1)]
    rest = list(hits[head:])
    if ranked and rest:
        shift = rest[0][1] - ranked[-1][1] + TAIL_GAP
        rest = [(row, score - shift, found_by) for row, score, found_by in rest]
    return ranked + rest, (time.perf_counter() - started) * 1000
