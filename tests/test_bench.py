"""Smoke tests: each bench/ script runs on a tiny size, so the benchmarks cannot rot."""

import json
import subprocess
import sys

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
    assert "fast x5" in stdout and "recall@10_vs_deep" in stdout
    result = json.loads((tmp_path / "smoke.json").read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert rows["deep"]["recall@10_vs_deep"] == 1.0 and rows["deep"]["ndcg_vs_deep"] == 1.0
    assert set(rows) == {"deep", "standard", "light", "fast x1", "fast x5", "dim 64", "dim 128", "dim 384"}
    assert result["queries"] == 8 and result["machine"]["cpus"] >= 1


def test_latency_bench(tmp_path, bundled_index):
    queries = tmp_path / "q.txt"
    queries.write_text("fever and cough\nchest pain\n")
    stdout = run_script(
        "latency.py", "--index", bundled_index, "--queries", queries, "--repeat", "1", "--name", "lat", "--out", tmp_path,
        cwd=tmp_path,
    )
    rows = json.loads((tmp_path / "lat.json").read_text())["rows"]
    assert [r["tier"] for r in rows] == ["fast", "light", "standard", "deep"] and "search_p50_ms" in stdout
    assert all(r["queries"] == 2 and r["p50_ms"] >= r["search_p50_ms"] > 0 for r in rows)
