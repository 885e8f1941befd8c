import json

import numpy as np
import pytest

import medsearch.index.backends.faiss as faiss_backend
from medsearch.errors import (
    IndexFormatError,
    IndexNotFoundError,
    MedsearchError,
    ModelMismatchError,
)
from medsearch.index.backends.base import prefix
from medsearch.index.build import build_index
from medsearch.index.folder import FORMAT_VERSION, open_index, tier_dims
from medsearch.index.model_check import check_model
from medsearch.retrieval.search import Searcher


@pytest.mark.parametrize(
    "full, expected",
    [
        (384, {"fast": 64, "light": 128, "standard": 384, "deep": 384}),
        (1024, {"fast": 64, "light": 128, "standard": 512, "deep": 1024}),
        (768, {"fast": 64, "light": 128, "standard": 512, "deep": 768}),
        (100, {"fast": 64, "light": 100, "standard": 100, "deep": 100}),
    ],
)
def test_tier_dims(full, expected):
    assert tier_dims(full) == expected


def test_prefix_is_renormalised_truncate_dim_and_leaves_input_alone(minilm):
    texts = ["chest pain on exertion", "itchy red rash"]
    full = minilm.encode_passages(texts)
    before = full.copy()
    got = prefix(full[:1], 64)  # a one-row slice is contiguous: must still be copied
    np.testing.assert_array_equal(full, before)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    truncated = minilm.model.encode(texts[:1], truncate_dim=64, normalize_embeddings=True)
    np.testing.assert_allclose(got, truncated, atol=1e-5)


def test_build_384(tmp_path, small_corpus, minilm):
    manifest = build_index(small_corpus, tmp_path / "idx", minilm)
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {"CURRENT", ".lock", "gen-000001"}
    assert (tmp_path / "idx" / "CURRENT").read_text() == "gen-000001\n"
    files = {p.name for p in (tmp_path / "idx" / "gen-000001").iterdir()}
    assert files == {"manifest.json", "docs.db", "vectors.faiss", "chunk_doc.npy", "binary.faiss", "lexical", "checksums.sha256"}
    assert manifest["fast"]["binary_factory"] == "BFlat"
    assert manifest["fast"]["target_recall"] == 0.99
    assert manifest["documents"] == 8
    assert manifest["chunks"] > 8  # the long document is chunked
    assert manifest["index_types"] == {"64": "flat", "128": "flat", "384": "flat"}
    assert manifest["faiss_factories"] == {"vectors": "SQfp16", "binary": "BFlat"}
    assert manifest["dead_chunks"] == 0
    assert manifest["metadata_fields"] == ["section"]
    assert json.loads((tmp_path / "idx" / "gen-000001" / "manifest.json").read_text()) == manifest
    idx = open_index(tmp_path / "idx")
    assert idx.backend.vectors.dtype == np.float16
    assert idx.backend.vectors.shape == (manifest["chunks"], 384)
    assert not idx.backend.vectors.flags.writeable  # a read-only window on faiss's memory map of vectors.faiss
    assert idx.backend.matrix.index.ntotal == manifest["chunks"]  # the view is the faiss index's own codes
    np.testing.assert_array_equal(idx.backend.matrix.index.reconstruct(5), idx.backend.vectors[5].astype(np.float32))
    np.testing.assert_array_equal(np.bincount(idx.chunk_doc), [1, 1, 1, 1, 1, manifest["chunks"] - 7, 1, 1])


def test_build_1024_tiers(tmp_path, small_corpus, tiny1024):
    manifest = build_index(small_corpus, tmp_path / "idx", tiny1024)
    assert manifest["full_dim"] == 1024
    assert manifest["tier_dims"] == {"fast": 64, "light": 128, "standard": 512, "deep": 1024}
    idx = open_index(tmp_path / "idx")
    assert idx.dims == [64, 128, 512, 1024]
    searcher = Searcher(idx, tiny1024)
    for tier in ("fast", "light", "standard", "deep"):
        (result,) = searcher.search(["fever and cough"], tier=tier, k=3)
        assert len(result.hits) == 3


def test_other_model_is_refused(tmp_path, small_corpus, minilm, tiny1024):
    build_index(small_corpus, tmp_path / "idx", minilm)
    idx = open_index(tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match=r"was built with model 'all-MiniLM-L6-v2.*cannot be searched with that model") as caught:
        check_model(idx, tiny1024)
    assert caught.value.path == idx.path
    assert caught.value.model == tiny1024.spec
    assert "--" not in str(caught.value)  # the library names no CLI flags
    with pytest.raises(MedsearchError, match="was built with model"):
        Searcher.open(tmp_path / "idx", model=str(tiny1024.spec))


def test_same_weights_other_path_is_accepted(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    minilm.model.save(str(tmp_path / "copy"))
    searcher = Searcher.open(tmp_path / "idx", model=str(tmp_path / "copy"))
    assert searcher.encoder.fingerprint == minilm.fingerprint


def test_format_version_mismatch_is_refused(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    path = tmp_path / "idx" / "gen-000001" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=rf"index format {FORMAT_VERSION + 1}, this medsearch .* reads format {FORMAT_VERSION}$"):
        open_index(tmp_path / "idx")
    path.write_text("{not json")
    with pytest.raises(IndexFormatError, match="unreadable manifest"):
        open_index(tmp_path / "idx")
    (tmp_path / "v1").mkdir()  # format 1 kept its files in the folder itself
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(IndexFormatError, match="has index format 1, this medsearch .* reads format 2"):
        open_index(tmp_path / "v1")
    build_index(small_corpus, tmp_path / "v1", minilm)  # a rebuild replaces it
    assert open_index(tmp_path / "v1").manifest["documents"] == 8
    assert not (tmp_path / "v1" / "manifest.json").exists()


def test_missing_and_foreign_folders(tmp_path, small_corpus, minilm):
    with pytest.raises(IndexNotFoundError, match=r"^no index at .*nothing$") as caught:
        open_index(tmp_path / "nothing")
    assert caught.value.path == tmp_path / "nothing"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("keep me")
    with pytest.raises(IndexNotFoundError, match="is not a medsearch index"):
        open_index(tmp_path / "foreign")
    with pytest.raises(MedsearchError, match="exists and is not a medsearch index: choose another index folder"):
        build_index(small_corpus, tmp_path / "foreign", minilm)
    assert (tmp_path / "foreign" / "precious.txt").read_text() == "keep me"


def test_failed_rebuild_keeps_the_previous_index(tmp_path, small_corpus, minilm, monkeypatch):
    target = tmp_path / "idx"
    first = build_index(small_corpus, target, minilm)

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(faiss_backend.faiss, "write_index", crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        build_index(small_corpus, target, minilm)
    assert open_index(target).manifest == first
    assert sorted(p.name for p in target.iterdir()) == [".lock", "CURRENT", "gen-000001"]  # no temporary left behind
    hits = Searcher(open_index(target), minilm).search(["bladder infection"], k=1)[0].hits
    assert hits[0].id == "uti"


def test_leftovers_of_a_killed_build_are_ignored_and_cleared(tmp_path, small_corpus, minilm):
    stale = tmp_path / "idx" / ".tmp-123"
    stale.mkdir(parents=True)
    (stale / "docs.db").write_text("half written")
    with pytest.raises(MedsearchError, match="is not a medsearch index"):
        open_index(tmp_path / "idx")
    build_index(small_corpus, tmp_path / "idx", minilm)
    assert not stale.exists()
    assert open_index(tmp_path / "idx").manifest["documents"] == 8


def test_rebuild_replaces_the_index(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    smaller = tmp_path / "one.jsonl"
    smaller.write_text('{"id": "only", "text": "a single document about gout"}\n')
    manifest = build_index(smaller, tmp_path / "idx", minilm)
    assert manifest["documents"] == 1
    assert open_index(tmp_path / "idx").manifest["documents"] == 1
    assert open_index(tmp_path / "idx").generation == 2


def test_bad_vector_dtype(tmp_path, small_corpus, minilm):
    with pytest.raises(MedsearchError, match="vector dtype must be one of float16, float32; got 'int8'"):
        build_index(small_corpus, tmp_path / "idx", minilm, vector_dtype="int8")
