import math

import pytest

from medsearch.errors import MedsearchError
from medsearch.evaluation import Benchmark, ir_metrics, load_benchmark, read_qrels

from conftest import BUNDLED, write_jsonl


def test_metrics_match_hand_computed_values():
    bench = Benchmark(queries={"q1": "a", "q2": "b", "q3": "c"}, qrels={"q1": {"a", "b"}, "q2": {"c"}, "q3": {"z"}})
    runs = {
        "q1": [("x", 0.9), ("a", 0.8), ("b", 0.7)],  # two relevant, at ranks 2 and 3
        "q2": [("c", 0.9), ("y", 0.1)],  # relevant at rank 1
        "q3": [("y", 0.5)],  # relevant never found
    }
    got = ir_metrics(runs, bench)
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert got["ndcg@10"] == pytest.approx((ndcg_q1 + 1 + 0) / 3)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert got["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["recall@100"] == pytest.approx(2 / 3)


def test_recall_at_10_counts_only_the_top_10():
    bench = Benchmark(queries={"q": "t"}, qrels={"q": {"r"}})
    runs = {"q": [(f"d{i}", 1 - i / 100) for i in range(10)] + [("r", 0.5)]}
    got = ir_metrics(runs, bench)
    assert got["recall@10"] == 0 and got["recall@100"] == 1 and got["ndcg@10"] == 0


def test_load_benchmark_splits_and_judgements(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", [
        {"_id": "q1", "text": "one", "split": "test"},
        {"_id": "q2", "text": "two", "split": "train"},
        {"_id": "q3", "text": "three", "split": "test"},  # no judgement: left out
    ])
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\nq2\td3\t1\nq1\td9\t0\n")
    bench = load_benchmark(tmp_path, "test")
    assert bench.queries == {"q1": "one"} and bench.qrels == {"q1": {"d1", "d2"}}
    assert set(load_benchmark(tmp_path).queries) == {"q1", "q2"}
    with pytest.raises(MedsearchError, match=r"no queries with split 'dev' .* \(splits there: test, train\)"):
        load_benchmark(tmp_path, "dev")


def test_bad_qrels(tmp_path):
    with pytest.raises(MedsearchError, match="relevance judgements not found"):
        read_qrels(tmp_path / "qrels.tsv")
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\nq2 d2 1\n")
    with pytest.raises(MedsearchError, match=r"qrels.tsv:2: expected query-id, corpus-id, score"):
        read_qrels(tmp_path / "qrels.tsv")


def test_bundled_judgements_cover_every_query():
    bench = load_benchmark(BUNDLED)
    assert len(bench.queries) == 99
