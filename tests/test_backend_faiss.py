"""The FAISS backend on its own: the one stored matrix (every dim an exact view, the allowed-rows
selector inside the search, appends, the codes where numpy reads them) and the sign codes."""

import faiss
import numpy as np
import pytest

from medsearch.index.backends.faiss import Allowed, Matrix, binary_codes, decode, write_matrix


def unit(rows, dim, seed):
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def exact(queries, vectors, dim, rows):
    """The exact top rows of `rows` at `dim` (prefixes renormalised; full rows as stored), by a plain
    numpy product."""
    q = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
    x = vectors[rows, :dim]
    x = x / np.linalg.norm(x, axis=1, keepdims=True) if dim < vectors.shape[1] else x
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), rows[order]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("dim", [8, 32])  # a prefix, the full dim
def test_the_matrix_answers_every_dim_exactly_among_allowed_rows(tmp_path, monkeypatch, dtype, dim):
    monkeypatch.setattr("medsearch.index.backends.faiss.BLOCK_ROWS", 64)  # several blocks and a short last one
    vectors, queries = unit(500, 32, 0), unit(5, 32, 1)
    write_matrix(tmp_path / "m.faiss", vectors, dtype)
    matrix = Matrix.open(tmp_path / "m.faiss")
    assert len(matrix) == 500 and matrix.view.dtype == dtype and not matrix.view.flags.writeable
    stored = vectors.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(matrix.rows(np.array([3, 499])), stored[[3, 499]])
    mask = np.zeros(500, dtype=bool)
    mask[::7] = True
    scores, rows = matrix.search(queries, dim, 10, Allowed(mask))
    assert mask[rows].all(), "only rows the mask allows come back"
    want_scores, want_rows = exact(queries, stored, dim, np.flatnonzero(mask))
    np.testing.assert_array_equal(rows[:, :3], want_rows[:, :3])  # the best allowed rows, in order
    np.testing.assert_allclose(scores, want_scores[:, :10], atol=1e-5)
    scores, rows = matrix.search(queries, dim, 600)  # more than there are rows: every row, then -1
    assert (rows[:, :500] >= 0).all() and (rows[:, 500:] == -1).all()
    np.testing.assert_array_equal(np.sort(rows[0, :500]), np.arange(500))


def test_a_matrix_grows_from_a_base_and_keeps_its_rows(tmp_path):
    first, more = unit(70, 16, 0), unit(5, 16, 1)
    write_matrix(tmp_path / "a.faiss", first, "float16")
    write_matrix(tmp_path / "b.faiss", more, "float16", base=Matrix.open(tmp_path / "a.faiss"))
    grown = Matrix.open(tmp_path / "b.faiss")
    np.testing.assert_array_equal(grown.view, np.vstack([first, more]).astype(np.float16))
    assert grown.index.ntotal == 75


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_streamed_matrix_is_the_file_faiss_writes(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr("medsearch.index.backends.faiss.BLOCK_ROWS", 16)
    vectors = unit(50, 24, 0)
    write_matrix(tmp_path / "m.faiss", vectors, dtype)
    index = faiss.index_factory(24, {"float16": "SQfp16", "float32": "Flat"}[dtype], faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "f.faiss"))
    assert (tmp_path / "m.faiss").read_bytes() == (tmp_path / "f.faiss").read_bytes()


def test_the_view_keeps_the_memory_map_it_reads_alive(tmp_path):
    """numpy reads faiss's own mapping of the file (one mapping: each page resident once); a view
    outliving its Matrix must keep that mapping, not read freed memory."""
    import gc

    vectors = unit(300, 16, 0)
    write_matrix(tmp_path / "m.faiss", vectors, "float16")
    view = Matrix.open(tmp_path / "m.faiss").view
    gc.collect()
    np.testing.assert_array_equal(view, vectors.astype(np.float16))
    maps = [line for line in open("/proc/self/maps") if line.rstrip().endswith("m.faiss")]
    assert len(maps) == 1, maps


def test_a_matrix_of_another_kind_is_refused(tmp_path):
    index = faiss.index_factory(16, "SQ8", faiss.METRIC_INNER_PRODUCT)  # one byte a dim: not float16 rows
    index.train(unit(50, 16, 0))
    index.add(unit(50, 16, 0))
    faiss.write_index(index, str(tmp_path / "m.faiss"))
    with pytest.raises(ValueError, match="not 16 dims of float16"):
        Matrix.open(tmp_path / "m.faiss")


def test_decode_is_numpys_conversion():
    stored = unit(9, 40, 2).astype(np.float16)
    np.testing.assert_array_equal(decode(stored), stored.astype(np.float32))
    assert decode(stored[:0]).shape == (0, 40)


def test_binary_codes_are_sentence_transformers_ubinary():
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(3)
    for dim in (64, 384, 1000):  # 1000: the last byte is padded
        vectors = rng.standard_normal((7, dim)).astype(np.float32)
        vectors[0, :5] = 0.0  # zero is not positive
        assert np.array_equal(binary_codes(vectors), quantize_embeddings(vectors, precision="ubinary"))
