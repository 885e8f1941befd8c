import json
import math

import numpy as np
import pytest
from conftest import BUNDLED, backend_settings

from medsearch.errors import MedsearchError
from medsearch.index.backends.base import collapse
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.retrieval.hits import snippet
from medsearch.retrieval.search import Searcher


@pytest.fixture
def small_searcher(tmp_path, small_corpus, minilm, backend):
    build_index(small_corpus, tmp_path / "idx", minilm, backend=backend_settings(backend, tmp_path))
    return Searcher(open_index(tmp_path / "idx"), minilm)


def test_collapse_keeps_the_best_chunk_per_document():
    chunk_doc = np.array([0, 0, 1, 2, 1])
    rows, scores = np.array([1, 0, 4, -1, 2, 3]), np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.5])
    assert collapse(rows, scores, chunk_doc, 10) == [(1, 0.9), (4, 0.7), (3, 0.5)]
    assert collapse(rows, scores, chunk_doc, 2) == [(1, 0.9), (4, 0.7)]


def test_snippet():
    assert snippet("short  text\nhere") == "short text here"
    long = "word " * 100
    cut = snippet(long, 50)
    assert cut.endswith(" …")
    assert len(cut) <= 52
    assert not cut[:-2].endswith(" "), "no space is left before the ' …'"


def test_funnel_with_whole_corpus_as_candidates_ranks_exactly_like_deep(bundled_any, minilm):
    searcher = Searcher(open_index(bundled_any), minilm)
    ids, texts = zip(*[(json.loads(l)["_id"], json.loads(l)["text"]) for l in open(BUNDLED / "queries.jsonl")])
    vectors = minilm.encode_queries(list(texts))
    k = 10
    everything = math.ceil(searcher.index.chunks / k)
    fast, timings = searcher.search_vectors(vectors, tier="fast", k=k, oversample=everything)
    deep, _ = searcher.search_vectors(vectors, tier="deep", k=k)
    assert timings["rerank"] > 0 or searcher.index.backend_name == "qdrant"  # Qdrant re-scores in the same call
    for f, d in zip(fast, deep):
        assert [row for row, _ in f] == [row for row, _ in d]
        np.testing.assert_allclose([s for _, s in f], [s for _, s in d], atol=1e-5)


def test_default_fast_tier_finds_deeps_top_hits(bundled_any, minilm):
    searcher = Searcher(open_index(bundled_any), minilm)
    texts = [json.loads(l)["text"] for l in open(BUNDLED / "queries.jsonl")]
    fast = searcher.search(texts, tier="fast", k=10)
    deep = searcher.search(texts, tier="deep", k=10)
    overlap = [len({h.id for h in f.hits} & {h.id for h in d.hits}) / 10 for f, d in zip(fast, deep)]
    # The default candidate count is calibrated for recall@10 0.99 on held-out chunks; real questions
    # come out a little lower (0.989 here, 0.980 on MedQuAD's: docs/guides/speed.md).
    assert np.mean(overlap) >= 0.98


def test_light_and_dim_search_use_the_prefix_index(small_searcher):
    light = small_searcher.search(["fever and cough"], tier="light", k=3)[0]
    by_dim = small_searcher.search(["fever and cough"], dim=128, k=3)[0]
    assert [h.id for h in light.hits] == [h.id for h in by_dim.hits]
    # two code paths to one index: the same ranks, scores equal to float32 precision (a wrong dim
    # would move them by far more than 1e-6)
    assert [h.score for h in light.hits] == pytest.approx([h.score for h in by_dim.hits], abs=1e-6)
    assert light.hits[0].id == "flu"
    assert light.timings_ms["rerank"] == 0
    deep = small_searcher.search(["fever and cough"], tier="deep", k=3)[0]
    assert [h.score for h in light.hits] != [h.score for h in deep.hits]  # another vector: other scores


def test_long_document_appears_once_with_its_matching_chunk(small_searcher):
    for tier in ("fast", "deep"):
        hits = small_searcher.search(["weight rises by more than two kilograms in three days"], tier=tier, k=8)[0].hits
        assert [h.id for h in hits].count("hf-guide") == 1
        assert len(hits) == 8
        top = hits[0]
        assert top.id == "hf-guide"
        assert top.chunk > 0
        assert "two kilograms" in top.snippet
        assert top.metadata == {"section": "cardiology"}


def test_k_larger_than_the_corpus_returns_every_document(small_searcher):
    for tier in ("fast", "light", "deep"):
        hits = small_searcher.search(["anything"], tier=tier, k=50)[0].hits
        assert sorted(h.id for h in hits) == sorted(["flu", "t2d", "asthma", "htn", "migraine", "hf-guide", "anemia", "uti"])
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_batch_keeps_query_order_and_ids(small_searcher):
    results = small_searcher.search(["burning urine", "throbbing headache"], query_ids=["a", "b"], k=1)
    assert [(r.query_id, r.hits[0].id) for r in results] == [("a", "uti"), ("b", "migraine")]
    out = results[0].to_json()
    assert list(out) == ["query_id", "query", "results", "timings_ms"]
    assert list(out["results"][0]) == ["id", "score", "title", "snippet", "url", "source", "metadata", "found_by", "first_stage_score", "rerank_score",
                                     "citation", "span", "highlights", "quote"]
    assert set(out["timings_ms"]) == {"encode", "search", "rerank", "lexical", "fuse", "hydrate"}, "the default mode is hybrid here"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tier": "turbo"}, r"unknown tier 'turbo' \(choose from: fast, light, standard, deep\)"),
        ({"dim": 100}, r"dim 100 is not stored in .* \(stored: 64, 128, 384\)"),
        ({"k": 0}, "k must be at least 1"),
        ({"oversample": 0}, "oversample must be at least 1"),
    ],
)
def test_bad_search_arguments(small_searcher, kwargs, message):
    with pytest.raises(MedsearchError, match=message):
        small_searcher.search(["fever"], **kwargs)


def test_empty_queries_are_refused(small_searcher):
    with pytest.raises(MedsearchError, match="empty query"):
        small_searcher.search(["  "])
    with pytest.raises(MedsearchError, match=r"empty query \(query q2\)"):
        small_searcher.search(["fever", ""], query_ids=["q1", "q2"])
    with pytest.raises(MedsearchError, match="no queries given"):
        small_searcher.search([])


@pytest.mark.parametrize("damaged, tier", [("vectors.faiss", "deep"), ("binary.faiss", "fast")])
def test_a_damaged_file_is_one_line_when_a_query_reads_it(tmp_path, small_corpus, memo_minilm, damaged, tier):
    """Searcher.open loads the model on a thread while it reads the index's shared parts; the tiers
    load as queries use them, and an unreadable one is one DamagedIndexError naming it (it was a
    faiss traceback)."""
    import threading

    from click.testing import CliRunner

    from medsearch.cli import cli
    from medsearch.errors import DamagedIndexError

    build_index(small_corpus, tmp_path / "idx", memo_minilm)
    (open_index(tmp_path / "idx").folder / damaged).write_bytes(b"junk")
    searcher = Searcher.open(tmp_path / "idx")
    assert not [t for t in threading.enumerate() if t.name == "medsearch-model"]  # the model's thread has ended
    assert "matrix" not in vars(searcher.index.backend)  # the vectors are not opened before a query needs them
    with pytest.raises(DamagedIndexError, match=rf"{damaged} is unreadable \(.+\): run medsearch verify"):
        searcher.search(["wheeze"], tier=tier)
    result = CliRunner().invoke(cli, ["query", "wheeze", "--index", str(tmp_path / "idx"), "--tier", tier])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{damaged} is unreadable" in result.output.strip().splitlines()[-1]
    lexical = CliRunner().invoke(cli, ["query", "wheeze", "--index", str(tmp_path / "idx"), "--mode", "lexical"])
    assert lexical.exit_code == 0, lexical.output  # BM25 reads neither file


def test_ctrl_c_during_the_model_load_is_not_held_by_it(tmp_path, small_corpus, memo_minilm, monkeypatch):
    """An interrupt while the model loads (a first export can take a minute) ends the open at once."""
    import threading
    import time

    from medsearch.retrieval import search as search_module

    build_index(small_corpus, tmp_path / "idx", memo_minilm)
    release = threading.Event()

    def slow_encoder(*args, **kwargs):
        release.wait(30)
        raise RuntimeError("never used")

    def interrupted(self, vectors=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "index_encoder", slow_encoder)
    monkeypatch.setattr(search_module.Index, "load", interrupted)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Searcher.open(tmp_path / "idx")
    assert time.monotonic() - started < 5
    release.set()


def test_below_the_searcher_plain_options_and_filter_strings_are_checked(bundled_any, minilm):
    """search_vectors and Index.search_dense are library calls too: a dim the index does not store
    is bad input whatever the mode, and `field=value` strings filter as parsed filters do (an
    unknown field refused on either backend)."""
    from medsearch.index.filters import parse_filters

    searcher = Searcher(open_index(bundled_any), minilm)
    vectors = minilm.encode_queries(["early signs of type 2 diabetes"])
    with pytest.raises(MedsearchError, match=r"dim 7 is not stored"):
        searcher.search_vectors(vectors, mode="lexical", dim=7)
    index = searcher.current()
    as_text, _ = index.search_dense(vectors, dim=384, rerank=False, k=5, filters=["topic!=condition"])
    parsed, _ = index.search_dense(vectors, dim=384, rerank=False, k=5, filters=parse_filters(["topic!=condition"]))
    unfiltered, _ = index.search_dense(vectors, dim=384, rerank=False, k=5)
    assert as_text == parsed and as_text[0] and as_text != unfiltered
    with pytest.raises(MedsearchError, match="nope"):
        index.search_dense(vectors, dim=384, rerank=False, k=5, filters=["nope=1"])
