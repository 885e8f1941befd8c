"""The FAISS backend on its own: factory types, the allowed-rows selector inside the search,
appends, exact stored vectors, save and load."""

import faiss
import numpy as np
import pytest

from medsearch.errors import BadInputError
from medsearch.index.backends.faiss import Allowed, FaissTier, binary_codes


def unit(rows, dim, seed):
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    return vectors


@pytest.mark.parametrize("kind, cls", [("flat", faiss.IndexFlat), ("hnsw", faiss.IndexHNSWFlat)])
def test_search_only_returns_allowed_rows(tmp_path, kind, cls):
    vectors, queries = unit(500, 32, 0), unit(5, 32, 1)
    tier = FaissTier.build(vectors, kind)
    assert isinstance(tier.index, cls)
    assert tier.index.ntotal == 500
    mask = np.zeros(500, dtype=bool)
    mask[::7] = True
    scores, rows = tier.search(queries, 10, Allowed(mask))
    assert (rows >= 0).all(), "every query fills its 10 slots: no -1 rows"
    assert mask[rows].all(), "only rows the mask allows come back"
    exact_scores, exact_rows = tier.rank(queries, np.flatnonzero(mask))
    np.testing.assert_array_equal(rows[:, :3], exact_rows[:, :3])  # the best allowed rows, in order
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=1e-6)
    tier.add(unit(3, 32, 2))
    assert tier.index.ntotal == 503
    np.testing.assert_array_equal(tier.vectors(np.array([0, 502])), np.vstack([vectors[0], unit(3, 32, 2)[2]]))
    tier.save(tmp_path / "t.faiss")
    again = FaissTier.load(tmp_path / "t.faiss", kind)
    np.testing.assert_array_equal(again.search(queries, 5)[1], tier.search(queries, 5)[1])


def test_unknown_kind():
    with pytest.raises(BadInputError, match="unknown index type 'ivf'"):
        FaissTier.build(unit(4, 8, 0), "ivf")


def test_binary_codes_are_sentence_transformers_ubinary():
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(3)
    for dim in (64, 384, 1000):  # 1000: the last byte is padded
        vectors = rng.standard_normal((7, dim)).astype(np.float32)
        vectors[0, :5] = 0.0  # zero is not positive
        assert np.array_equal(binary_codes(vectors), quantize_embeddings(vectors, precision="ubinary"))
