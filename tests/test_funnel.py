"""The fast tier's funnel: the binary candidate stage, and the candidate count measured at build for
a recall target (stored in the manifest, used as the default, shown by `info`)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SMALL_DOCS

from medsearch.cli import cli
from medsearch.documents.corpus import Document
from medsearch.errors import BadInputError
from medsearch.index import checksums
from medsearch.index.backends.funnel import calibrate, candidates_for, reaches, recall_at
from medsearch.index.build import BuildOptions, build_index, write_index
from medsearch.index.folder import Index, open_index
from medsearch.index.manifest import Manifest
from medsearch.index.writes import delete, upsert
from medsearch.retrieval.search import Searcher


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors with neighbourhoods (groups around shared centres), normalised, as embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20 + 1, dim)).astype(np.float32)
    vectors = centres[np.arange(n) // 20] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Index:
    vectors = clustered(6000, 384)
    folder = tmp_path_factory.mktemp("funnel") / "idx"
    write_index(folder, vectors, np.arange(len(vectors)), {"model": {"spec": "synthetic", "name": "synthetic", "fingerprint": "x"},
                                                           "documents": len(vectors)}, BuildOptions(target_recall=0.99))
    return open_index(folder)


def stage_search(index: Index, stage: str):
    if stage == "binary":
        return lambda q, n: index.backend.binary.search(q, n)[1]
    return lambda q, n: index.backend.matrix.search(q, 64, n)[1]


def test_the_stored_count_reaches_the_target_on_a_fresh_sample(synthetic):
    fast = synthetic.manifest["fast"]
    assert fast["target_recall"] == 0.99
    assert fast["sample"] == 200
    assert fast["measured_recall"] >= 0.99
    assert fast["stage"] == "binary"
    assert set(fast["stages"]) == {"binary"}  # the prefix stage is a scan of the matrix: never cheaper than the codes
    assert fast["candidates"] == min(s["candidates"] for s in fast["stages"].values())
    vectors = np.asarray(synthetic.backend.vectors, dtype=np.float32)
    own = np.sort(np.random.default_rng(7).choice(len(vectors), size=300, replace=False))  # not the build's sample
    truth = [r[r != row][:10] for r, row in zip(synthetic.backend.matrix.search(vectors[own], 384, 11)[1], own)]
    for stage, settings in fast["stages"].items():
        got = recall_at(vectors[own], own, truth, stage_search(synthetic, stage), synthetic.backend.matrix.rows, settings["candidates"])
        assert got >= 0.985, (stage, settings, got)  # 0.99 less three standard errors of 3,000 top-10 slots


def test_fewer_candidates_miss_the_target(synthetic):
    """The count is the smallest on the grid that reaches the target: the one before it falls short."""
    fast = synthetic.manifest["fast"]
    curve = {int(c): r for c, r in fast["stages"][fast["stage"]]["curve"].items()}
    counts = sorted(curve)
    assert counts[-1] == fast["candidates"]
    slots = fast["sample"] * 10
    assert all(not reaches(curve[c], 0.99, slots) for c in counts[:-1]), "every count before the chosen one falls short"
    assert reaches(curve[counts[-1]], 0.99, slots)
    assert curve[counts[-1]] >= 0.99


def test_a_recall_reaches_the_target_only_with_confidence():
    assert not reaches(0.99, 0.99, 2000)  # at the target: as likely below it as above
    assert reaches(0.996, 0.99, 2000) and not reaches(0.996, 0.99, 200)  # the bound narrows with the slots
    assert not reaches(0.993, 0.99, 2000)
    assert reaches(1.0, 0.99, 2000) and not reaches(1.0, 0.99, 130)  # a perfect small sample is not certainty
    assert not reaches(1.0, 1.0, 10**6)


def test_default_search_uses_the_stored_count_and_the_chosen_stage(synthetic):
    searcher = Searcher(synthetic, None)
    queries = np.asarray(synthetic.backend.vectors[:50], dtype=np.float32)
    deep, _ = searcher.search_vectors(queries, tier="deep", k=10)
    default, _ = searcher.search_vectors(queries, tier="fast", k=10)
    narrow, _ = searcher.search_vectors(queries, tier="fast", k=10, oversample=1)
    overlap = lambda a, b: np.mean([len({r for r, _ in x} & {r for r, _ in y}) / 10 for x, y in zip(a, b)])  # noqa: E731
    assert overlap(default, deep) >= 0.97
    assert overlap(default, deep) > overlap(narrow, deep)
    assert candidates_for(synthetic.manifest.fast, 10, None) == synthetic.manifest["fast"]["candidates"]
    assert candidates_for(synthetic.manifest.fast, 30, None) == 3 * synthetic.manifest["fast"]["candidates"]
    assert candidates_for(synthetic.manifest.fast, 3, None) == synthetic.manifest["fast"]["candidates"]  # never fewer for small k
    assert candidates_for({}, 10, None) == 500
    assert candidates_for(synthetic.manifest.fast, 10, 7) == 70


@pytest.mark.parametrize("stage", ["prefix", "binary"])
def test_each_stage_equals_deep_when_candidates_cover_the_rows_and_keeps_filters(tmp_path, small_corpus, minilm, stage):
    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm, vector_dtype="float32")
    index = open_index(path)
    Manifest({**index.manifest, "fast": {**index.manifest["fast"], "stage": stage}}).write(index.folder)
    checksums.record(index.folder)  # as if committed with this stage (the write below checks the manifest it rewrites)
    searcher = Searcher(open_index(path), minilm)
    for text in ("burning pee", "wheeze", "tired and pale"):
        (deep,) = searcher.search([text], tier="deep", k=5)
        (fast,) = searcher.search([text], tier="fast", k=5, oversample=100)
        assert [h.id for h in fast.hits] == [h.id for h in deep.hits]
        assert np.allclose([h.score for h in fast.hits], [h.score for h in deep.hits], atol=1e-5)
    (kept,) = searcher.search(["heart failure"], tier="fast", k=5, filters=["section=cardiology"])
    assert [h.id for h in kept.hits] == ["hf-guide"]
    delete(path, ["asthma"])
    (after,) = Searcher.open(path).search(["wheeze and breathlessness"], tier="fast", k=8)
    assert "asthma" not in [h.id for h in after.hits]
    assert len(after.hits) == 7


def test_writes_measure_again_and_a_new_target_needs_no_encoding(tmp_path, small_corpus, minilm):
    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    first = open_index(path)
    before, codes_before = first.manifest["fast"], (first.folder / "binary.faiss").stat().st_size
    first.close()
    extra = [Document(id=f"n{i}", title=f"Note {i}", text=f"{d['text']} Follow-up note {i}.") for i, d in enumerate(SMALL_DOCS)]
    upsert(path, extra, minilm)
    after = open_index(path)
    assert after.manifest["fast"]["sample"] > before["sample"]  # measured again on the grown index
    assert (after.folder / "binary.faiss").stat().st_size > codes_before

    def no_model():
        raise AssertionError("a new target must not load the model")

    report = upsert(path, extra, no_model, target_recall=0.9)
    assert report.generation == after.generation + 1
    assert open_index(path).manifest["fast"]["target_recall"] == 0.9


def test_info_shows_the_target_and_bad_targets_are_refused(tmp_path, small_corpus):
    path = tmp_path / "idx"
    result = CliRunner().invoke(cli, ["index", str(small_corpus), "--index", str(path), "--target-recall", "0.95", "-q"])
    assert result.exit_code == 0, result.output
    assert "Fast tier: " in result.output
    assert ">= 0.95" in result.output
    info = json.loads(CliRunner().invoke(cli, ["info", "--index", str(path), "--json"]).output)
    assert info["target_recall"] == 0.95
    assert info["fast_candidates"] == info["fast"]["candidates"] > 0
    text = CliRunner().invoke(cli, ["info", "--index", str(path)]).output
    assert f"{info['fast_candidates']} candidates from the {info['fast_stage']} stage for recall@10 vs deep >= 0.95" in text
    result = CliRunner().invoke(cli, ["index", str(small_corpus), "--index", str(tmp_path / "x"), "--target-recall", "1.5"])
    assert result.exit_code == 2
    assert "Invalid value for '--target-recall'" in result.output
    with pytest.raises(BadInputError, match="target recall must be above 0 and at most 1; got 0"):
        write_index(tmp_path / "y", np.eye(4, dtype=np.float32), np.arange(4), {"model": {}, "documents": 4}, BuildOptions(target_recall=0))
    assert not (tmp_path / "y").exists()


def test_calibration_of_a_tiny_index_is_exact():
    vectors = clustered(40, 16)
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    settings = calibrate(vectors, deep=lambda q, n: flat.search(q, n)[1], stages={"prefix": lambda q, n: flat.search(q, n)[1]},
                         read=lambda rows: vectors[rows])
    assert settings["candidates"] == 10
    assert settings["measured_recall"] == 1.0  # the same index: exact at 10


def test_compact_gives_an_index_from_before_the_funnel_its_calibration(tmp_path, small_corpus, minilm):
    from medsearch.index.writes import compact

    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    old = open_index(path)
    (old.folder / "binary.faiss").unlink()
    (old.folder / "checksums.sha256").unlink()  # an older medsearch recorded none
    Manifest({k: v for k, v in old.manifest.items() if k != "fast"}).write(old.folder)  # as an older medsearch wrote it
    before = Searcher.open(path).search(["wheeze"], tier="deep")[0]
    assert Searcher.open(path).search(["wheeze"], tier="fast")[0].hits  # legacy: the prefix stage, 500 candidates
    report = compact(path)
    new = open_index(path)
    assert report.compacted, "compact writes a new generation"
    assert new.manifest["fast"]["target_recall"] == 0.99
    assert (new.folder / "binary.faiss").is_file()
    after = Searcher.open(path).search(["wheeze"], tier="deep")[0]
    assert [(h.id, round(h.score, 5)) for h in after.hits] == [(h.id, round(h.score, 5)) for h in before.hits]
    assert not compact(path).compacted  # nothing left to do


def test_a_dim_that_is_not_whole_bytes_keeps_the_prefix_stage(tmp_path):
    vectors = clustered(300, 100)  # faiss's binary indexes need whole bytes: 100 bits are not
    write_index(tmp_path / "idx", vectors, np.arange(300), {"model": {"spec": "s", "name": "s", "fingerprint": "x"}, "documents": 300})
    index = open_index(tmp_path / "idx")
    assert index.manifest.fast_stage == "prefix"
    assert set(index.manifest.fast["stages"]) == {"prefix"}
    assert "binary_index" not in index.manifest.fast
    assert not (index.folder / "binary.faiss").exists()
    got, _ = Searcher(index, None).search_vectors(vectors[:3], tier="fast", k=5)
    assert [hits[0][0] for hits in got] == [0, 1, 2]


def test_deleting_every_document_then_adding_again(tmp_path, small_corpus, minilm):
    from medsearch.index.writes import compact

    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    delete(path, [d["id"] for d in SMALL_DOCS])  # past the auto-compaction threshold, with nothing left to keep
    assert Searcher.open(path).search(["fever"], tier="fast")[0].hits == []
    assert not compact(path).compacted
    upsert(path, [Document(id="flu", title="Influenza", text=SMALL_DOCS[0]["text"])], minilm)
    assert [h.id for h in Searcher.open(path).search(["fever"], tier="fast")[0].hits] == ["flu"]


def test_compact_adds_the_binary_codes_an_upgraded_write_could_not(tmp_path, small_corpus, minilm):
    from medsearch.index.writes import compact

    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    old = open_index(path)
    (old.folder / "binary.faiss").unlink()
    (old.folder / "checksums.sha256").unlink()  # an older medsearch recorded none
    Manifest({k: v for k, v in old.manifest.items() if k != "fast"}).write(old.folder)
    upsert(path, [Document(id="gout", title="Gout", text="Sudden painful swelling of the big toe joint.")], minilm)
    assert set(open_index(path).manifest.fast["stages"]) == {"prefix"}  # a write measures what it has
    assert compact(path).compacted
    assert set(open_index(path).manifest.fast["stages"]) == {"binary"}
