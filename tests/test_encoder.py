import numpy as np
import pytest

from medsearch.encoding.encoder import Encoder, ModelProfile, profile_for
from medsearch.encoding.loading import select_device
from medsearch.errors import MedsearchError


@pytest.mark.parametrize(
    "spec, prompts, expected",
    [
        ("intfloat/multilingual-e5-large", None, ModelProfile("query: ", "passage: ")),
        ("/models/E5-base-v2", None, ModelProfile("query: ", "passage: ")),
        ("sentence-transformers/all-MiniLM-L6-v2", None, ModelProfile()),
        ("anything", {"query": "Q: ", "document": "D: "}, ModelProfile("Q: ", "D: ")),
        ("my-e5", {"query": "search: "}, ModelProfile("search: ", "")),
    ],
)
def test_profiles(spec, prompts, expected):
    assert profile_for(spec, prompts) == expected


def test_default_model_loads_offline_and_normalises(minilm):
    assert minilm.dim == 384
    assert minilm.max_tokens == 256
    vectors = minilm.encode_passages(["Asthma narrows the airways.", "Statins lower cholesterol."])
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_e5_prefixes_reach_the_model(minilm):
    e5 = Encoder("my-e5-copy", model=minilm.model)
    assert e5.profile == ModelProfile("query: ", "passage: ")
    np.testing.assert_allclose(e5.encode_queries(["gout"]), minilm.encode_queries(["query: gout"]), atol=1e-6)
    np.testing.assert_allclose(e5.encode_passages(["gout"]), minilm.encode_passages(["passage: gout"]), atol=1e-6)


def test_fingerprint_tells_models_apart(minilm, tiny1024):
    assert minilm.fingerprint == Encoder("default", device="cpu").fingerprint
    assert minilm.fingerprint != tiny1024.fingerprint
    assert tiny1024.dim == 1024


def test_missing_model_folder(tmp_path):
    with pytest.raises(MedsearchError, match="model folder not found"):
        Encoder(str(tmp_path / "no-model"))
    (tmp_path / "broken").mkdir()
    with pytest.raises(MedsearchError, match="cannot load model"):
        Encoder(str(tmp_path / "broken"))


def test_select_device():
    assert select_device("cpu") == "cpu"
    assert select_device(None) in {"cpu", "cuda", "mps"}
