"""The embedding model: loading (offline for local folders), prefixes per model, device choice,
the runtime that computes it, L2-normalised full-dimension encoding and a fingerprint that ties an
index to its model.

Runtimes: `torch` (sentence-transformers), `openvino` (the model exported to OpenVINO IR by
sentence-transformers' backend) and `openvino-int8` (that export with post-training static int8
quantisation, calibrated on medical passages that ship with medsearch). Exports are made once per
model and kept in the cache (`$MEDSEARCH_CACHE/exports/<weights>-<settings>-<runtime>/`, default
~/.cache/medsearch), keyed by the weights and settings they were made from, so a retrained model never
meets a stale export; they are then run without torch by openvino_model.py (the lean runner). One
process at a time makes an export, and each load records its use (cache.py, which lists and prunes the cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from medsearch.encoding.cache import exports_root, locked, mark_used, remove_partial
from medsearch.errors import BadInputError, MedsearchError, MissingExtraError, ModelLoadError
from medsearch.encoding.models import DEFAULT_MODEL, builtin_folder, display_name, is_builtin
from medsearch.encoding.runtimes import (  # noqa: F401 - the runtimes' facts, where callers have always found them
    AUTO_RUNTIME,
    PRECISIONS,
    RUNTIME_EXTRAS,
    RUNTIME_PACKAGES,
    RUNTIMES,
    auto_runtime,
    cache_root,
    runtime_installed,
)

# A model folder's search defaults, as its tuning chose them on dev data (tune.py): {"fusion": {...}}
SEARCH_DEFAULTS_FILE = "medsearch_search.json"
# A tuned model's own re-ranker (tune.py): a cross-encoder in this subfolder, not part of its weights
RERANKER_DIR = "reranker"
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


# An index's runtime when its recorded one is not installed: the first installed one of the same precision.
AUTO_ORDER = ("openvino-int8", "openvino", "torch")
OPENVINO_FILES = {"openvino": "openvino/openvino_model.xml", "openvino-int8": "openvino/openvino_model_qint8_quantized.xml"}
CALIBRATION_TEXTS = Path(__file__).with_name("calibration.jsonl")  # the bundled corpus's documents
EXPORT_DIRS = ("onnx", "openvino")


def resolve_runtime(runtime: str | None = AUTO_RUNTIME, spec: str = DEFAULT_MODEL) -> str:
    """A runtime name, or `auto` (None) for the fastest on this CPU (runtimes.py: measured on `spec`'s
    model the first time on a CPU, then remembered); a missing extra is named."""
    runtime = runtime or AUTO_RUNTIME
    if runtime == AUTO_RUNTIME:
        return auto_runtime(spec, lambda name: Encoder(spec, device="cpu", runtime=name),
                            lambda: [json.loads(line)["text"] for line in CALIBRATION_TEXTS.read_text(encoding="utf-8").splitlines()])
    if runtime not in RUNTIMES:
        raise BadInputError(f"unknown runtime '{runtime}' (use {AUTO_RUNTIME}, {', '.join(RUNTIMES)})")
    if not runtime_installed(runtime):
        packages = " ".join(RUNTIME_PACKAGES[runtime])
        raise MissingExtraError(f"runtime {runtime} needs {packages} (part of medsearch's install): pip install {packages}",
                                RUNTIME_EXTRAS[runtime])
    return runtime


def runtime_for_index(recorded: str | None) -> str:
    """The runtime to encode queries for an index: the one it was built with, or, when that one's
    extra is missing here, an installed runtime of the same precision (same vectors)."""
    recorded = recorded or "torch"  # indexes built before runtimes were recorded
    if recorded not in RUNTIMES:
        raise BadInputError(f"the index records runtime '{recorded}', which this version does not know "
                            f"({', '.join(RUNTIMES)}): rebuild it, or query with --runtime")
    if runtime_installed(recorded):
        return recorded
    for runtime in AUTO_ORDER:
        if PRECISIONS[runtime] == PRECISIONS[recorded] and runtime_installed(runtime):
            return runtime
    return resolve_runtime(recorded)  # raises MissingExtraError


def _file_digest(path: Path, block: int = 1 << 16, blocks: int = 64) -> bytes:
    """sha256 of a file; past `blocks` x `block` bytes, of its size and `blocks` blocks spread over it
    (a 2 GB model is fingerprinted in milliseconds; a fine-tune changes every block)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= block * blocks:
            digest.update(f.read())
        else:
            for i in range(blocks):
                f.seek(i * (size - block) // (blocks - 1))
                digest.update(f.read(block))
    return digest.digest()


def _tensor_digests(path: Path) -> list[bytes]:
    """One digest per floating-point tensor of a safetensors file: its shape and the first values of
    its first, middle and last rows (as float16; a fine-tune moves them all). Names are left out:
    re-saving a model may rename tensors (LayerNorm gamma/weight) and reorder them, without changing
    a single value. Read with numpy (no torch import on a query's path); bfloat16, which numpy lacks,
    through torch."""
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
            part = f.get_slice(name)
            shape, dtype = part.get_shape(), part.get_dtype()
            if dtype not in ("F16", "BF16", "F32", "F64") or not shape or not shape[0]:
                continue
            if dtype == "BF16":
                with safe_open(str(path), framework="pt") as torch_file:
                    values = _head(torch_file.get_slice(name), shape, lambda rows: rows.float().numpy())
            else:
                values = _head(part, shape, np.asarray)
            out.append(hashlib.sha256(str(tuple(shape)).encode() + values.tobytes()).digest())
    return out


def _head(part, shape, to_numpy) -> np.ndarray:
    """The first values of a tensor's first, middle and last rows (of a 1-d tensor, its first 96) as
    float16, cast as torch casts them: through float32 (float64 rounds twice, as torch's .to(float16)
    does; bfloat16 widens exactly), values past float16's range to inf without a warning. `to_numpy`
    turns a slice into a numpy array."""
    if len(shape) > 1:
        values = np.stack([to_numpy(part[i]).reshape(-1)[:32] for i in (0, shape[0] // 2, shape[0] - 1)]).reshape(-1)
    else:
        values = to_numpy(part[:]).reshape(-1)[:96]
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(np.float16)


def weights_fingerprint(folder: str | Path) -> str:
    """Hash of a model folder's weights: the values of every tensor in its safetensors files (any
    other weight file, e.g. pytorch_model.bin, by its bytes). The same weights saved again, or copied
    elsewhere, give the same fingerprint; exports, checkpoints and a tuned model's re-ranker are left out."""
    folder = Path(folder)
    digests = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (not path.is_file() or rel.parts[0] in (*EXPORT_DIRS, RERANKER_DIR)
                or rel.parts[0].startswith(("checkpoint-", "."))):
            continue
        if path.suffix == ".safetensors":
            digests += _tensor_digests(path)
        elif path.suffix == ".bin" and path.name.startswith("pytorch_model"):
            digests.append(_file_digest(path))
    if not digests:
        raise ModelLoadError(f"no weights (*.safetensors, pytorch_model.bin) in model folder {folder}", remote=False)
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:16]


def default_model_path() -> str:
    return str(builtin_folder(DEFAULT_MODEL))


def resolve_model(spec: str) -> str:
    """A model spec is a built-in name (models.py: `default`, `multilingual-e5-small`), a local
    folder, or a hub name; return what to load."""
    if not is_builtin(spec):
        return spec
    folder = builtin_folder(spec)
    mark_used(folder)  # a built-in model made in the cache (multilingual-e5-small): its last use, for prune
    return str(folder)


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


def _check_local(target: str) -> bool:
    """Whether `target` is a local folder (then nothing may touch the network); a path that names no
    folder is an error, anything else a hub name."""
    if Path(target).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return True
    if Path(target).exists() or target.startswith((".", "/", "~")):
        raise ModelLoadError(f"model folder not found: {target}", remote=False)
    return False


def quiet_libraries() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the per-load "Loading weights" bar
    if importlib.util.find_spec("optimum") is not None:
        # optimum sets its own loggers' level when first used (after a plain setLevel here); its own
        # switch holds. Its warnings are not a user's to act on: loading an export of a local folder
        # in offline mode, optimum-intel warns that it "could not infer whether the model was
        # already converted" (it looks for the folder in the hub cache) and loads it as it should.
        from optimum.utils import logging as optimum_logging

        optimum_logging.set_verbosity_error()
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub", "optimum", "nncf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def load_sentence_transformer(spec: str, device: str | None = None, **kwargs):
    """Load a SentenceTransformer; a local folder never touches the network."""
    target = resolve_model(spec)
    local = _check_local(target)
    from sentence_transformers import SentenceTransformer

    quiet_libraries()
    try:
        return SentenceTransformer(target, device=select_device(device), local_files_only=local, **kwargs)
    except Exception as err:  # hub errors, missing files, bad configs: all say "cannot load"
        message = f"cannot load model '{spec}': {type(err).__name__}: {err}".splitlines()[0]
        raise ModelLoadError(message, remote=not local) from None


def model_folder(spec: str) -> Path:
    """The local folder of a model: the folder itself, or a hub model's snapshot (downloaded once)."""
    target = resolve_model(spec)
    if _check_local(target):
        return Path(target)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(target))
    except Exception as err:
        raise ModelLoadError(f"cannot load model '{spec}': {type(err).__name__}: {err}".splitlines()[0], remote=True) from None


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
    from medsearch.encoding.openvino_model import read_spec

    target = export_folder(source, weights, runtime, kind)
    with locked(target):
        spec = read_spec(target) if make is None else None
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
    from medsearch.encoding import openvino_export

    remove_partial(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    # Converters and quantisers print progress on stdout; it goes to stderr so that `--json` output stays JSON.
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings while exporting: nothing a user can act on
            if make is not None:
                make(source, tmp)
            elif runtime == "openvino":  # converted from the torch weights
                openvino_export.export_fp32(source, tmp, OPENVINO_FILES[runtime], lambda folder: load_sentence_transformer(str(folder), "cpu"))
            else:
                quiet_libraries()
                openvino_export.quantize_int8(exported_model(source, weights, "openvino"), tmp, OPENVINO_FILES[runtime],
                                              openvino_export.calibration_texts(CALIBRATION_TEXTS))
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
    from medsearch.encoding import openvino_model

    spec = openvino_model.read_spec(export)
    if spec is None or spec.get("file") != OPENVINO_FILES[runtime]:
        raise ModelLoadError(f"the export {export} is damaged (its {openvino_model.SPEC_FILE} is missing or unreadable): "
                             "delete that folder, and the next use makes it again", remote=False)
    return spec


class Encoder:
    """Encodes queries and passages once, at the model's full dimension, L2-normalised, with one
    runtime (`auto`: the fastest installed). `model` passes an already loaded torch model.

    The OpenVINO runtimes run the model's export with openvino_model.OpenVINOModel (no torch,
    transformers or sentence-transformers in the process) unless its modules need sentence-transformers'
    backend. `streams` asks OpenVINO for that many parallel inference streams (a service's encode
    workers; None: one latency-bound stream), `threads` for that many threads per pass (torch's
    intra-op threads, process-wide; an OpenVINO stream's threads)."""

    def __init__(self, spec: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 64, model=None,
                 runtime: str | None = "torch", streams: int | None = None, threads: int | None = None):
        self.spec = spec
        self.runtime = "torch" if model is not None else resolve_runtime(runtime, spec)
        self._passed = model is not None
        self.lean = False
        if model is not None:
            self.model = model
        elif self.runtime == "torch":
            self.model = load_sentence_transformer(spec, device)
            if threads:
                import torch

                torch.set_num_threads(threads)
        else:  # the export is found by the weights' fingerprint, which this encoder then keeps
            folder = model_folder(spec)
            self.weights = weights_fingerprint(folder)
            from medsearch.encoding.openvino_model import OpenVINOModel, UnsupportedExport

            try:
                export = exported_model(folder, self.weights, self.runtime)
            except UnsupportedExport as err:
                raise BadInputError(f"runtime {self.runtime} runs a transformer with mean, CLS or max pooling; model "
                                    f"'{display_name(spec)}' has {err}: use --runtime torch") from None
            try:
                self.model = OpenVINOModel(export, lean_spec(export, self.runtime), batch_size, streams=streams, threads=threads)
            except ValueError as err:  # a spec that disagrees with its model: not one medsearch wrote
                raise ModelLoadError(f"the export {export} is damaged ({err}): delete that folder, and the next "
                                     "use makes it again", remote=False) from None
            self.lean = True
        prompts = self.model.prompts if self.lean else getattr(self.model, "prompts", None)
        self.profile = profile_for(spec if spec != DEFAULT_MODEL else "", prompts)
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
        return self.model.dim if self.lean else int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Tokens the encoder reads, special tokens included."""
        if self.lean:
            return self.model.max_tokens
        limits = [self.model.max_seq_length, getattr(self.model.tokenizer, "model_max_length", None)]
        return int(min(x for x in limits if x))

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
        backend = self.model.tokenizer if self.lean else getattr(self.model.tokenizer, "backend_tokenizer", None)
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
        if self.lean:
            return self.model.encode(texts, prefix, progress)
        vectors = self.model.encode(texts, prompt=prefix or None, batch_size=self.batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.query_prefix, progress)

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.profile.passage_prefix, progress)
