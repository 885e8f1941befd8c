"""Shared fixtures: the embedded MiniLM encoder, a tiny random 1024-dim model, small corpora and
an index of the bundled corpus. Everything is local: no test touches the network."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `medsearch index` picks the fastest installed runtime; tests use torch unless they name another
# (tests/test_runtimes.py), and keep OpenVINO exports in a folder of their own.
os.environ["MEDSEARCH_RUNTIME"] = "torch"
os.environ["MEDSEARCH_CACHE"] = tempfile.mkdtemp(prefix="medsearch-test-cache-")
atexit.register(shutil.rmtree, os.environ["MEDSEARCH_CACHE"], ignore_errors=True)  # exports and compiled models: GBs a run

import numpy as np  # noqa: E402

from medsearch.encoding.encoder import Encoder  # noqa: E402
from medsearch.encoding.loading import default_model_path  # noqa: E402
from medsearch.index.backends import qdrant  # noqa: E402
from medsearch.index.build import build_index  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "corpus"

LONG_TEXT = " ".join(
    f"Paragraph {i} explains routine care for chronic heart failure, including daily weights, fluid limits and medicines."
    for i in range(60)
) + " The final advice: call your care team if your weight rises by more than two kilograms in three days."


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


SMALL_DOCS = [
    {"id": "flu", "title": "Influenza", "text": "Influenza causes fever, cough, sore throat and muscle aches; a yearly vaccine lowers the risk."},
    {"id": "t2d", "title": "Type 2 diabetes", "text": "Type 2 diabetes raises blood sugar; thirst, frequent urination and tiredness are early signs."},
    {"id": "asthma", "title": "Asthma", "text": "Asthma narrows the airways, causing wheeze and breathlessness; inhalers relieve and prevent attacks."},
    {"id": "htn", "title": "High blood pressure", "text": "Hypertension rarely causes symptoms; it is found by measuring blood pressure and treated with lifestyle change and medicines."},
    {"id": "migraine", "title": "Migraine", "text": "Migraine brings throbbing one-sided headache with nausea and sensitivity to light."},
    {"id": "hf-guide", "title": "Living with heart failure", "text": LONG_TEXT, "section": "cardiology"},
    {"id": "anemia", "title": "Iron deficiency anaemia", "text": "Low iron reduces haemoglobin, causing fatigue, pale skin and shortness of breath; a blood count confirms it."},
    {"id": "uti", "title": "Urinary tract infection", "text": "Burning when passing urine and needing to go often suggest a bladder infection, usually treated with antibiotics."},
]


@pytest.fixture(scope="session")
def minilm() -> Encoder:
    return Encoder("default", device="cpu")


class MemoEncoder(Encoder):
    """The wrapped encoder, remembering each passage's vector: the backend suite builds the bundled
    corpus into many fresh indexes and encodes it once."""

    def __init__(self, encoder: Encoder):  # noqa: super not called (everything else is the wrapped one's)
        self.inner, self.memo = encoder, {}

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def encode_passages(self, texts, progress=False):
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self.memo.update(zip(missing, self.inner.encode_passages(missing)))
        return np.stack([self.memo[t] for t in texts]) if texts else np.empty((0, self.inner.dim), np.float32)


@pytest.fixture(scope="session")
def memo_minilm(minilm) -> MemoEncoder:
    return MemoEncoder(minilm)


# The shared backend suite: tests that take `backend` run once on FAISS and once on Qdrant (the
# official client's local mode, in-process).
BACKENDS = ("faiss", "qdrant")


def backend_settings(name: str, where: Path) -> dict | None:
    """The build option for a backend: None (FAISS files), or a Qdrant local-mode collection in `where`."""
    return None if name == "faiss" else qdrant.settings("test", path=where / "qdrant")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny1024_path(tmp_path_factory) -> str:
    """A random one-layer BERT with hidden size 1024 and the MiniLM tokenizer: real shapes, noise quality."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    base = tmp_path_factory.mktemp("tiny1024")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=1024, num_hidden_layers=1, num_attention_heads=8,
        intermediate_size=256, max_position_embeddings=512,  # 384+: int8 calibration pads to 384
    )
    BertModel(config).save_pretrained(base / "bert")
    tokenizer.save_pretrained(base / "bert")
    transformer = models.Transformer(str(base / "bert"), max_seq_length=128)
    pooling = models.Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(base / "model"))
    return str(base / "model")


@pytest.fixture(scope="session")
def tiny1024(tiny1024_path) -> Encoder:
    return Encoder(tiny1024_path, device="cpu")


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "small" / "docs.jsonl", SMALL_DOCS)


@pytest.fixture(scope="session")
def bundled_index(tmp_path_factory, minilm) -> Path:
    """The bundled corpus indexed once with float32 vectors (exact comparisons between tiers)."""
    path = tmp_path_factory.mktemp("bundled") / "index"
    build_index(BUNDLED, path, minilm, vector_dtype="float32")
    return path


@pytest.fixture(scope="session")
def bundled_qdrant_index(tmp_path_factory, memo_minilm) -> Path:
    """The bundled corpus in a Qdrant collection (local mode), built once; tests must not change it."""
    where = tmp_path_factory.mktemp("bundled-qdrant")
    build_index(BUNDLED, where / "index", memo_minilm, backend=backend_settings("qdrant", where))
    return where / "index"


@pytest.fixture(params=BACKENDS)
def bundled_any(request) -> Path:
    """The bundled index on each backend in turn (read-only)."""
    return request.getfixturevalue("bundled_index" if request.param == "faiss" else "bundled_qdrant_index")


@pytest.fixture(scope="session")
def cross_encoder(tmp_path_factory):
    """A cross-encoder made here, offline: the default model's transformer with a new scoring head
    (seeded). Its scores mean nothing; they only have to be the ones the stage orders by."""
    import torch
    from sentence_transformers import CrossEncoder

    from medsearch.encoding.loading import default_model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(default_model_path(), num_labels=1, device="cpu").save(str(folder))
    return str(folder)


def to_legacy_layout(index_dir: Path) -> None:
    """Rewrite the current generation of a FAISS index as the medsearch before the one stored matrix
    wrote it: vectors.npy and a flat index copy a stored dim (dim{N}.faiss), checksums recorded."""
    import faiss

    from medsearch.index import checksums, generations
    from medsearch.index.backends.faiss import Matrix

    folder = generations.current(index_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = np.asarray(Matrix.open(folder / "vectors.faiss").view)
    np.save(folder / "vectors.npy", stored)
    for dim in map(int, manifest["index_types"]):
        part = np.array(stored[:, :dim], dtype=np.float32)  # a copy: normalised in place
        faiss.normalize_L2(part)
        flat = faiss.IndexFlatIP(dim)
        flat.add(part)
        faiss.write_index(flat, str(folder / f"dim{dim}.faiss"))
    (folder / "vectors.faiss").unlink()
    manifest["faiss_factories"] = {d: "Flat" for d in manifest["index_types"]}
    (folder / "manifest.json").unlink()  # (a committed generation's files are read-only links)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "checksums.sha256").unlink()
    checksums.record(folder)
