"""A sentence-transformers OpenVINO export run without torch, transformers or sentence-transformers:
the compiled model from `openvino`, the folder's tokenizer.json through Hugging Face `tokenizers`,
and the pooling and normalisation its modules.json names, in numpy.

openvino_export.py makes the export from the loaded sentence-transformers model and, beside it,
writes what sentence-transformers decided about the model (SPEC_FILE: dimension, token window,
prompts, pooling), so this runner never guesses a setting that sentence-transformers would have
chosen differently. Hand-written on purpose: sentence-transformers' own OpenVINO backend runs
through optimum and transformers, whose import is what a cold query was paying (issue 22); the
vectors are the same (tests/test_openvino_model.py).

Thread-safe: each concurrent call takes its own OpenVINO infer request from a pool, so the service's
encode workers run at once on the compiled model's streams.
"""

from __future__ import annotations

import json
import os
import queue
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from medsearch.encoding.cache import CACHE_DIR, cache_lock

SPEC_FILE = "medsearch_encoder.json"
SPEC_VERSION = 1
# Modules this runner reproduces; a model with any other (Dense, a custom module) runs through
# sentence-transformers' backend instead.
TRANSFORMER = "Transformer"
POOLING = "Pooling"
NORMALIZE = "Normalize"
POOLING_MODES = ("mean", "cls", "max")


class UnsupportedExport(Exception):
    """The model has a module or setting this runner does not reproduce (its OpenVINO runtimes are unavailable)."""


def describe(model, runtime_file: str) -> dict:
    """What a loaded sentence-transformers model decided, for SPEC_FILE: written once, when the export
    is made, so that the lean runner reproduces it (raises UnsupportedExport for other module stacks)."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in ([TRANSFORMER, POOLING], [TRANSFORMER, POOLING, NORMALIZE]):
        raise UnsupportedExport(f"modules {kinds}")
    pooling = model[1]
    modes = pooling.pooling_mode if isinstance(pooling.pooling_mode, (list, tuple)) else [pooling.pooling_mode]
    if any(mode not in POOLING_MODES for mode in modes) or not pooling.include_prompt:
        raise UnsupportedExport(f"pooling {modes}, include_prompt={pooling.include_prompt}")
    tokenizer = model.tokenizer
    if getattr(model[0], "do_lower_case", False) or tokenizer.padding_side != "right":
        raise UnsupportedExport("lower-casing or left padding")
    return {
        "version": SPEC_VERSION,
        "file": runtime_file,
        "dim": int(model.get_embedding_dimension()),
        "max_seq_length": int(model.max_seq_length),
        "model_max_length": int(getattr(tokenizer, "model_max_length", 0) or 0) or None,
        "prompts": dict(getattr(model, "prompts", None) or {}),
        "pooling": list(modes),
        "normalize": kinds[-1] == NORMALIZE,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
    }


def write_spec(export: Path, spec: dict) -> None:
    """SPEC_FILE in the export folder being made, atomically (a temporary file renamed)."""
    tmp = export / f".{SPEC_FILE}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, export / SPEC_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)


SPEC_TYPES = {"file": str, "dim": int, "max_seq_length": int, "prompts": dict, "pooling": list, "normalize": bool,
              "pad_id": int, "pad_token": str}


def read_spec(export: Path) -> dict | None:
    """The export's SPEC_FILE, or None when it has none (made before this runner) or one that is not
    a spec this runner can follow (then it is made again)."""
    try:
        spec = json.loads((export / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        return None
    well_formed = (
        all(isinstance(spec.get(key), kind) and not (kind is int and isinstance(spec[key], bool)) for key, kind in SPEC_TYPES.items())
        and spec["dim"] > 0 and spec["max_seq_length"] > 0 and 0 <= spec["pad_id"] < 2**31
        and isinstance(spec.get("model_max_length"), (int, type(None))) and (spec.get("model_max_length") or 1) > 0
        and spec["pooling"] and all(mode in POOLING_MODES for mode in spec["pooling"])
        and all(isinstance(k, str) and isinstance(v, str) for k, v in spec["prompts"].items())
    )
    return spec if well_formed else None


class OpenVINOModel:
    """Encodes texts with an export folder's compiled model: tokenize, infer, pool, normalise."""

    weights: str | None = None  # the weights fingerprint its export was found by (set by the runtime that loads it)

    def __init__(self, export: Path, spec: dict, batch_size: int = 64, streams: int | None = None,
                 threads: int | None = None):
        import openvino as ov
        from tokenizers import Tokenizer

        self.export, self.spec, self.batch_size = Path(export), spec, batch_size
        self.prompts = spec["prompts"]
        self.max_seq_length = spec["max_seq_length"]
        self.model_max_length = spec.get("model_max_length")
        self.dim = spec["dim"]
        tokenizer = Tokenizer.from_file(str(self.export / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding(pad_id=spec["pad_id"], pad_token=spec["pad_token"])
        self.tokenizer = tokenizer
        # One stream answers a lone caller fastest (all cores on one pass); a service asks for one
        # stream per encode worker, each on its share of the cores. The compiled model is cached in
        # the export (OpenVINO's CACHE_DIR): a cold start reads it instead of compiling (0.37 -> 0.08 s).
        config = {"PERFORMANCE_HINT": "THROUGHPUT" if (streams or 1) > 1 else "LATENCY"}
        if streams:
            config["NUM_STREAMS"] = str(streams)
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads * (streams or 1))
        cache = self.export / "openvino" / CACHE_DIR
        if os.access(self.export / "openvino", os.W_OK):
            config["CACHE_DIR"] = str(cache)
        # held while OpenVINO reads or writes the cache: two processes compiling at once would read
        # each other's half-written blob (measured: a failed load)
        with cache_lock(cache / ".lock") if "CACHE_DIR" in config else nullcontext():
            self.compiled = ov.Core().compile_model(str(self.export / spec["file"]), "CPU", config)
        self.inputs = {i.get_any_name() for i in self.compiled.inputs}
        width = self.compiled.outputs[0].get_partial_shape()[-1]
        if width.is_static and width.get_length() * len(spec["pooling"]) != self.dim:
            raise ValueError(f"{SPEC_FILE} says {self.dim} dims; the model gives {width.get_length()} per pooling mode")
        self.parallel = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.Queue = queue.Queue()
        for _ in range(self.parallel):
            self._requests.put(self.compiled.create_infer_request())

    @property
    def model(self) -> "OpenVINOModel":
        """What the runtime loaded (runtimes/base.py's Runner): this runner itself."""
        return self

    @property
    def max_tokens(self) -> int:
        return min(x for x in (self.max_seq_length, self.model_max_length) if x)

    @contextmanager
    def _request(self):
        request = self._requests.get()
        try:
            yield request
        finally:
            self._requests.put(request)

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        with self._request() as request:
            tokens = request.infer(feed)[0]  # last_hidden_state [batch, tokens, dim]
        tokens = np.asarray(tokens, dtype=np.float32)
        pooled = []
        weights = mask[:, :, None].astype(np.float32)
        for mode in self.spec["pooling"]:
            if mode == "mean":
                pooled.append((tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None))
            elif mode == "cls":
                pooled.append(tokens[:, 0])
            else:  # max
                pooled.append(np.where(weights > 0, tokens, -np.inf).max(axis=1))
        out = np.concatenate(pooled, axis=1) if len(pooled) > 1 else pooled[0]
        # Normalised whether or not the model ends in Normalize: medsearch searches by inner product of
        # unit vectors (sentence-transformers' normalize_embeddings=True)
        return out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)

    def encode(self, texts: list[str], prompt: str = "", progress: bool = False) -> np.ndarray:
        """L2-normalised vectors of `texts` (with `prompt` in front), in order; a progress bar of
        batches on stderr when asked."""
        texts = [prompt + text for text in texts]
        # sorted by length, as sentence-transformers does, so that a batch pads little
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            rows = order[start:start + self.batch_size]
            out[rows] = self._forward([texts[i] for i in rows])
        return out
