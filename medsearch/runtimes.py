"""Encoder runtimes: their names, the precision each computes in, whether one is installed, and
which one `auto` means on this machine: measured once per CPU, then remembered.

int8 pays only where the CPU has int8 instructions (VNNI, AMX): measured at 3.3x torch on one
machine and 1.0x on another without them (issue 22). So the first `auto` on a CPU times a short
encode of the bundled calibration passages with each installed runtime, on the model at hand, and
keeps the result in $MEDSEARCH_CACHE/runtime-choice.json under the CPU's identity (model name and
the instruction sets that matter) and the model's name. `medsearch info` shows it. The choice is the fastest runtime,
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
from contextlib import contextmanager, suppress
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
    if runtime not in RUNTIMES:
        return False
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
    return Path(os.environ.get("MEDSEARCH_CACHE") or Path.home() / ".cache" / "medsearch")  # (set but empty: unset)


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


_UNWRITTEN: dict[str, dict] = {}  # choices measured where the cache could not keep them: this process's


def _read_choices() -> dict:
    """The file's {"cpu", "installed", "models": {spec: record}} when it is this CPU's and this
    installation's, else an empty one (anything malformed counts as nothing recorded)."""
    installed = [r for r in RUNTIMES if runtime_installed(r)]
    empty = {"cpu": cpu_identity(), "installed": installed, "models": {}}
    try:
        saved = json.loads(choice_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return empty
    if (not isinstance(saved, dict) or saved.get("cpu") != empty["cpu"] or saved.get("installed") != installed
            or not isinstance(saved.get("models"), dict)):
        return empty
    models = {spec: record for spec, record in saved["models"].items() if _valid(record, installed)}
    return {**empty, "models": models}


def _valid(record, installed: list[str]) -> bool:
    rates = record.get("passages_per_s") if isinstance(record, dict) else None
    return (isinstance(rates, dict) and record.get("runtime") in installed and record["runtime"] in rates
            and all(r in installed and isinstance(v, (int, float)) and v > 0 for r, v in rates.items()))


def recorded(spec: str | None = None) -> dict | None:
    """The recorded choice on this CPU for `spec`'s model ({"runtime", "passages_per_s", "measured"},
    plus "model" and "cpu"), or for None the one recorded last; None when there is none."""
    choices = _read_choices()
    models = {**choices["models"], **_UNWRITTEN}
    if spec is None:
        spec = max(models, key=lambda m: models[m].get("measured", ""), default=None)
    record = models.get(spec) if spec is not None else None
    return {**record, "model": spec, "cpu": choices["cpu"]} if record else None


def choose(rates: dict[str, float]) -> str:
    """The runtime to use given passages/s per runtime: the fastest fp32 one, or int8 where it beats
    that by INT8_MARGIN."""
    fp32 = max((r for r in rates if PRECISIONS[r] == "fp32"), key=rates.get)
    int8 = [r for r in rates if PRECISIONS[r] == "int8"]
    if int8 and rates[int8[0]] >= INT8_MARGIN * rates[fp32]:
        return int8[0]
    return fp32


def _rate(encoder, texts: list[str], repeats: int = 3) -> float:
    """Passages a second, the best of `repeats` timed encodes after one unmeasured batch."""
    encoder.encode_passages(texts[:8])  # warm-up: first-pass allocations
    best = min(_timed(encoder, texts[8:]) for _ in range(repeats))
    return round(len(texts[8:]) / best, 2)


def _timed(encoder, texts: list[str]) -> float:
    started = time.perf_counter()
    encoder.encode_passages(texts)
    return time.perf_counter() - started


@contextmanager
def cache_lock(path: Path):
    """Holds the lock file `path` in medsearch's cache (flock, waiting for another holder) for the
    block; where the folder cannot be written, the block runs without it."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def measure(spec: str, load: Callable[[str], object], passages: list[str]) -> dict:
    """Time each installed runtime on `spec`'s model (`load(runtime)` gives its encoder; exports are
    made as needed) on `passages`, and record the choice. An OpenVINO runtime that cannot run this
    model (int8 on a model with a short window, an export that fails) is left out; torch's failure
    (the model itself cannot load) is the caller's error."""
    texts = passages[:SAMPLE_PASSAGES + 8]
    installed, rates = [r for r in RUNTIMES if runtime_installed(r)], {}
    for runtime in installed:
        log.warning("auto runtime: timing %s on this CPU (once per CPU and model; %s)", runtime, choice_path())
        try:
            rates[runtime] = _rate(load(runtime), texts)
        except Exception as err:  # noqa: BLE001 - any failure of an optional runtime leaves it out
            if runtime == "torch":
                raise
            log.warning("auto runtime: %s left out (%s)", runtime, str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
    record = {"runtime": choose(rates), "passages_per_s": rates,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    choices = _read_choices()
    choices["models"][spec] = record
    path, tmp = choice_path(), choice_path().with_name(f".{CHOICE_FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(choices, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        _UNWRITTEN[spec] = record
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("auto runtime: cannot keep the choice in %s (%s): this process uses it", path, err)
    log.warning("auto runtime on this CPU for %s: %s (passages/s: %s)", spec, record["runtime"],
                ", ".join(f"{r} {v}" for r, v in rates.items()))
    return record


def auto_runtime(spec: str, load: Callable[[str], object], passages: Callable[[], list[str]]) -> str:
    """`auto` on this machine: the recorded choice for this CPU and `spec`'s model, measured the first
    time (`load` as measure takes it; `passages()` gives its passages, read only when it measures)."""
    if not runtime_installed("openvino"):
        return "torch"  # nothing to choose from
    record = recorded(spec)
    if record is None:
        with cache_lock(cache_root() / f".{CHOICE_FILE}.lock"):  # one process measures at a time: two would time each other's exports
            record = recorded(spec) or measure(spec, load, passages())  # another process may have measured meanwhile
    return record["runtime"]
