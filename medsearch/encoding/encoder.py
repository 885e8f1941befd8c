"""The embedding model: prefixes per model, the runtime that computes it (runtimes/: chosen by name,
or `auto`), L2-normalised full-dimension encoding and a fingerprint that ties an index to its model.
Finding and loading a model folder is loading.py's; each runtime's loading (and export) is its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from medsearch.encoding.loading import (
    model_folder,
    resolve_model,
    weights_fingerprint,
)
from medsearch.encoding.models import DEFAULT_MODEL, display_name
from medsearch.encoding.runtimes.auto import auto_runtime
from medsearch.encoding.runtimes.base import CALIBRATION_TEXTS
from medsearch.encoding.runtimes.registry import (
    AUTO_RUNTIME,
    DEFAULT_RUNTIME,
    PRECISIONS,
    REGISTRY,
    get_runtime,
)
from medsearch.encoding.runtimes.torch import SentenceTransformerRunner
from medsearch.errors import MedsearchError, ModelLoadError

# A model folder's search defaults, as its tuning chose them on dev data (tune.py): {"fusion": {...}}
SEARCH_DEFAULTS_FILE = "medsearch_search.json"


DEFAULT_MODEL_NAME = display_name(DEFAULT_MODEL)


@dataclass(frozen=True)
class ModelProfile:
    """Text a model wants in front of queries and passages (e5: `query: ` / `passage: `)."""

    query_prefix: str = ""
    passage_prefix: str = ""


# Matched against the lower-cased model name or path; first match wins.
PROFILES: dict[str, ModelProfile] = {
    "e5": ModelProfile("query: ", "passage: "),
    "bge-": ModelProfile("Represent this sentence for searching relevant passages: ", ""),
}


def resolve_runtime(runtime: str | None = AUTO_RUNTIME, spec: str = DEFAULT_MODEL) -> str:
    """A runtime name, or `auto` (None) for the fastest on this CPU (runtimes/auto.py: measured on
    `spec`'s model the first time on a CPU, then remembered); a missing extra is named."""
    runtime = runtime or AUTO_RUNTIME
    if runtime == AUTO_RUNTIME:
        return auto_runtime(spec, lambda name: Encoder(spec, device="cpu", runtime=name),
                            lambda: [json.loads(line)["text"] for line in CALIBRATION_TEXTS.read_text(encoding="utf-8").splitlines()])
    return get_runtime(runtime).name


def profile_for(spec: str, model_prompts: dict[str, str] | None = None) -> ModelProfile:
    """Non-empty prompts saved with the model win; otherwise match the name against PROFILES."""
    prompts = model_prompts or {}
    if prompts.get("query"):
        return ModelProfile(prompts["query"], prompts.get("passage", prompts.get("document", "")))
    name = spec.lower()
    for pattern, profile in PROFILES.items():
        if pattern in name:
            return profile
    return ModelProfile()


class Encoder:
    """Encodes queries and passages once, at the model's full dimension, L2-normalised, with one
    runtime (`auto`: the fastest installed). `model` passes an already loaded torch model.

    The runtime loads the model (runtimes/: the OpenVINO ones run its export with the lean runner, no
    torch, transformers or sentence-transformers in the process). `streams` asks OpenVINO for that
    many parallel inference streams (a service's encode workers; None: one latency-bound stream),
    `threads` for that many threads per pass (torch's intra-op threads, process-wide; an OpenVINO
    stream's threads)."""

    def __init__(self, spec: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 64, model=None,
                 runtime: str | None = "torch", streams: int | None = None, threads: int | None = None):
        self.spec = spec
        self.runtime = DEFAULT_RUNTIME if model is not None else resolve_runtime(runtime, spec)
        self._passed = model is not None
        chosen = REGISTRY[self.runtime]
        if model is not None:
            self.runner = SentenceTransformerRunner(model, batch_size)
        else:
            self.runner = chosen.load(spec, device=device, batch_size=batch_size, streams=streams, threads=threads)
        if self.runner.weights is not None:  # the runtime found its export by them: this encoder keeps them
            self.weights = self.runner.weights
        self.model = self.runner.model
        self.lean = not self._passed and not chosen.needs_torch  # no torch in the process
        self.profile = profile_for(spec if spec != DEFAULT_MODEL else "", self.runner.prompts)
        self.batch_size = batch_size
        # Concurrent callers (the service's encode workers) encode at once: the lean runner keeps one
        # inference request per stream, and torch forward passes may run together. They share the
        # tokenizer, which is safe while every call uses the same settings (its Rust core then only
        # takes shared borrows): chunking, which tokenizes with other settings, has a tokenizer of its own (`chunk`).
        self._chunking = threading.Lock()

    @cached_property
    def search_defaults(self) -> dict:
        """How this model's indexes search when a query names no setting, as its tuning chose them
        on dev data (the folder's SEARCH_DEFAULTS_FILE: {"fusion": {...}}); {} for any other model."""
        import json

        path = Path(resolve_model(self.spec), SEARCH_DEFAULTS_FILE)
        try:
            chosen = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise ModelLoadError(f"{path}: unreadable search defaults", remote=False) from None
        if not isinstance(chosen, dict) or "fusion" not in chosen:
            return {}
        from medsearch.retrieval.fusion import Fusion

        try:
            Fusion(**chosen["fusion"]).check()
        except (TypeError, MedsearchError) as err:
            raise ModelLoadError(f"{path}: not a fusion setting ({err})", remote=False) from None
        return {"fusion": chosen["fusion"]}

    @property
    def precision(self) -> str:
        return PRECISIONS[self.runtime]

    @property
    def name(self) -> str:
        return display_name(self.spec)

    @property
    def dim(self) -> int:
        return self.runner.dim

    @property
    def max_tokens(self) -> int:
        """Tokens the encoder reads, special tokens included."""
        return self.runner.max_tokens

    @cached_property
    def weights(self) -> str | None:
        """Fingerprint of the model folder's weight files (None for a model passed without a folder)."""
        if self._passed and not Path(resolve_model(self.spec)).is_dir():
            return None
        return weights_fingerprint(model_folder(self.spec))

    @cached_property
    def fingerprint(self) -> str:
        """What ties an index to its encoder: the weights and the precision they are computed in
        (runtimes of one precision share it: their vectors agree to float tolerance)."""
        base = self.weights or self.parameters_fingerprint
        return hashlib.sha256(f"{base}:{self.precision}:{self.dim}:{self.max_tokens}".encode()).hexdigest()[:16]

    @cached_property
    def parameters_fingerprint(self) -> str:
        """Hash of every torch parameter's name, shape and first values (as float16: same on any
        device): the fingerprint of indexes built before runtimes, and of a model without a folder."""
        import torch

        digest = hashlib.sha256(f"{self.dim}:{self.max_tokens}".encode())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                head = param.detach().flatten()[:16].to(torch.float16).cpu().numpy()
                digest.update(f"{name}{tuple(param.shape)}".encode())
                digest.update(head.tobytes())
        return digest.hexdigest()[:16]

    @cached_property
    def _chunk_tokenizer(self):
        """The model's Rust tokenizer (`tokenizers.Tokenizer`) without truncation or padding, a copy
        of its own: changing a tokenizer's settings while another thread encodes with it fails
        ('Already borrowed')."""
        backend = self.runner.tokenizer
        if backend is None:
            raise MedsearchError("chunking needs a fast (Rust) tokenizer: the model folder needs a tokenizer.json")
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(backend.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    def chunk(self, documents: list, overlap: int | None = None) -> list:
        """Token-bounded chunks of `documents` for this encoder's window (chunking.py); safe to call
        while other threads encode queries."""
        from medsearch.encoding.chunking import chunk_documents

        with self._chunking:
            return chunk_documents(documents, self._chunk_tokenizer, self.max_tokens, self.profile.passage_prefix, overlap)

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.runner.encode(texts, prefix, progress)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.query_prefix, progress)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.passage_prefix, progress)
