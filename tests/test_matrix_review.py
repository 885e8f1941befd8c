"""What a hostile review of the one-stored-matrix FAISS layout found (each docstring says what was
wrong before its fix): memory on the exhaustive path, scores that depended on the path, missing
files named as themselves, the calibration's confidence bound, a helper writing into the mapping."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import to_legacy_layout
from medsearch.errors import MedsearchError
from medsearch.index.backends import faiss as faiss_backend
from medsearch.index.backends.funnel import reaches
from medsearch.index.build import BuildOptions, build_index, write_index
from medsearch.index.folder import open_index
from medsearch.index.integrity import verify

SYNTHETIC = {"model": {"spec": "synthetic", "name": "synthetic", "fingerprint": "synthetic"}}


def synthetic_index(folder: Path, n: int, dim: int, chunk_doc: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_index(folder, vectors, chunk_doc, {**SYNTHETIC, "documents": int(chunk_doc.max()) + 1}, BuildOptions())
    return vectors


def test_exhaustive_ranking_does_not_copy_the_matrix_into_memory(tmp_path, monkeypatch):
    """FaissBackend._exhaustive (faiss.py, `stored = self.matrix.rows(rows, dim)`) decodes EVERY
    allowed row to float32 in one array (and np.ascontiguousarray copies the float16 rows first):
    about 3x the stored matrix in RAM on a query path. It runs whenever a search with an allowed-rows
    mask (any filter, or any dead row) widens until it covers every allowed row, e.g. k larger than
    the documents that match (long documents with many chunks). The module promises that "an index
    larger than RAM still answers"; Matrix.search's blockwise scan keeps to one block, this does
    not (and the fast tier's variant decodes all rows once per query)."""
    n, dim = 20_000, 384
    vectors = synthetic_index(tmp_path / "index", n, dim, np.zeros(n, dtype=np.int32))  # one long document
    backend = open_index(tmp_path / "index").backend
    backend.load()
    monkeypatch.setattr(faiss_backend, "BLOCK_ROWS", 1024)
    stored_bytes = n * dim * 2
    allowed = np.arange(n) != 7  # a dead row (or a filter): the search gets a mask
    tracemalloc.start()
    try:
        hits, _ = backend.search(vectors[:1].copy(), dim=dim, rerank=False, k=5, candidates=10, allowed=allowed,
                                 filters=[], chunk_doc=np.zeros(n, dtype=np.int32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hits[0] and hits[0][0][0] == 0
    assert peak < stored_bytes, f"a query held {peak / 1e6:.1f} MB for a {stored_bytes / 1e6:.1f} MB matrix"


def test_full_dim_scores_do_not_depend_on_the_path(tmp_path):
    """At the full dim, faiss's scan of vectors.faiss scores a row by its float16 codes as stored
    (unit norm only up to float16 rounding), but FaissBackend._exhaustive renormalises the decoded
    rows (`faiss.normalize_L2(stored)`) before scoring. So one query on one row gets a different
    score (and near-ties a different order: seen on the bundled corpus, deep tier, a filter that
    allows every row) depending on whether the search went through faiss or the exhaustive path
    (a filter or dead rows, and candidates covering every allowed row). The layout before made both
    paths give "the scores a search would give"; `--tier deep` with and without `topic!=x` now differ."""
    n, dim = 400, 64
    vectors = synthetic_index(tmp_path / "index", n, dim, np.arange(n, dtype=np.int32))
    backend = open_index(tmp_path / "index").backend
    rng = np.random.default_rng(1)
    queries = vectors[:4] + 0.3 * rng.standard_normal((4, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    common = dict(dim=dim, rerank=False, k=50, candidates=n, filters=[], chunk_doc=np.arange(n, dtype=np.int32))
    by_faiss, _ = backend.search(queries, allowed=None, **common)
    exhaustive, _ = backend.search(queries, allowed=np.ones(n, dtype=bool), **common)
    for a, b in zip(by_faiss, exhaustive):
        assert [row for row, *_ in a] == [row for row, *_ in b]
        np.testing.assert_allclose([s for _, s, *_ in a], [s for _, s, *_ in b], rtol=0, atol=1e-6)


def test_missing_binary_codes_are_one_error_line_on_the_fast_tier(tmp_path, small_corpus, minilm):
    """A generation whose manifest says the fast stage is `binary` but whose binary.faiss is gone:
    FaissBackend.load() raises the DamagedIndexError line, but a one-query process (medsearch query,
    Index.load(vectors=False)) never calls it, and FaissBackend._ranked calls `self.binary.search`
    on None: `medsearch query X --tier fast` ends in an AttributeError traceback."""
    path = tmp_path / "index"
    build_index(small_corpus, path, minilm)
    index = open_index(path)
    if index.manifest.fast_stage != "binary":
        pytest.skip("the calibration chose the prefix stage")
    (index.folder / "binary.faiss").unlink()
    query = minilm.encode_queries(["wheeze"])
    with pytest.raises(MedsearchError, match="binary.faiss"):
        open_index(path).search_dense(query, dim=index.manifest.tier_dims["fast"], rerank=True, k=3)


def test_legacy_generation_without_its_vectors_names_the_right_file(tmp_path, small_corpus, minilm):
    """A generation of the layout before that lost its vectors.npy is no longer recognised as one
    (FaissBackend.legacy needs vectors.npy to exist), so verify reports a second, phantom problem
    about vectors.faiss (a file that generation never had), and a query says "vectors.faiss is
    unreadable" instead of naming vectors.npy; `medsearch delete` on it prints a bare
    "[Errno 2] No such file or directory: .../vectors.faiss"."""
    path = tmp_path / "index"
    build_index(small_corpus, path, minilm)
    to_legacy_layout(path)
    folder = open_index(path).folder
    (folder / "vectors.npy").unlink()
    problems = verify(path).problems
    assert any("vectors.npy" in p for p in problems)
    assert not any("vectors.faiss" in p for p in problems), problems
    with pytest.raises(MedsearchError) as err:
        open_index(path).search_dense(minilm.encode_queries(["wheeze"]), dim=128, rerank=False, k=3)
    assert "vectors.npy" in str(err.value)


def test_a_perfect_small_sample_is_not_95_percent_confidence():
    """funnel.reaches uses the normal-approximation (Wald) bound, whose width is 0 at a measured
    recall of 1.0: 13 held-out chunks x 10 slots all found (the small-corpus build prints "measured
    1.000 on 13 held-out chunks") "reach" 0.99 with "95% confidence", but the exact one-sided 95%
    lower bound for 130/130 is 0.05 ** (1 / 130) = 0.977. A Wilson or Clopper-Pearson bound keeps
    the promise at the edges (where the Wald bound is known to fail)."""
    assert 0.05 ** (1 / 130) < 0.99
    assert not reaches(1.0, 0.99, 130)


def test_legacy_helper_converts_a_float32_index(tmp_path):
    """tests/conftest.py's to_legacy_layout kills the process (SIGSEGV) on a float32 index: for the
    full dim, `np.ascontiguousarray(stored[:, :dim], dtype=np.float32)` is the view itself (already
    contiguous float32), and faiss.normalize_L2 writes into it, i.e. into vectors.faiss's read-only
    mapping (faiss's swig_ptr ignores numpy's writeable flag). Run in a child process so the crash
    is a failure, not the end of the test run. (The same trap waits for any code that hands a slice
    of Matrix.view to an in-place faiss call.)"""
    import subprocess
    import sys

    script = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from pathlib import Path
from conftest import to_legacy_layout
from medsearch.index.build import BuildOptions, write_index
rng = np.random.default_rng(0)
v = rng.standard_normal((50, 128), dtype=np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
path = Path({str(tmp_path / "index")!r})
write_index(path, v, np.arange(50, dtype=np.int32), {{"model": {{"spec": "s", "name": "s", "fingerprint": "s"}}, "documents": 50}},
            BuildOptions(vector_dtype="float32"))
to_legacy_layout(path)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
