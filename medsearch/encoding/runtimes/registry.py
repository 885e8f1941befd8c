"""The runtimes by name: one line each in REGISTRY (in the order --runtime lists them), and the facts
that callers read from them (the CLI's choices, the manifest's check, `auto`, the re-ranker)."""

from __future__ import annotations

from medsearch.encoding.runtimes.base import Runtime
from medsearch.encoding.runtimes.openvino import OPENVINO, OPENVINO_INT8
from medsearch.encoding.runtimes.torch import TORCH
from medsearch.errors import BadInputError, MissingExtraError

REGISTRY: dict[str, Runtime] = {runtime.name: runtime for runtime in (
    TORCH,
    OPENVINO,
    OPENVINO_INT8,
)}
AUTO_RUNTIME = "auto"
DEFAULT_RUNTIME = TORCH.name  # the Encoder's default, a passed model's, and an index's from before runtimes
RUNTIMES = tuple(REGISTRY)
# What each runtime computes in. Runtimes of one precision give the same vectors to float tolerance
# (cosine > 0.9999, tests/test_runtimes.py), so an index built by one is searched with another;
# int8 vectors differ (cosine ~0.998), so they only meet int8 vectors.
PRECISIONS = {name: runtime.precision for name, runtime in REGISTRY.items()}
RUNTIME_EXTRAS = {name: runtime.extra for name, runtime in REGISTRY.items() if runtime.extra}  # where the base install lacks them
RUNTIME_PACKAGES = {name: runtime.packages for name, runtime in REGISTRY.items()}


def runtime_installed(runtime: str) -> bool:
    """Whether `runtime` can run here: openvino runs the OpenVINO exports, and NNCF makes int8 ones
    (both in the base install; looked up without importing them)."""
    return runtime in REGISTRY and REGISTRY[runtime].installed()


def get_runtime(name: str) -> Runtime:
    """The runtime of that name, installed here (else the missing packages are named)."""
    if name not in REGISTRY:
        raise BadInputError(f"unknown runtime '{name}' (use {AUTO_RUNTIME}, {', '.join(RUNTIMES)})")
    runtime = REGISTRY[name]
    if not runtime.installed():
        packages = " ".join(runtime.packages)
        raise MissingExtraError(f"runtime {name} needs {packages} (part of medsearch's install): pip install {packages}",
                                runtime.extra)
    return runtime


def runtime_for_index(recorded: str | None) -> str:
    """The runtime to encode queries for an index: the one it was built with, or, when that one's
    extra is missing here, an installed runtime of the same precision (same vectors; by rank)."""
    recorded = recorded or DEFAULT_RUNTIME  # indexes built before runtimes were recorded
    if recorded not in REGISTRY:
        raise BadInputError(f"the index records runtime '{recorded}', which this version does not know "
                            f"({', '.join(RUNTIMES)}): rebuild it, or query with --runtime")
    if runtime_installed(recorded):
        return recorded
    for runtime in sorted(REGISTRY.values(), key=lambda r: r.rank):
        if runtime.precision == PRECISIONS[recorded] and runtime.installed():
            return runtime.name
    return get_runtime(recorded).name  # raises MissingExtraError
