"""Encoder runtimes: their names, the precision each computes in, whether one is installed, and
which one `auto` means on this machine: measured once per CPU, then remembered.

int8 pays only where the CPU has int8 instructions (VNNI, AMX): measured at 3.3x torch on one
machine and 1.0x on another without them (issue 22). So the first `auto` on a CPU times a short
encode of the bundled calibration passages with each installed runtime, on the model at hand, and
keeps the result in $MEDSEARCH_CACHE/runtime-choice.json under the CPU's identity (model name and
the instruction sets that matter). `medsearch info` shows it. The choice is the fastest runtime,
except that int8 must beat the fastest fp32 runtime by INT8_MARGIN (its vectors differ slightly
from the model's own; NDCG@10 within 0.002 on the dev sets), so it is never a runtime slower than torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

AUTO_RUNTIME = "auto"
RUNTIMES = ("torch", "openvino", "openvino-int8")
# What each runtime computes in. Runtimes of one precision give the same vectors to float tolerance
# (cosine > 0.9999, tests/test_runtimes.py), so an index built by one is searched with another;
# int8 vectors differ (cosine ~0.998), so they only meet int8 vectors.
PRECISIONS = {"torch": "fp32", "openvino": "fp32", "openvino-int8": "int8"}
RUNTIME_EXTRAS = {"openvino": "openvino", "openvino-int8": "openvino"}

CHOICE_FILE = "runtime-choice.json"
SAMPLE_PASSAGES = 32  # calibration passages timed per runtime, after one unmeasured batch
INT8_MARGIN = 1.15  # int8 is chosen only this much faster than the best fp32 runtime
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def runtime_installed(runtime: str) -> bool:
    if runtime == "torch":
        return True
    # the `openvino` extra: openvino runs exports, optimum-intel makes them (looked up by its
    # distribution: finding the optimum.intel module would import optimum)
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        importlib.metadata.distribution("optimum-intel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cache_root() -> Path:
    """medsearch's cache: exports, compiled models, the runtime choice ($MEDSEARCH_CACHE)."""
    return Path(os.environ.get("MEDSEARCH_CACHE", Path.home() / ".cache" / "medsearch"))


def cpu_identity() -> str:
    """The CPU's model name, its cores and the instruction sets that decide int8's speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    have = [flag for flag in FLAGS if flag in flags]
    return f"{name} | {os.cpu_count()} cores | {' '.join(have) or 'no listed flags'}"


def choice_path() -> Path:
    return cache_root() / CHOICE_FILE


def recorded() -> dict | None:
    """This CPU's recorded choice ({"cpu", "runtime", "passages_per_s", "model", "measured"}), or None."""
    try:
        record = json.loads(choice_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("cpu") != cpu_identity() or "runtime" not in record:
        return None
    installed = [r for r in RUNTIMES if runtime_installed(r)]
    return record if record["runtime"] in installed and record.get("installed") == installed else None


def choose(rates: dict[str, float]) -> str:
    """The runtime to use given passages/s per runtime: the fastest, int8 only past INT8_MARGIN."""
    fp32 = max((r for r in rates if PRECISIONS[r] == "fp32"), key=rates.get)
    int8 = [r for r in rates if PRECISIONS[r] == "int8"]
    if int8 and rates[int8[0]] >= INT8_MARGIN * rates[fp32]:
        return int8[0]
    return fp32


def measure(spec: str, load: Callable[[str], object], passages: list[str]) -> dict:
    """Time each installed runtime on `spec`'s model (`load(runtime)` gives its encoder; exports are
    made as needed) on `passages`, and record the choice."""
    from medsearch.errors import MedsearchError

    texts = passages[:SAMPLE_PASSAGES + 8]
    installed, rates = [r for r in RUNTIMES if runtime_installed(r)], {}
    for runtime in installed:
        log.warning("auto runtime: timing %s on this CPU (once per CPU; %s)", runtime, choice_path())
        try:
            encoder = load(runtime)
        except MedsearchError as err:  # e.g. int8 on a model too short for its calibration: not a candidate
            log.warning("auto runtime: %s left out (%s)", runtime, err)
            continue
        encoder.encode_passages(texts[:8])  # warm-up: first-pass allocations
        started = time.perf_counter()
        encoder.encode_passages(texts[8:])
        rates[runtime] = round(len(texts[8:]) / (time.perf_counter() - started), 2)
    record = {"cpu": cpu_identity(), "runtime": choose(rates), "passages_per_s": rates, "installed": installed,
              "model": spec, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = choice_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.warning("auto runtime on this CPU: %s (passages/s: %s)", record["runtime"],
                ", ".join(f"{r} {v}" for r, v in rates.items()))
    return record


def auto_runtime(spec: str, load: Callable[[str], object], passages: list[str]) -> str:
    """`auto` on this machine: the recorded choice for this CPU, measured on `spec`'s model the first
    time (`load` and `passages` as measure takes them)."""
    if not runtime_installed("openvino"):
        return "torch"  # nothing to choose from
    record = recorded() or measure(spec, load, passages)
    return record["runtime"]
