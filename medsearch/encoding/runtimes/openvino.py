"""The OpenVINO runtimes: `openvino` (the model exported to OpenVINO IR by openvino_export.py) and
`openvino-int8` (that export with NNCF's post-training static int8 quantisation, calibrated on
medical passages that ship with medsearch). Exports are made once per model and kept in the cache
(`$MEDSEARCH_CACHE/exports/<weights>-<settings>-<runtime>/`, default ~/.cache/medsearch), keyed by the
weights and settings they were made from, so a retrained model never meets a stale export; they are
then run without torch by openvino_model.py (the lean runner). One process at a time makes an export,
and each load records its use (cache.py, which lists and prunes the cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from medsearch.encoding.cache import exports_root, locked, mark_used, remove_partial
from medsearch.encoding.loading import (
    load_sentence_transformer,
    model_folder,
    quiet_libraries,
    weights_fingerprint,
)
from medsearch.encoding.models import display_name
from medsearch.encoding.runtimes import openvino_export, openvino_model
from medsearch.encoding.runtimes.base import CALIBRATION_TEXTS, Runtime
from medsearch.errors import BadInputError, ModelLoadError


class OpenVINORuntime(Runtime):
    """An OpenVINO export of the model (`file` in its folder), run by the lean runner."""

    packages = ("openvino",)
    extra = "openvino"  # where the base install lacks it
    reranker = "openvino"  # sentence-transformers' OpenVINO backend: int8 cross-encoders are not made here
    reranker_distributions = ("optimum-intel",)  # the `openvino` extra

    def __init__(self, name: str, precision: str, file: str, rank: int, packages: tuple[str, ...] = ("openvino",)):
        self.name, self.precision, self.file, self.rank, self.packages = name, precision, file, rank, packages

    def make(self, source: Path, weights: str, out: Path) -> None:
        """Write this runtime's export of the model folder `source` in `out` (fp32: converted from the torch weights)."""
        openvino_export.export_fp32(source, out, self.file, lambda folder: load_sentence_transformer(str(folder), "cpu"))

    def load(self, spec: str, *, device: str | None = None, batch_size: int = 64, streams: int | None = None,
             threads: int | None = None) -> openvino_model.OpenVINOModel:
        folder = model_folder(spec)  # the export is found by the weights' fingerprint, which the encoder then keeps
        weights = weights_fingerprint(folder)
        try:
            export = exported_model(folder, weights, self.name)
        except openvino_model.UnsupportedExport as err:
            raise BadInputError(f"runtime {self.name} runs a transformer with mean, CLS or max pooling; model "
                                f"'{display_name(spec)}' has {err}: use --runtime torch") from None
        try:
            runner = openvino_model.OpenVINOModel(export, lean_spec(export, self.name), batch_size, streams=streams,
                                                  threads=threads)
        except ValueError as err:  # a spec that disagrees with its model: not one medsearch wrote
            raise ModelLoadError(f"the export {export} is damaged ({err}): delete that folder, and the next "
                                 "use makes it again", remote=False) from None
        runner.weights = weights
        return runner


class Int8Runtime(OpenVINORuntime):
    """The fp32 export quantised by NNCF (the transformer preset), calibrated on the bundled passages."""

    def make(self, source: Path, weights: str, out: Path) -> None:
        quiet_libraries()
        openvino_export.quantize_int8(exported_model(source, weights, OPENVINO.name), out, self.file,
                                      openvino_export.calibration_texts(CALIBRATION_TEXTS))


# rank: OpenVINO fp32 first within noise (the model's own vectors) unless the CPU has int8 instructions
OPENVINO = OpenVINORuntime("openvino", "fp32", "openvino/openvino_model.xml", rank=0)
OPENVINO_INT8 = Int8Runtime("openvino-int8", "int8", "openvino/openvino_model_qint8_quantized.xml", rank=1,
                            packages=("openvino", "nncf"))
BY_NAME = {runtime.name: runtime for runtime in (OPENVINO, OPENVINO_INT8)}
OPENVINO_FILES = {name: runtime.file for name, runtime in BY_NAME.items()}


# What, besides the weights, decides how a folder turns text into vectors: its modules and their
# settings, its tokenizer, its prompts. Two folders with the same weights and other prompts (a copy
# given e5 prompts) must not share an export: the export carries them.
SETTINGS_FILES = ("modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")
PROMPT_KEYS = ("prompts", "default_prompt_name")


def settings_fingerprint(folder: Path) -> str:
    """Hash of a sentence-transformers folder's settings (SETTINGS_FILES, each module folder's
    config.json, the prompts of config_sentence_transformers.json): part of an export's key."""
    digest = hashlib.sha256()
    paths = [folder / name for name in SETTINGS_FILES] + sorted(folder.glob("[0-9]_*/config.json"))
    for path in paths:
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}\0".encode() + path.read_bytes() + b"\0")
    try:
        config = json.loads((folder / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    prompts = {key: config.get(key) for key in PROMPT_KEYS} if isinstance(config, dict) else {}
    digest.update(json.dumps(prompts, sort_keys=True).encode())
    return digest.hexdigest()[:8]


def export_folder(source: Path, weights: str, runtime: str, kind: str | None = None) -> Path:
    """Where the export of `source` for `runtime` is kept: by weights and settings (a cross-encoder's
    export passes its own `kind`)."""
    kind = f"{settings_fingerprint(Path(source))}-" if kind is None else kind
    return exports_root() / f"{weights}-{kind}{runtime}"


def exported_model(source: Path, weights: str, runtime: str, make: Callable[[Path, Path], None] | None = None,
                   kind: str | None = None) -> Path:
    """The export of the model folder `source` for an OpenVINO runtime: a sentence-transformers
    folder with its openvino/ files, written once (atomically) per weights and settings fingerprint
    and reused; its use is recorded (cache.mark_used, for `medsearch cache prune`). One process at a
    time looks it up or makes it (cache.locked): a second one waits, then reuses the first's.
    `make(source, folder)` writes another kind of model's export (`kind`, e.g. a cross-encoder's)."""
    target = export_folder(source, weights, runtime, kind)
    with locked(target):
        spec = openvino_model.read_spec(target) if make is None else None
        whole = (target / OPENVINO_FILES[runtime]).is_file() and (
            make is not None or (spec is not None and spec.get("file") == OPENVINO_FILES[runtime]))
        if not whole:  # none yet, or one made before exports carried their runner's spec: made (again)
            shutil.rmtree(target, ignore_errors=True)
            _export(source, weights, runtime, make, target)
        mark_used(target)
    return target


def _export(source: Path, weights: str, runtime: str, make: Callable[[Path, Path], None] | None, target: Path) -> None:
    """Write the export `target` through a temporary folder beside it, renamed into place when whole.
    The caller holds its lock, so any temporary folder of `target` already there is a killed writer's: removed first."""
    remove_partial(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    # Converters and quantisers print progress on stdout; it goes to stderr so that `--json` output stays JSON.
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings while exporting: nothing a user can act on
            if make is not None:
                make(source, tmp)
            else:
                BY_NAME[runtime].make(source, weights, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same export first (a cache without locks): keep its copy
            if not (target / OPENVINO_FILES[runtime]).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lean_spec(export: Path, runtime: str) -> dict:
    """What sentence-transformers decided about an export (openvino_model.SPEC_FILE), for the lean
    runner, as the export recorded it."""
    spec = openvino_model.read_spec(export)
    if spec is None or spec.get("file") != OPENVINO_FILES[runtime]:
        raise ModelLoadError(f"the export {export} is damaged (its {openvino_model.SPEC_FILE} is missing or unreadable): "
                             "delete that folder, and the next use makes it again", remote=False)
    return spec
