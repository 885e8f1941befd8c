"""Finding, loading and fingerprinting a model: a built-in name (models.py), a local folder (never
the network) or a hub name; the device; the weights' fingerprint that ties an index, and an export,
to the weights they came from. Shared by the encoder, its runtimes and the re-ranker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from medsearch.encoding.cache import mark_used
from medsearch.encoding.models import DEFAULT_MODEL, builtin_folder, is_builtin
from medsearch.errors import ModelLoadError

# A tuned model's own re-ranker (tune.py): a cross-encoder in this subfolder, not part of its weights
RERANKER_DIR = "reranker"
EXPORT_DIRS = ("onnx", "openvino")


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
