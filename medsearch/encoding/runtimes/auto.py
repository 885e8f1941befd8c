"""Which runtime `auto` means on this machine: measured once per CPU, then remembered.

int8 pays only where the CPU has int8 instructions (VNNI, AMX): measured at 3.3x torch on one
machine and 1.0x on another without them (issue 22). So the first `auto` on a CPU times each
installed runtime on the model at hand, encoding a build's batch of the bundled calibration
passages in interleaved rounds (3 to 9: more while the leader's wins are not unanimous; a shared
machine's busy moments fall on every runtime alike), and keeps the result in
$MEDSEARCH_CACHE/runtime-choice.json under the CPU's identity (model name and the instruction sets
that matter) and the model's name. The choice is the runtime with the lowest median time where it
clearly leads (faster in 3 of 4 rounds, by 3%); within noise the CPU's prior decides (int8 where the
CPU has int8 instructions, else each runtime's rank: OpenVINO fp32, int8, torch). `medsearch info`
shows the choice, its timings and how sure it is. A short timing of 24 passages at batch 8 once chose fp32 on a machine
where whole builds ran int8 1.2x faster (issue 32).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from contextlib import suppress
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.encoding.cache import cache_lock, cache_root
from medsearch.encoding.runtimes.registry import (
    DEFAULT_RUNTIME,
    REGISTRY,
    RUNTIMES,
    runtime_installed,
)
from medsearch.timestamps import utc_timestamp

log = logging.getLogger(__name__)

CHOICE_FILE = "runtime-choice.json"
SAMPLE_PASSAGES = 64  # calibration passages timed per runtime and round: one batch, as a build encodes them
MIN_ROUNDS, MAX_ROUNDS = 3, 9  # interleaved rounds: more while the leader's wins are not unanimous
CLEAR_WINS, CLEAR_MARGIN = 0.75, 1.03  # a clear leader: faster in 3 of 4 rounds, by 3% at the median
DROP = 1.5  # a runtime this much slower than the best after a round is timed no more
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
FLAGS = ("avx2", "avx512f", *INT8_FLAGS, "amx_bf16")


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
    except (OSError, ValueError, RecursionError):
        return empty
    if (not isinstance(saved, dict) or saved.get("cpu") != empty["cpu"] or saved.get("installed") != installed
            or not isinstance(saved.get("models"), dict)):
        return empty
    models = {spec: record for spec, record in saved["models"].items() if _valid(record, installed)}
    return {**empty, "models": models}


def _valid(record, installed: list[str]) -> bool:
    rates = record.get("passages_per_s") if isinstance(record, dict) else None
    return (isinstance(rates, dict) and record.get("runtime") in installed and record["runtime"] in rates
            and isinstance(record.get("basis"), str) and isinstance(record.get("sure"), bool)  # (a choice from before issue 32's longer timing has none: measured again)
            and all(r in installed and isinstance(v, (int, float)) and v > 0 for r, v in rates.items()))


def recorded(spec: str | None = None) -> dict | None:
    """The recorded choice on this CPU for `spec`'s model ({"runtime", "passages_per_s", "measured"},
    plus "model" and "cpu"), or for None the one recorded last; None when there is none."""
    choices = _read_choices()
    models = {**choices["models"], **_UNWRITTEN}
    if spec is None:
        spec = max(models, key=lambda m: str(models[m].get("measured", "")), default=None)
    record = models.get(spec) if spec is not None else None
    return {**record, "model": spec, "cpu": choices["cpu"]} if record else None


def prior(cpu: str) -> list[str]:
    """The runtimes in the order a timing within noise falls back to: int8 first on a CPU with int8
    instructions (VNNI, AMX: whole builds measured int8 1.2x fp32 there), else OpenVINO fp32 (the
    model's own vectors); torch last (same vectors as OpenVINO fp32, and torch in the query process)."""
    int8_cpu = bool(set(cpu.rpartition("|")[2].split()) & set(INT8_FLAGS))
    return sorted(RUNTIMES, key=lambda name: (not (int8_cpu and REGISTRY[name].precision == "int8"), REGISTRY[name].rank))


def decide(times: dict[str, list[float]], cpu: str) -> dict:
    """The choice from each runtime's seconds per round (rounds interleaved, so a busy moment of a
    shared machine falls on every runtime alike): the runtime with the lowest median time, where it
    beat the runner-up in at least CLEAR_WINS of their rounds by CLEAR_MARGIN at the median; else
    the two are within noise and the CPU's prior decides between them."""
    rounds = max(len(t) for t in times.values())
    median = {r: float(np.median(t)) for r, t in times.items() if len(t) == rounds}  # (not those dropped early)
    ranked = sorted(median, key=median.get)
    leader, record = ranked[0], {"rounds": rounds}
    if len(ranked) == 1:
        return {**record, "runtime": leader, "sure": True, "basis": "the only runtime that ran"}
    second = ranked[1]
    paired = list(zip(times[leader], times[second]))
    wins = sum(a < b for a, b in paired)
    margin = float(np.median([b / a for a, b in paired]))
    record.update(margin=round(margin, 3), wins=f"{wins} of {len(paired)}", runner_up=second)
    if wins >= CLEAR_WINS * len(paired) and margin >= CLEAR_MARGIN:
        return {**record, "runtime": leader, "sure": True,
                "basis": f"{margin:.2f}x {second}, faster in {wins} of {len(paired)} rounds"}
    order = prior(cpu)
    chosen = min((leader, second), key=order.index)
    return {**record, "runtime": chosen, "sure": False,
            "basis": f"{leader} and {second} within noise ({margin:.2f}x, faster in {wins} of {len(paired)} rounds): "
                     f"{chosen} by this CPU's prior ({' > '.join(order)})"}


def _timings(encoders: dict[str, object], texts: list[str]) -> dict[str, list[float]]:
    """Seconds per encode of `texts` for each encoder, in interleaved rounds (the order turning each
    round) after one unmeasured pass: MIN_ROUNDS, then more up to MAX_ROUNDS while the leader's wins
    are not unanimous. A runtime DROP times slower than the best, and not the runner-up, is timed no
    more (the two fastest always have every round)."""
    for encoder in encoders.values():
        encoder.encode_passages(texts[:8])  # warm-up: first-pass allocations
    times: dict[str, list[float]] = {name: [] for name in encoders}
    live = list(encoders)
    for round_ in range(MAX_ROUNDS):
        turn = round_ % len(live)
        for name in live[turn:] + live[:turn]:
            times[name].append(_timed(encoders[name], texts))
        ranked = sorted(live, key=lambda n: np.median(times[n]))
        live = [n for n in live if n in ranked[:2] or np.median(times[n]) <= DROP * np.median(times[ranked[0]])]
        if round_ + 1 >= MIN_ROUNDS and (len(live) == 1 or all(a < b for a, b in zip(times[ranked[0]], times[ranked[1]]))):
            break
    return times


def _timed(encoder, texts: list[str]) -> float:
    started = time.perf_counter()
    encoder.encode_passages(texts)
    return time.perf_counter() - started


def measure(spec: str, load: Callable[[str], object], passages: list[str]) -> dict:
    """Time each installed runtime on `spec`'s model (`load(runtime)` gives its encoder; exports are
    made as needed) on `passages` (decide, _timings), and record the choice. An OpenVINO runtime that
    cannot run this model (an export that fails) is left out; torch's failure (the model itself
    cannot load) is the caller's error."""
    texts = passages[:SAMPLE_PASSAGES]
    installed, encoders = [r for r in RUNTIMES if runtime_installed(r)], {}
    log.warning("auto runtime: timing %s on this CPU (once per CPU and model; %s)", ", ".join(installed), choice_path())
    for runtime in installed:
        try:
            encoders[runtime] = load(runtime)
        except Exception as err:  # noqa: BLE001 - any failure of an optional runtime leaves it out
            if runtime == DEFAULT_RUNTIME:
                raise
            log.warning("auto runtime: %s left out (%s)", runtime, str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
    times = _timings(encoders, texts)
    record = {**decide(times, cpu_identity()),
              "passages_per_s": {r: round(len(texts) / float(np.median(t)), 2) for r, t in times.items()},
              "measured": utc_timestamp()}
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
    log.warning("auto runtime on this CPU for %s: %s (%s; passages/s: %s)", spec, record["runtime"], record["basis"],
                ", ".join(f"{r} {v}" for r, v in record["passages_per_s"].items()))
    return record


def auto_runtime(spec: str, load: Callable[[str], object], passages: Callable[[], list[str]]) -> str:
    """`auto` on this machine: the recorded choice for this CPU and `spec`'s model, measured the first
    time (`load` as measure takes it; `passages()` gives its passages, read only when it measures)."""
    installed = [r for r in RUNTIMES if runtime_installed(r)]
    if len(installed) < 2:
        return installed[0] if installed else DEFAULT_RUNTIME  # nothing to choose from
    record = recorded(spec)
    if record is None:
        with cache_lock(cache_root() / f".{CHOICE_FILE}.lock"):  # one process measures at a time: two would time each other's exports
            record = recorded(spec) or measure(spec, load, passages())  # another process may have measured meanwhile
    return record["runtime"]
