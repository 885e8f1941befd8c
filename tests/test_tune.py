"""`medsearch tune`: the recipe end to end on a tiny model and a MedQuAD-shaped fixture, resuming."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_data import make_medquad_repo

from medsearch.cli import cli
from medsearch.data.medquad import read_pairs, write_medquad
from medsearch.encoding.encoder import Encoder


@pytest.fixture
def medquad_dir(tmp_path):
    write_medquad(read_pairs(make_medquad_repo(tmp_path / "repo")), tmp_path / "medquad", sample_size=12)
    return tmp_path / "medquad"


def run_tune(medquad_dir, out, base, *extra):
    return CliRunner().invoke(cli, [
        "tune", str(medquad_dir), "--out", str(out), "--base", base, "--pairs", "12", "--batch-size", "4",
        "--mini-batch-size", "4", "--max-steps", "2", "--eval-split", "", "--cache", str(out.parent / "cache"),
        "--device", "cpu", "-q", *extra,
    ])


def test_tune_runs_the_recipe_and_resumes(medquad_dir, tmp_path, tiny1024_path):
    out = tmp_path / "tuned"
    # interrupted after the first training: the soup step finds no second model
    import medsearch.training.finetune as training

    real_merge = training.merge_models
    training.merge_models = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        result = run_tune(medquad_dir, out, tiny1024_path, "--base-weight", "0.25")
    finally:
        training.merge_models = real_merge
    assert result.exit_code == 130
    assert not out.exists()
    work = tmp_path / "tuned.work"
    assert (work / "qa" / "medsearch_training.json").is_file()
    assert (work / "symptoms" / "medsearch_training.json").is_file()

    # the rerun keeps both trainings, and a changed base weight only touches the final merge
    result = run_tune(medquad_dir, out, tiny1024_path, "--base-weight", "0.25")
    assert result.exit_code == 0, result.output
    assert "[qa] already done" in result.output
    assert "[symptoms] already done" in result.output
    assert "[soup] ..." in result.output
    assert not work.exists()
    assert (out / "medsearch_merge.json").is_file()
    assert json.loads((out / "medsearch_merge.json").read_text())["weight"] == 0.25
    card = (out / "README.md").read_text()
    assert "medsearch tune" in card
    assert "| row | Initial | Final | Improvement |" in card
    assert "Second model (symptoms)" in card
    assert "tuned - base NDCG@10" in result.output
    # the final model is a real, different model of the same shape
    tuned, base = Encoder(str(out), device="cpu"), Encoder(tiny1024_path, device="cpu")
    assert tuned.dim == base.dim == 1024
    assert tuned.fingerprint != base.fingerprint
    # its fusion weight, chosen on dev, and its re-ranker go with it; indexes built with it fuse so
    chosen = json.loads((out / "medsearch_search.json").read_text())
    assert chosen["fusion"]["weight"] == max(chosen["rows"], key=lambda r: (r["ndcg@10"], -abs(r["weight"] - 0.7)))["weight"]
    assert "Hybrid fusion for this model" in card and "Re-ranker (`reranker/`" in card
    record = json.loads((out / "reranker" / "medsearch_reranker.json").read_text())
    assert record["base"] == str(tmp_path / "tuned.work" / "final") and record["training"]["steps"] == 2
    assert tuned.search_defaults == {"fusion": chosen["fusion"]}
    import shutil

    from medsearch.encoding.loading import weights_fingerprint
    shutil.copytree(out, tmp_path / "no-reranker", ignore=shutil.ignore_patterns("reranker"))
    assert weights_fingerprint(out) == weights_fingerprint(tmp_path / "no-reranker"), "the re-ranker is not the model's weights"
    assert run_tune(medquad_dir, out, tiny1024_path).exit_code == 1  # OUT exists: refused


def test_changed_settings_redo_only_the_steps_they_affect(medquad_dir, tmp_path, tiny1024_path):
    import medsearch.training.finetune as training

    out = tmp_path / "tuned"
    real_merge = training.merge_models
    calls = []

    def merge_then_stop(first, second, output, weight):
        calls.append(weight)
        real_merge(first, second, output, weight=weight)
        if len(calls) == 2:  # soup, then final: stop before the evaluation
            raise KeyboardInterrupt

    training.merge_models = merge_then_stop
    try:
        assert run_tune(medquad_dir, out, tiny1024_path, "--base-weight", "0.5").exit_code == 130
    finally:
        training.merge_models = real_merge
    result = run_tune(medquad_dir, out, tiny1024_path, "--base-weight", "0.1")
    assert result.exit_code == 0, result.output
    assert "settings changed (base_weight): redoing from step final" in result.output
    assert "[soup] already done" in result.output
    assert "[final] ..." in result.output
    assert json.loads((out / "medsearch_merge.json").read_text())["weight"] == 0.1

def test_tune_bad_input(tmp_path, medquad_dir):
    runner = CliRunner()
    result = runner.invoke(cli, ["tune", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "medsearch data medquad" in result.output
    result = runner.invoke(cli, ["tune", str(medquad_dir), "--out", str(tmp_path / "o"), "--pairs", "99"])
    assert result.exit_code == 1
    assert "train_pairs_99.jsonl not found" in result.output
    result = runner.invoke(cli, ["tune", str(medquad_dir), "--out", str(tmp_path / "o"), "--base-weight", "2"])
    assert result.exit_code == 2
    assert "not in the range" in result.output
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "o.work").exists()
