"""Making an encoder's OpenVINO export without optimum: the sentence-transformers model is loaded with
torch, its transformer converted by `openvino.convert_model` (dynamic batch and length), and, for
int8, quantised by NNCF's post-training static quantisation (`nncf.quantize`, the transformer preset)
calibrated on medical passages that ship with medsearch. The lean runner (openvino_model.py) runs
the result with openvino and tokenizers only.

An export folder holds what the lean runner reads: openvino/<file>.xml/.bin, the model's tokenizer
and settings files (copied from the model folder, not its weights) and SPEC_FILE (what
sentence-transformers decided about the model: openvino_model.describe). Before, exports were made
by sentence-transformers' OpenVINO backend through optimum-intel, a package (with torchvision in its
requirements) that the base install could not carry; the vectors are the same to float tolerance
(tests/test_openvino_model.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from medsearch.encoding.runtimes import openvino_model

# Files of a model folder an export leaves out: its weights and earlier exports
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.h5", "*.msgpack", "*.onnx", "onnx", "openvino", "checkpoint-*",
                   "reranker", ".*")
CALIBRATION_SAMPLES = 300  # NNCF's default subset size (the bundled passages are fewer: each is used once)
CALIBRATION_TOKENS = 384  # each calibration text padded to this many tokens
CALIBRATION_SEED = 42


def export_fp32(source: Path, out: Path, file: str, load) -> None:
    """The fp32 export of the sentence-transformers folder `source` in `out` (`file`: the model's path
    in it; `load(source)` gives the loaded SentenceTransformer). Raises UnsupportedExport for a module
    stack the lean runner does not reproduce."""
    import openvino as ov
    import torch

    model = load(source)
    spec = openvino_model.describe(model, file)  # UnsupportedExport before any work
    transformer = model[0].auto_model.eval()
    example = model.tokenizer(["medsearch export", "a second, longer sentence to trace with"], padding=True,
                              return_tensors="pt")

    class TokenEmbeddings(torch.nn.Module):  # what sentence-transformers' Transformer module gives the pooling
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    with torch.no_grad():
        converted = ov.convert_model(TokenEmbeddings(transformer), example_input=dict(example))
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*WEIGHT_PATTERNS))
    (out / file).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted, str(out / file), compress_to_fp16=False)
    if not (out / "tokenizer.json").is_file():  # a folder with a slow tokenizer only: its fast twin, as the runner reads it
        model.tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    openvino_model.write_spec(out, spec)


def quantize_int8(fp32_export: Path, out: Path, file: str, texts: list[str]) -> None:
    """The int8 export of an fp32 export folder in `out`: NNCF's static quantisation of its model,
    calibrated on `texts` (as passages: the model's passage prompt in front), each tokenized as the
    runner tokenizes it."""
    import nncf
    import openvino as ov
    from tokenizers import Tokenizer

    spec = openvino_model.read_spec(fp32_export)
    if spec is None or "unsupported" in spec:
        raise openvino_model.UnsupportedExport(f"the fp32 export {fp32_export} has no runner spec")
    model = ov.Core().read_model(str(fp32_export / spec["file"]))
    inputs = {i.get_any_name() for i in model.inputs}
    # Calibration inputs as sentence-transformers' export_static_quantized_openvino_model made them for
    # the exports before (through optimum): each text padded to CALIBRATION_TOKENS (or the model's
    # positions, where fewer), in the order of a seed-42 shuffle. On MiniLM the int8 file is then
    # byte-identical to theirs; unpadded, in file order, it moved the consumer dev set's hybrid
    # NDCG@10 by -0.0012 (noise, but a change nobody chose).
    length = min(CALIBRATION_TOKENS, _positions(fp32_export) or CALIBRATION_TOKENS)
    tokenizer = Tokenizer.from_file(str(fp32_export / "tokenizer.json"))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=spec["pad_id"], pad_token=spec["pad_token"])
    prompt = spec["prompts"].get("passage", spec["prompts"].get("document", ""))

    def feed(text: str) -> dict:
        encoding = tokenizer.encode(prompt + text)
        row = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids}
        return {name: np.array([row[name]], dtype=np.int64) for name in inputs}

    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(texts))  # datasets' Dataset.shuffle(seed=42)
    samples = [feed(texts[i]) for i in order[:CALIBRATION_SAMPLES]]
    quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
    shutil.copytree(fp32_export, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("openvino", openvino_model.SPEC_FILE))
    (out / file).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / file), compress_to_fp16=False)
    openvino_model.write_spec(out, {**spec, "file": file})


def _positions(export: Path) -> int | None:
    """The model's position embeddings (its config.json's max_position_embeddings), if it says."""
    try:
        value = json.loads((export / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def calibration_texts(path: Path) -> list[str]:
    """The bundled calibration passages (one JSON object with a `text` per line)."""
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
