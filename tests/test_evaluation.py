import math

import pytest
from conftest import BUNDLED, write_jsonl

from medsearch.errors import MedsearchError
from medsearch.training.evaluation import (
    Benchmark,
    ir_metrics,
    load_benchmark,
    read_qrels,
)


def test_metrics_match_hand_computed_values():
    bench = Benchmark(queries={"q1": "a", "q2": "b", "q3": "c"}, qrels={"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}})
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
    bench = Benchmark(queries={"q": "t"}, qrels={"q": {"r": 1}})
    runs = {"q": [(f"d{i}", 1 - i / 100) for i in range(10)] + [("r", 0.5)]}
    got = ir_metrics(runs, bench)
    assert got["recall@10"] == 0
    assert got["recall@100"] == 1
    assert got["ndcg@10"] == 0


def test_graded_ndcg_matches_hand_computed_values():
    """Gains are the grades (trec_eval's NDCG, as BEIR reports it); the ideal order sorts by grade."""
    bench = Benchmark(queries={"q1": "a", "q2": "b"}, qrels={"q1": {"a": 2, "b": 1, "c": 3}, "q2": {"d": 1}})
    runs = {"q1": [("b", 0.9), ("x", 0.8), ("a", 0.7)], "q2": [("x", 0.9), ("d", 0.5)]}
    dcg = 1 / math.log2(2) + 2 / math.log2(4)  # b (grade 1) at rank 1, a (grade 2) at rank 3
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # c, a, b
    q2 = (1 / math.log2(3)) / 1
    got = ir_metrics(runs, bench)
    assert got["ndcg@10"] == pytest.approx((dcg / ideal + q2) / 2)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["recall@10"] == pytest.approx((2 / 3 + 1) / 2)


def test_our_order_is_kept_when_scores_tie():
    """trec_eval sorts a run by score and breaks ties by document id; the run's own order must win."""
    bench = Benchmark(queries={"q": "t"}, qrels={"q": {"a": 1}})
    got = ir_metrics({"q": [("z", 0.5), ("a", 0.5)]}, bench)
    assert got["mrr@10"] == pytest.approx(1 / 2)


def test_mrr_at_10_ignores_hits_below_rank_10():
    bench = Benchmark(queries={"q": "t"}, qrels={"q": {"r": 1}})
    got = ir_metrics({"q": [(f"d{i}", 1.0) for i in range(10)] + [("r", 0.1)]}, bench)
    assert got["mrr@10"] == 0
    assert got["recall@100"] == 1


def test_load_benchmark_splits_and_judgements(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", [
        {"_id": "q1", "text": "one", "split": "test"},
        {"_id": "q2", "text": "two", "split": "train"},
        {"_id": "q3", "text": "three", "split": "test"},  # no judgement: left out
    ])
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td3\t1\nq1\td9\t0\n")
    bench = load_benchmark(tmp_path, "test")
    assert bench.queries == {"q1": "one"}
    assert bench.qrels == {"q1": {"d1": 1, "d2": 2}}
    assert set(load_benchmark(tmp_path).queries) == {"q1", "q2"}
    with pytest.raises(MedsearchError, match=r"no queries with split 'dev' .* \(splits there: test, train\)"):
        load_benchmark(tmp_path, "dev")


def test_bad_qrels(tmp_path):
    with pytest.raises(MedsearchError, match="relevance judgements not found"):
        read_qrels(tmp_path / "qrels.tsv")
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\nq2 d2 1\n")
    with pytest.raises(MedsearchError, match=r"qrels.tsv:2: expected query-id, corpus-id, score"):
        read_qrels(tmp_path / "qrels.tsv")
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\nq2\td2\thigh\n")
    with pytest.raises(MedsearchError, match=r"qrels.tsv:2: the score must be an integer; got 'high'"):
        read_qrels(tmp_path / "qrels.tsv")


def test_mean_cosine_flags_a_collapsed_space():
    import numpy as np

    from medsearch.training.evaluation import mean_cosine

    rng = np.random.default_rng(0)
    spread = rng.standard_normal((500, 32)).astype(np.float32)
    collapsed = spread * 0.05 + np.ones(32, dtype=np.float32)  # every vector near one direction
    healthy, bad = mean_cosine(spread, [32, 8], sample=200), mean_cosine(collapsed, [32, 8], sample=200)
    assert set(healthy) == {"32", "8"}
    assert abs(healthy["32"]) < 0.05
    assert bad["32"] > 0.9
    assert bad["8"] > 0.9


def test_bundled_judgements_cover_every_query():
    bench = load_benchmark(BUNDLED)
    assert len(bench.queries) == 99


def test_evaluate_models_on_the_bundled_corpus(tmp_path):
    from medsearch.training.evaluation import evaluate_models

    report = evaluate_models(BUNDLED, ["default", "default"], split=None, cache=tmp_path / "cache")
    assert report.queries == 99
    assert report.documents == 187
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the corpus was encoded once for the same model
    comparison = report.comparison()
    assert [c["row"] for c in comparison] == ["384", "256", "128", "64", "fast", "lexical", "hybrid", "hybrid-fast"]
    assert all(c["improvement"] == 0 for c in comparison)
    full = report.ndcg("default", "384")
    assert 0.5 < full <= 1
    assert report.ndcg("default", "64") < full
    # the bundled questions paraphrase their documents: hybrid beats both of its lists there
    assert report.ndcg("default", "hybrid") > max(full, report.ndcg("default", "lexical"))
    markdown = report.to_markdown()
    assert "| row | Initial | Final | Improvement |" in markdown
    assert "| Initial | lexical |" in markdown
    cosines = report.models[0]["mean_cosine"]
    assert set(cosines) == {"384", "256", "128", "64"}
    assert 0 < cosines["384"] < 0.5  # MiniLM is not collapsed
    assert "Initial: mean cosine between random chunks" in markdown


def test_eval_cli_writes_json_and_markdown(tmp_path):
    import json

    from click.testing import CliRunner

    from medsearch.cli import cli

    result = CliRunner().invoke(cli, [
        "eval", str(BUNDLED), "--split", "", "--cache", str(tmp_path / "c"), "--json", str(tmp_path / "r.json"),
        "--markdown", str(tmp_path / "r.md"), "--mode", "lexical", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "NDCG@10" in result.output
    assert "lexical" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries"] == 99
    assert [r["row"] for r in report["rows"]] == ["lexical"]
    assert report["modes"] == ["lexical"]
    assert report["fusion"] == {}, "no fusion flag: each model's own"
    assert report["models"][0]["fusion"] == {"method": "convex", "rrf_k": 60, "weight": 0.7, "depth": 50}
    assert (tmp_path / "r.md").read_text().startswith("NDCG@10 on 99 queries")
    for args, pattern in [
        (["eval", str(tmp_path / "nope")], "queries file not found"),
        (["eval", str(BUNDLED), "--split", "dev"], "no queries with split 'dev'"),
        (["eval", str(BUNDLED), "--model", "a", "--model", "b", "--model", "c"], "give one or two --model"),
        (["eval", str(BUNDLED), "--mode", "dense,semantic"], "unknown mode 'semantic'"),
    ]:
        out = CliRunner().invoke(cli, args)
        assert out.exit_code != 0, out.output
        assert out.output.strip().count("\n") == 0, out.output
        assert pattern in out.output, out.output
