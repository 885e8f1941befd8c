"""The `torch` runtime: the model's own sentence-transformers folder, run by sentence-transformers on
torch (fp32; cuda or mps where there is one). Every model runs on it, and a model passed to the
Encoder already loaded is run by its runner."""

from __future__ import annotations

import numpy as np

from medsearch.encoding.loading import load_sentence_transformer
from medsearch.encoding.runtimes.base import Runtime


class SentenceTransformerRunner:
    """A loaded SentenceTransformer behind the Runner interface (base.py)."""

    weights = None

    def __init__(self, model, batch_size: int = 64):
        self.model, self.batch_size = model, batch_size

    @property
    def prompts(self) -> dict[str, str] | None:
        return getattr(self.model, "prompts", None)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        limits = [self.model.max_seq_length, getattr(self.model.tokenizer, "model_max_length", None)]
        return int(min(x for x in limits if x))

    @property
    def tokenizer(self):
        return getattr(self.model.tokenizer, "backend_tokenizer", None)

    def encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        vectors = self.model.encode(texts, prompt=prefix or None, batch_size=self.batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class TorchRuntime(Runtime):
    name = "torch"
    precision = "fp32"
    packages = ("torch",)
    needs_torch = True
    rank = 2  # last within noise: the same vectors as OpenVINO fp32, and torch in the query process
    reranker = "torch"

    def load(self, spec: str, *, device: str | None = None, batch_size: int = 64, streams: int | None = None,
             threads: int | None = None) -> SentenceTransformerRunner:
        model = load_sentence_transformer(spec, device)
        if threads:  # torch's intra-op threads, process-wide
            import torch

            torch.set_num_threads(threads)
        return SentenceTransformerRunner(model, batch_size)


TORCH = TorchRuntime()
