"""Smoke tests: each bench/ script runs on a tiny size, so the benchmarks cannot rot."""

import json
import subprocess
import sys

import pytest
from conftest import BUNDLED, REPO


def run_script(name, *args, cwd):
    out = subprocess.run([sys.executable, str(REPO / "bench" / name), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quality_bench(tmp_path, bundled_index):
    stdout = run_script(
        "quality.py", "--data", BUNDLED, "--split", "", "--index", bundled_index, "--oversample", "1,5",
        "--max-queries", "8", "--name", "smoke", "--out", tmp_path, cwd=tmp_path,
    )
    assert "fast x5" in stdout
    assert "recall@10_vs_deep" in stdout
    result = json.loads((tmp_path / "smoke.json").read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert rows["deep"]["recall@10_vs_deep"] == 1.0
    assert rows["deep"]["ndcg_vs_deep"] == 1.0
    assert set(rows) == {"deep", "standard", "light", "fast default", "fast x1", "fast x5", "dim 64", "dim 128", "dim 384"}
    manifest = result["manifest"]["fast"]
    assert rows["fast default"]["candidates"] == manifest["candidates"]
    assert rows["fast default"]["stage"] == manifest["stage"]
    assert result["queries"] == 8
    assert result["machine"]["cpus"] >= 1


def test_latency_bench(tmp_path, bundled_index):
    queries = tmp_path / "q.txt"
    queries.write_text("fever and cough\nchest pain\n")
    stdout = run_script(
        "latency.py", "--index", bundled_index, "--queries", queries, "--repeat", "1", "--name", "lat", "--out", tmp_path,
        cwd=tmp_path,
    )
    rows = json.loads((tmp_path / "lat.json").read_text())["rows"]
    assert [r["tier"] for r in rows] == ["fast", "light", "standard", "deep"]
    assert "search_p50_ms" in stdout
    assert all(r["queries"] == 2 for r in rows), "every tier ran both queries"
    assert all(r["p50_ms"] >= r["search_p50_ms"] > 0 for r in rows), "every tier's p50_ms >= its search_p50_ms > 0"


def test_calibration_bench(tmp_path, bundled_index):
    run_script(
        "synthetic.py", "--index", bundled_index, "--data", BUNDLED, "--split", "", "--queries", "12", "--dims", "256",
        "--name", "cal", "--out", tmp_path, cwd=tmp_path,
    )
    calibration = json.loads((tmp_path / "cal.json").read_text())
    fit = calibration["fits"]["256"]
    assert len(calibration["real_curve"]) == len(fit["curve"]) == len(calibration["oversamples"])
    assert fit["max_gap"] == min(t["max_gap"] for t in calibration["trials"]["256"])



def test_medquad_pairs_rewrites_templates(tmp_path):
    import random

    sys.path.insert(0, str(REPO / "bench"))
    from medquad_pairs import rewrite

    rng = random.Random(0)
    assert rewrite("What are the symptoms of Gout ?", rng) in {"Gout symptoms", "signs of Gout", "how do i know if i have Gout", "what does Gout feel like"}
    assert rewrite("Who is at risk for Stroke? ?", rng) in {"Stroke risk factors", "who gets Stroke", "am i at risk of Stroke"}
    assert rewrite("my knee hurts when I run", rng) == "my knee hurts when I run"
    source = tmp_path / "p.jsonl"
    source.write_text("".join(json.dumps({"anchor": f"What causes X{i} ?", "positive": "p"}) + "\n" for i in range(20)))
    out = run_script("medquad_pairs.py", source, tmp_path / "o.jsonl", "--fraction", "1", cwd=tmp_path)
    assert "rewrote 20 of 20 anchors" in out
    assert all("What causes" not in json.loads(l)["anchor"] for l in open(tmp_path / "o.jsonl"))


def write_medquad_like(folder):
    """Two train-split conditions (a phenotype list and prose symptoms) and one test-split condition."""
    hpo = ("What are the signs and symptoms of Foo syndrome? The Human Phenotype Ontology provides the following list. "
           "Signs and Symptoms Approximate number of patients (when available) Ataxia 90% - Cataract - Seizures - "
           "Autosomal recessive inheritance - Short stature - The Human Phenotype Ontology (HPO) has collected information.")
    prose = ("What are the symptoms of Bar disease? Bar disease is rare. Most people with this condition experience "
             "painful swelling of the knees and a fever that comes and goes. Bar disease can be treated.")
    docs = {"d1": hpo, "d2": "Foo syndrome is a rare condition.", "d3": prose, "d4": "Bar disease is an illness.",
            "d5": "What are the symptoms of Baz? People with it may experience a rash on the hands and feet.", "d6": "Baz is bad."}
    queries = [("q1", "Foo syndrome", "symptoms", "train", "d1"), ("q2", "Foo syndrome", "information", "train", "d2"),
               ("q3", "Bar disease", "symptoms", "train", "d3"), ("q4", "Bar disease", "information", "train", "d4"),
               ("q5", "Baz", "symptoms", "test", "d5"), ("q6", "Baz", "information", "test", "d6")]
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": f"{t} of {f}", "focus": f, "qtype": t, "split": s}) + "\n" for q, f, t, s, _ in queries))
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, *_, d in queries))


def test_symptom_pairs_describe_train_conditions_without_naming_them(tmp_path):
    import random

    sys.path.insert(0, str(REPO / "bench"))
    from medquad_pairs import symptom_pairs

    write_medquad_like(tmp_path / "mq")
    pairs = {p["positive"]: p["anchor"] for p in symptom_pairs(tmp_path / "mq", random.Random(0))}
    assert set(pairs) == {"Foo syndrome is a rare condition.", "Bar disease is an illness."}  # never the test split
    terms = set(pairs["Foo syndrome is a rare condition."].replace(" and ", ", ").split(", "))
    assert terms <= {"ataxia", "cataract", "seizures", "short stature"}  # no frequencies, no inheritance
    assert len(terms) >= 3
    assert pairs["Bar disease is an illness."] == "most people with this condition experience painful swelling of the knees and a fever that comes and goes"


def test_query_tilt_controls_funnel_difficulty(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from synthetic import generate, queries_for, recall_curve, synthetic_searcher

    docs = generate(2000, 128, alpha=1.25)
    searcher = synthetic_searcher(docs, tmp_path / "idx", vector_dtype="float32")
    easy = recall_curve(searcher, queries_for(docs, 200, 1.25, tilt=-0.5, tilt_spread=0.1), oversamples=(1, 4))
    hard = recall_curve(searcher, queries_for(docs, 200, 1.25, tilt=1.0, tilt_spread=0.1), oversamples=(1, 4))
    assert hard[0] < easy[0] - 0.1
    assert hard[1] < easy[1]  # weight in the trailing dims hides neighbours from the 64-dim prefix
    assert easy[0] < easy[1] <= 1.0


def test_hybrid_bench_picks_a_setting(tmp_path):
    stdout = run_script(
        "hybrid.py", "--data", f"{BUNDLED}:", "--rrf-k", "60", "--weights", "0.5", "--depths", "20", "--tiers", "deep",
        "--cache", tmp_path / "cache", "--name", "smoke", "--out", tmp_path, cwd=tmp_path,
    )
    result = json.loads((tmp_path / "hybrid-smoke.json").read_text())
    settings = [r["setting"] for r in result["rows"]]
    assert settings == ["dense", "lexical", "rrf k=60 depth=20", "convex w=0.5 depth=20"]
    assert result["chosen"] in settings
    assert f"chosen: {result['chosen']}" in stdout
    dense = result["rows"][0]["ndcg@10"]
    assert all(0 < r["ndcg@10"] <= 1 for r in result["rows"]), "every row's ndcg@10 is in (0, 1]"
    assert 0.8 < dense < 1


def test_lexical_bench(tmp_path):
    stdout = run_script("lexical.py", "--data", BUNDLED, "--split", "", "--name", "lex", "--out", tmp_path, cwd=tmp_path)
    rows = {r["method"]: r for r in json.loads((tmp_path / "lex.json").read_text())["rows"]}
    assert len(rows) == 4
    assert "p50_ms" in stdout
    stemmed, plain = rows["bm25s, title + chunk, Snowball stemming"], rows["bm25s, title + chunk, no stemming"]
    assert stemmed["ndcg@10"] > plain["ndcg@10"]  # "headaches" meets "headache"
    assert all(0.5 < r["ndcg@10"] <= 1 for r in rows.values()), "every method's ndcg@10 is in (0.5, 1]"
    assert all(r["p50_ms"] > 0 for r in rows.values()), "every method reports a latency"


def test_funnel_bench_marks_the_calibrated_default(tmp_path):
    run_script("funnel.py", "--sizes", "3000", "--queries", "40", "--timed", "5", "--name", "f", "--out", tmp_path, cwd=tmp_path)
    result = json.loads((tmp_path / "f.json").read_text())
    defaults = [r for r in result["rows"] if r["default"] and r["tier"] == "fast"]
    calibration = result["calibrations"]["synthetic 3000"]
    assert len(defaults) == 1
    assert defaults[0]["candidates"] == calibration["candidates"]
    assert defaults[0]["stage"] == calibration["stage"]
    assert {"size", "tier", "default", "recall_vs_deep", "speedup_vs_deep", "bytes_per_vector"} <= set(defaults[0])
    assert {r["stage"] for r in result["rows"] if r["tier"] == "fast"} == {"binary"}
    assert (tmp_path / "f.png").stat().st_size > 0


def test_growth_bench_measures_every_tier_at_each_point_in_its_own_process(tmp_path):
    stdout = run_script("growth.py", "--points", "3000x384,2000x1024", "--queries", "20", "--timed", "3", "--slow-timed", "2",
                        "--name", "g", "--out", tmp_path, cwd=tmp_path)
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [(r["size"], r["dim"], r["tier"]) for r in rows] == [
        (n, d, t) for n, d in ((3000, 384), (2000, 1024)) for t in ("fast", "light", "standard", "deep")]
    assert all(r["recall_vs_deep"] == 1.0 for r in rows if r["tier"] == "deep")
    assert all(0 < r["recall_vs_deep"] <= 1 and r["p95_ms"] >= r["p50_ms"] > 0 and r["batched_qps"] > 0 for r in rows)
    big = next(r for r in rows if r["size"] == 3000)
    assert big["bytes_per_passage"]["vectors.faiss"] == pytest.approx(2 * 384, rel=0.01)  # float16, one copy
    assert big["bytes_per_passage"]["binary.faiss"] == pytest.approx(384 / 8, rel=0.05)
    assert set(big["disk_bytes"]) == {"vectors.faiss", "binary.faiss", "chunk_doc.npy", "manifest.json", "checksums.sha256"}
    assert big["peak_rss_mib"] > 0 and "3000 x 384 fast: recall" in stdout
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_dtype_cost_bench_compares_both_stored_dtypes_with_exact_search(tmp_path):
    run_script("dtype_cost.py", "--sizes", "2000", "--dim", "128", "--queries", "20", "--name", "dt", "--out", tmp_path, cwd=tmp_path)
    rows = {r["stored"]: r for r in json.loads((tmp_path / "dt.json").read_text())["rows"]}
    assert rows["float32"]["deep_recall_vs_float32_exact"] == 1.0  # the same numbers: exact
    assert 0.95 <= rows["float16"]["deep_recall_vs_float32_exact"] <= 1.0
    assert rows["float16"]["bytes_per_passage"] == 256 and rows["float32"]["bytes_per_passage"] == 512


def test_partitions_bench_sweeps_real_and_synthetic_vectors(tmp_path, bundled_index):
    run_script("partitions.py", "--real", f"{bundled_index}:default", "--data", BUNDLED, "--split", "", "--name", "p",
               "--out", tmp_path, cwd=tmp_path)
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    for vectors in ("real", "synthetic"):
        mine = [r["recall_vs_exact"] for r in rows if r["vectors"] == vectors]
        assert len(mine) == 7 and all(0 < r <= 1 for r in mine)
        assert mine[-1] >= mine[0]  # scanning more lists never finds fewer of the top 10


def test_runtimes_bench_compares_in_one_run(tmp_path):
    run_script("runtimes.py", "--data", BUNDLED, "--split", "", "--runtimes", "torch,openvino", "--query-sample", "5",
               "--name", "rt", "--out", tmp_path, cwd=tmp_path)
    rows = {r["runtime"]: r for r in json.loads((tmp_path / "rt.json").read_text())["rows"]}
    assert rows["torch"]["speedup_vs_torch"] == 1.0
    assert rows["openvino"]["passages_per_s"] > 0
    assert abs(rows["openvino"]["ndcg_change_vs_torch"]) < 0.01  # fp32: the same vectors


def test_binary_index_bench(tmp_path):
    run_script("binary_index.py", "--size", "3000", "--queries", "10", "--counts", "50", "--name", "b", "--out", tmp_path, cwd=tmp_path)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["index"] for r in rows} == {"flat", "hnsw"}
    assert all(0 < r["recall_vs_deep"] <= 1 for r in rows), "every row's recall_vs_deep is in (0, 1]"


def test_backends_bench_compares_faiss_and_qdrant_on_the_same_vectors(tmp_path, bundled_index):
    stdout = run_script("backends.py", "--data", BUNDLED, "--split", "", "--index", bundled_index, "--latency-sample", "5",
                        "--name", "be", "--out", tmp_path, cwd=tmp_path)
    result = json.loads((tmp_path / "be.json").read_text())
    rows = {(r["tier"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == {(t, b) for t in ("fast", "light", "standard", "deep") for b in ("faiss", "qdrant")}
    assert rows["deep", "qdrant"]["same_top10_as_faiss"] >= 0.99
    assert rows["fast", "qdrant"]["ndcg_vs_deep"] >= 0.99
    assert result["fast"]["qdrant"]["stage"] == "prefix"
    assert "same_top10_as_faiss" in stdout


def test_edge_funnel_bench(tmp_path):
    pytest.importorskip("qdrant_edge")
    run_script("edge_funnel.py", "--sizes", "3000", "--queries", "20", "--limits", "50,500", "--name", "edge", "--out",
               tmp_path, cwd=tmp_path)
    rows = json.loads((tmp_path / "edge.json").read_text())["rows"]
    edge = {r["candidates"]: r for r in rows if r["engine"].startswith("qdrant-edge")}
    assert edge[3000]["tier"] == "deep"
    assert edge[3000]["recall@10"] == 1.0  # the exact scan is exact
    assert edge[500]["recall@10"] >= edge[50]["recall@10"]
    assert edge[500]["recall@10"] > 0.9


def test_chaos_bench_mixed_reads_and_writes(tmp_path, bundled_index):
    """Searches, adds, deletes, replacements and a `medsearch compact` process against one writable
    service over a copy of the index: no errors, the end state adds up, the caller's index untouched."""
    before = sorted((p.relative_to(bundled_index), p.stat().st_mtime_ns) for p in bundled_index.rglob("*") if p.is_file())
    stdout = run_script("chaos.py", "--seconds", "8", "--searchers", "4", "--compactions", "1", "--index", bundled_index,
                        "--out", tmp_path / "chaos.json", cwd=tmp_path)
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert "no errors; consistent" in stdout, result["error_samples"]
    assert result["errors_total"] == 0, result["error_samples"]
    assert result["errors"] == {}, result["error_samples"]
    assert result["consistent"], "the end state adds up"
    assert result["documents_end"] == result["documents_expected"]
    assert result["searches"] > 0
    assert result["writes"]["add"] > 0
    assert result["writes"]["delete"] > 0
    assert result["generations_written"] == result["generations_expected"] > 0
    assert result["settings"]["searchers"] == 4
    assert result["machine"]["cpus"] >= 1
    assert sorted((p.relative_to(bundled_index), p.stat().st_mtime_ns) for p in bundled_index.rglob("*") if p.is_file()) == before


def test_rerank_cost_bench(tmp_path, bundled_index):
    stdout = run_script("rerank_cost.py", "--index", bundled_index, "--depths", "3,6", "--runtimes", "torch",
                        "--max-queries", "4", "--name", "smoke", "--out", tmp_path, cwd=tmp_path)
    assert "p50_ms" in stdout
    rows = json.loads((tmp_path / "smoke.json").read_text())["rows"]
    assert [(r["runtime"], r["N"]) for r in rows] == [("torch", 3), ("torch", 6)]
    assert all(r["queries"] == 4 for r in rows), "the first 4 bundled questions"
    assert rows[1]["p50_ms"] > 0


def test_rerank_quality_bench(tmp_path, bundled_index, cross_encoder):
    stdout = run_script("rerank_quality.py", "--reranker", cross_encoder, "--data", f"{BUNDLED}:",
                        "--index", f"{BUNDLED}={bundled_index}", "--sample", "20", "--depths", "3,5", "--weights", "0.5",
                        "--name", "smoke", "--out", tmp_path, cwd=tmp_path)
    assert "re-ranked top 5" in stdout
    rows = {r["setting"]: r for r in json.loads((tmp_path / "rerank-quality-smoke.json").read_text())["rows"]}
    assert set(rows) == {"dense deep", "default path (hybrid fast)", "re-ranked top 3", "fused top 3, convex w=0.5",
                         "fused top 3, rrf", "re-ranked top 5", "fused top 5, convex w=0.5", "fused top 5, rrf"}
    assert all(r["queries"] == 20 for r in rows.values()), "a seeded sample of 20"
    assert rows["re-ranked top 5"]["ndcg@10"] != rows["default path (hybrid fast)"]["ndcg@10"], \
        "a cross-encoder with its own (random) scores changes the order"
