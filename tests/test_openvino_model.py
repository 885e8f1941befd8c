"""The lean OpenVINO runner (openvino_model.py) on exports made by openvino_export.py: the same vectors
as sentence-transformers on every kind of model medsearch ships or makes (int8: close to them), no
torch/transformers/sentence-transformers in a query's, an add's or a service's process, concurrent
callers, and the recorded spec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED, LONG_TEXT, SMALL_DOCS, write_jsonl

from medsearch.documents.corpus import Document
from medsearch.encoding.encoder import Encoder
from medsearch.encoding.loading import model_folder, weights_fingerprint
from medsearch.encoding.runtimes.openvino import OPENVINO_FILES, exported_model
from medsearch.encoding.runtimes.openvino_model import SPEC_FILE
from medsearch.errors import BadInputError

pytest.importorskip("openvino", reason="the openvino extra is not installed")

TEXTS = [
    "chest pain when climbing stairs",
    "  leading and trailing spaces  ",
    "",
    "Ünïcode façade naïve 日本語 — dashes",
    "\tTabs\nand newlines\n",
    LONG_TEXT,  # past the token window: truncated the same way
    *[f"{d['title']}\n{d['text']}" for d in SMALL_DOCS],
]


def _saved(model, folder: Path) -> str:
    model.save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tuned_path(tmp_path_factory, minilm) -> str:
    """A MiniLM whose weights moved and that sentence-transformers saved again, as `train` does."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm.spec if minilm.spec != "default" else str(model_folder("default")), device="cpu")
    with torch.no_grad():
        for param in list(model.parameters())[5:9]:
            param.add_(0.01 * torch.randn_like(param))
    return _saved(model, tmp_path_factory.mktemp("tuned") / "model")


@pytest.fixture(scope="module")
def prompted1024_path(tmp_path_factory, tiny1024_path) -> str:
    """The 1024-dim test model with e5-style prompts saved in its config (and no Normalize module)."""
    folder = Path(shutil.copytree(tiny1024_path, tmp_path_factory.mktemp("prompted") / "model"))
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def cls1024_path(tmp_path_factory, tiny1024_path) -> str:
    """The 1024-dim test model with CLS pooling and a Normalize module (bge-style)."""
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(tiny1024_path, device="cpu")
    pooling = models.Pooling(base.get_embedding_dimension(), "cls")
    model = SentenceTransformer(modules=[base[0], pooling, models.Normalize()], device="cpu")
    return _saved(model, tmp_path_factory.mktemp("cls") / "model")


def _reference(spec: str, encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Query and passage vectors from sentence-transformers on torch (the model's own vectors)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_folder(spec)), device="cpu")
    encode = lambda prefix: model.encode(TEXTS, prompt=prefix or None, batch_size=4, normalize_embeddings=True)  # noqa: E731
    return encode(encoder.profile.query_prefix), encode(encoder.profile.passage_prefix)


@pytest.mark.parametrize("kind, runtime", [
    ("minilm", "openvino"), ("minilm", "openvino-int8"), ("tuned", "openvino"),
    ("prompted1024", "openvino"), ("cls1024", "openvino"),
])
def test_lean_vectors_are_sentence_transformers_vectors(kind, runtime, request):
    spec = "default" if kind == "minilm" else request.getfixturevalue(f"{kind}_path")
    encoder = Encoder(spec, runtime=runtime, batch_size=4)  # 4: batches of different padded lengths
    assert encoder.lean
    queries, passages = _reference(spec, encoder)
    for mine, theirs in ((encoder.encode_queries(TEXTS), queries), (encoder.encode_passages(TEXTS), passages)):
        assert mine.shape == theirs.shape and mine.dtype == np.float32
        cosines = np.sum(mine * theirs, axis=1)
        if runtime == "openvino":
            assert cosines.min() >= 0.9999
        else:  # int8: close, not equal (mean 0.998 on the bundled passages; the empty text, only special tokens, 0.89)
            assert np.median(cosines) >= 0.995 and np.delete(cosines, TEXTS.index("")).min() >= 0.98, cosines
        assert np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    if kind == "prompted1024":
        assert encoder.profile.query_prefix == "query: "
        assert not np.allclose(encoder.encode_queries(TEXTS[:1]), encoder.encode_passages(TEXTS[:1]))


@pytest.mark.parametrize("kind", ["minilm", "prompted1024"])
def test_lean_encoder_ties_indexes_as_sentence_transformers_does(kind, request, minilm, tiny1024):
    """dim, window and fingerprint agree with the torch encoder's, so an index opens under either."""
    spec = "default" if kind == "minilm" else request.getfixturevalue("prompted1024_path")
    torch_encoder = minilm if kind == "minilm" else Encoder(spec, device="cpu")
    lean = Encoder(spec, runtime="openvino")
    assert (lean.dim, lean.max_tokens, lean.weights, lean.fingerprint, lean.profile) == (
        torch_encoder.dim, torch_encoder.max_tokens, torch_encoder.weights, torch_encoder.fingerprint, torch_encoder.profile)
    documents = [Document(id="a", title="Heart failure", text=LONG_TEXT), Document(id="b", text="short")]
    assert lean.chunk(documents, overlap=20) == torch_encoder.chunk(documents, overlap=20)


def test_minilm_fingerprint_is_stable():
    """Indexes record this fingerprint; reading the weights with numpy instead of torch keeps it."""
    assert weights_fingerprint(model_folder("default")) == "fb9eac8a83c574b8"


def test_concurrent_callers_get_their_own_vectors():
    encoder = Encoder("default", runtime="openvino-int8", streams=2, threads=1)
    assert encoder.model.parallel >= 2
    texts = [f"{d['title']}: {d['text']}" for d in SMALL_DOCS] * 3
    expected = encoder.encode_passages(texts)
    results, errors = {}, []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                mine = texts[i:] + texts[:i]
                results[i] = encoder.encode_passages(mine)
                assert np.allclose(results[i], np.roll(expected, -i, axis=0), atol=1e-5)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 6


def test_an_export_without_a_spec_is_made_again_and_other_modules_need_torch(tmp_path, monkeypatch, tiny1024_path):
    from sentence_transformers import SentenceTransformer, models

    from medsearch.encoding.runtimes.auto import auto_runtime

    copy = _fresh_export(tmp_path)
    (copy / SPEC_FILE).unlink()  # an export made before exports carried their spec
    monkeypatch.setenv("MEDSEARCH_CACHE", str(tmp_path / "cache"))
    assert Encoder("default", runtime="openvino").lean
    assert json.loads((copy / SPEC_FILE).read_text())["pooling"] == ["mean"]

    base = SentenceTransformer(tiny1024_path, device="cpu")
    dense = models.Dense(base.get_embedding_dimension(), 32)
    path = _saved(SentenceTransformer(modules=[base[0], base[1], dense], device="cpu"), tmp_path / "dense")
    with pytest.raises(BadInputError, match=r"model '.*dense' has modules \['Transformer', 'Pooling', 'Dense'\]: use --runtime torch"):
        Encoder(path, runtime="openvino")
    assert not list((tmp_path / "cache" / "exports").glob(".tmp-*"))  # nothing half-written left
    chosen = auto_runtime(path, lambda runtime: Encoder(path, runtime=runtime), lambda: TEXTS)
    assert chosen == "torch"  # the OpenVINO runtimes are left out for this model


def test_the_compiled_model_is_cached_in_the_export():
    Encoder("default", runtime="openvino-int8")
    folder = model_folder("default")
    cache = exported_model(folder, weights_fingerprint(folder), "openvino-int8") / "openvino" / "cache"
    assert any(cache.glob("*.blob"))
    assert (cache.parent / Path(OPENVINO_FILES["openvino-int8"]).name).is_file()


HEAVY = ("torch", "transformers", "sentence_transformers", "optimum", "sklearn", "sqlite_utils")
PROBE = """
import runpy, sys
sys.argv = ["medsearch", *sys.argv[1:]]
try:
    runpy.run_module("medsearch", run_name="__main__")
except SystemExit as done:
    if done.code:
        raise
print("HEAVY", sorted(m for m in {heavy} if m in sys.modules), file=sys.stderr)
"""


def _heavy_modules(*args: str, cwd: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stderr.strip().splitlines()[-1].split(" ", 1)[1].replace("'", '"'))


def test_query_add_and_lexical_paths_import_no_torch(tmp_path):
    """Once the export exists, a query, an add, info, a lexical query and a delete load none of the
    heavy libraries (the build makes the export, and may)."""
    index = tmp_path / "index"
    subprocess.run([sys.executable, "-m", "medsearch", "index", str(BUNDLED / "corpus.jsonl"), "--index", str(index),
                    "--runtime", "openvino-int8", "-q"], check=True, capture_output=True)
    add = write_jsonl(tmp_path / "add.jsonl", [{"id": "new", "title": "Gout", "text": "Uric acid crystals inflame a joint."}])
    for args in (["query", "chest pain on stairs", "--index", str(index), "--json"],
                 ["query", "chest pain on stairs", "--index", str(index), "--mode", "lexical", "--json"],
                 ["add", str(add), "--index", str(index), "-q"],
                 ["info", "--index", str(index)],
                 ["delete", "new", "--index", str(index)]):
        assert _heavy_modules(*args, cwd=tmp_path) == [], args


def _fresh_export(tmp_path: Path, runtime: str = "openvino") -> Path:
    """A copy of MiniLM's export, with its spec, in a cache of its own (the test may damage it)."""
    Encoder("default", runtime=runtime)
    folder = model_folder("default")
    export = exported_model(folder, weights_fingerprint(folder), runtime)
    copy = tmp_path / "cache" / "exports" / export.name
    shutil.copytree(export, copy, ignore=shutil.ignore_patterns("cache"))
    return copy


def test_an_export_whose_spec_is_not_a_file_is_made_again(tmp_path, monkeypatch):
    copy = _fresh_export(tmp_path)
    (copy / SPEC_FILE).unlink()
    (copy / SPEC_FILE).mkdir()  # neither readable nor replaceable
    monkeypatch.setenv("MEDSEARCH_CACHE", str(tmp_path / "cache"))
    encoder = Encoder("default", runtime="openvino")
    assert encoder.lean and encoder.encode_queries(["fever"]).shape == (1, 384)
    assert (copy / SPEC_FILE).is_file() and not list(copy.glob(f".{SPEC_FILE}.*"))  # no temporary file left behind


DAMAGES = [
    lambda spec: spec.pop("dim"), lambda spec: spec.update(pooling=["sum"]), lambda spec: spec.update(dim="384"),
    lambda spec: spec.update(pad_id=-1), lambda spec: spec.update(prompts=["query: "]), lambda spec: spec.update(pooling=[]),
]


def test_a_spec_that_is_not_one_is_made_again(tmp_path, monkeypatch):
    from medsearch.encoding.runtimes.openvino_model import read_spec

    copy = _fresh_export(tmp_path)
    good = json.loads((copy / SPEC_FILE).read_text())
    for damage in DAMAGES:  # each is not a spec the runner can follow
        spec = dict(good)
        damage(spec)
        (copy / SPEC_FILE).write_text(json.dumps(spec))
        assert read_spec(copy) is None, spec
    monkeypatch.setenv("MEDSEARCH_CACHE", str(tmp_path / "cache"))
    assert Encoder("default", runtime="openvino").lean  # the last one: the export is made again
    assert json.loads((copy / SPEC_FILE).read_text()) == good


def test_a_spec_that_disagrees_with_its_model_is_a_damaged_export(tmp_path, monkeypatch):
    from medsearch.errors import ModelLoadError

    copy = _fresh_export(tmp_path)
    spec = json.loads((copy / SPEC_FILE).read_text())
    (copy / SPEC_FILE).write_text(json.dumps({**spec, "dim": 768}))
    monkeypatch.setenv("MEDSEARCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match=r"is damaged \(medsearch_encoder.json says 768 dims; the model gives 384"):
        Encoder("default", runtime="openvino")
