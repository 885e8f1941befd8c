"""Encoder runtimes: one interface (base.py: Runtime, and the Runner it loads), one module per
runtime family (torch.py; openvino.py for fp32 and int8, with openvino_export.py making the exports
and openvino_model.py, the lean runner, running them), the registry by name (registry.py) and the
measured choice that `auto` means on this CPU (auto.py)."""

from medsearch.encoding.cache import cache_lock, cache_root  # noqa: F401 - where callers found them
from medsearch.encoding.runtimes.auto import (  # noqa: F401
    CHOICE_FILE,
    INT8_FLAGS,
    MAX_ROUNDS,
    MIN_ROUNDS,
    SAMPLE_PASSAGES,
    _timings,
    auto_runtime,
    choice_path,
    cpu_identity,
    decide,
    measure,
    prior,
    recorded,
)
from medsearch.encoding.runtimes.base import CALIBRATION_TEXTS, Runner, Runtime  # noqa: F401
from medsearch.encoding.runtimes.registry import (  # noqa: F401
    AUTO_RUNTIME,
    DEFAULT_RUNTIME,
    PRECISIONS,
    REGISTRY,
    RUNTIME_EXTRAS,
    RUNTIME_PACKAGES,
    RUNTIMES,
    get_runtime,
    runtime_for_index,
    runtime_installed,
)
