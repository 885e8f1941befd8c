"""The seam between the encoder and what computes its vectors: one `Runtime` per way of running a
model (torch, OpenVINO fp32, OpenVINO int8), chosen by name from the registry (registry.py), as an
index's backend is chosen from backends/.

A runtime says:

  name, precision   its name (--runtime, the manifest) and what it computes in: runtimes of one
                    precision give the same vectors to float tolerance, so they share an index
  packages, extra   what it needs installed (import names, looked up without importing them) and
                    the medsearch extra that brings them (named by MissingExtraError)
  needs_torch       whether torch is in the process while it encodes
  rank              `auto`'s order when timings are within noise (lower first; on a CPU with int8
                    instructions the int8 runtimes go first), and the order in which an index's
                    runtime of the same precision answers when its own is not installed
  reranker          the re-ranker's runtime for an index of this runtime (rerank.py), and the
  reranker_distributions   distributions that one needs beyond the base install
  installed()       whether it can run here
  load(spec, ...)   a Runner for the model `spec` (exports made as needed, cached)

A new runtime is one module with one Runtime and one line in registry.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np

CALIBRATION_TEXTS = Path(__file__).resolve().parent.parent / "calibration.jsonl"  # the bundled corpus's documents


class Runner(Protocol):
    """What a runtime loads: encodes texts into L2-normalised float32 vectors at full dimension."""

    model: Any  # what the runtime loaded (a SentenceTransformer for torch; the lean runner itself)
    weights: str | None  # the weights fingerprint the runtime found its export by (None: not computed)
    prompts: dict[str, str] | None  # the prompts saved with the model
    dim: int
    max_tokens: int  # tokens read, special tokens included
    tokenizer: Any  # the model's Rust tokenizer (tokenizers.Tokenizer), None where it has none

    def encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        """[len(texts), dim] float32 vectors of `prefix` + each text."""


class Runtime:
    """One way of running an encoder (see the module's docstring for each fact)."""

    name: str = ""
    precision: str = "fp32"
    packages: tuple[str, ...] = ()
    extra: str | None = None
    needs_torch: bool = False
    rank: int = 0
    reranker: str = "torch"
    reranker_distributions: tuple[str, ...] = ()

    def installed(self) -> bool:
        """Whether its packages are found here (without importing them)."""
        return all(importlib.util.find_spec(package) is not None for package in self.packages)

    def reranker_installed(self) -> bool:
        """Whether the re-ranker's runtime for this one can run here (looked up by distribution:
        finding optimum.intel's module would import optimum)."""
        try:
            for distribution in self.reranker_distributions:
                importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def load(self, spec: str, *, device: str | None = None, batch_size: int = 64, streams: int | None = None,
             threads: int | None = None) -> Runner:
        """The model `spec` (a built-in name, a folder or a hub name) ready to encode: `device` for
        runtimes that choose one, `streams` parallel inference streams and `threads` threads per pass
        where the runtime has them."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<runtime {self.name} ({self.precision})>"
