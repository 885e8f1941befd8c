"""Pairs loading, settings, and a tiny end-to-end training: train, save, reload, index, query."""

import json

import pytest
from click.testing import CliRunner
from conftest import BUNDLED, write_jsonl

from medsearch.cli import cli
from medsearch.encoding.encoder import Encoder
from medsearch.errors import MedsearchError
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.training.finetune import (
    TrainSettings,
    load_pairs,
    matryoshka_dims,
    use_bf16,
)


def bundled_pairs(n: int) -> list[dict]:
    docs = {json.loads(l)["_id"]: json.loads(l)["text"] for l in open(BUNDLED / "corpus.jsonl")}
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in open(BUNDLED / "queries.jsonl")}
    rows = [line.rstrip("\n").split("\t") for line in open(BUNDLED / "qrels.tsv")][1:]
    return [{"anchor": queries[q], "positive": docs[d]} for q, d, _ in rows[:n]]


@pytest.mark.parametrize("full, dims", [(384, [384, 256, 128, 64]), (1024, [1024, 768, 512, 256, 128, 64]), (100, [100, 64])])
def test_matryoshka_dims(full, dims):
    assert matryoshka_dims(full) == dims


def test_load_pairs_formats(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"anchor": "a1", "positive": "p1", "id": 1}, {"anchor": "a2", "positive": "p2"}])
    assert load_pairs(tmp_path / "p.jsonl").to_dict() == {"anchor": ["a1", "a2"], "positive": ["p1", "p2"]}
    (tmp_path / "p.csv").write_text("question,answer\nq1,x1\nq2,x2\n", encoding="utf-8")
    assert load_pairs(tmp_path / "p.csv")["anchor"] == ["q1", "q2"]
    from datasets import Dataset

    Dataset.from_dict({"question": ["q1", "q2"], "answer": ["x1", "x2"], "other": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert load_pairs(tmp_path / "ds").column_names == ["anchor", "positive"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"anchor": "a", "positive": "p"}\n{"query": "a", "doc": "p"}\n', r"p\.jsonl:2: a pair needs 'anchor' and 'positive'"),
        ('{"anchor": "a", "positive": "p"}\n{"anchor": "", "positive": "p"}\n', r"p\.jsonl:2: empty anchor or positive"),
        ('{"anchor": "a", "positive": "p"}\n{bad\n', r"p\.jsonl:2: malformed JSON"),
        ('{"anchor": "a", "positive": "p"}\n', r"need at least 2 training pairs, found 1"),
    ],
)
def test_load_pairs_errors(tmp_path, content, message):
    (tmp_path / "p.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(MedsearchError, match=message):
        load_pairs(tmp_path / "p.jsonl")


def test_load_pairs_bad_paths(tmp_path):
    with pytest.raises(MedsearchError, match="training pairs not found"):
        load_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(MedsearchError, match=r"must be \.jsonl, \.csv or a saved dataset folder"):
        load_pairs(tmp_path / "p.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(MedsearchError, match="not a saved `datasets` dataset"):
        load_pairs(tmp_path / "folder")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "triplet"}, "unknown loss 'triplet'"),
        ({"bf16": "maybe"}, "bf16 must be auto, yes or no"),
        ({"batch_size": 1}, "batch size must be at least 2"),
        ({"report_to": "mlflow"}, "report_to must be none, wandb or tensorboard"),
    ],
)
def test_settings_are_validated(kwargs, message):
    with pytest.raises(MedsearchError, match=message):
        TrainSettings(**kwargs).validate()


def test_bf16_only_where_supported():
    assert use_bf16("auto", "cpu") is False
    assert use_bf16("no", "cpu") is False
    with pytest.raises(MedsearchError, match="bf16 is not supported on cpu"):
        use_bf16("yes", "cpu")


def test_tiny_training_end_to_end(tmp_path):
    """Train a few steps on pairs from the bundled corpus, then reload, index and query with the result."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", bundled_pairs(40))
    out = tmp_path / "tuned"
    result = CliRunner().invoke(cli, [
        "train", str(pairs), "--out", str(out), "--max-steps", "2", "--batch-size", "8", "--grad-accum", "1",
        "--eval-pairs", str(pairs), "--quiet", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "Trained 2 steps on 16 examples" in result.output
    assert (out / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists()
    record = json.loads((out / "medsearch_training.json").read_text())
    assert record["settings"]["dims"] == [384, 256, 128, 64]
    assert record["steps"] == 2
    assert record["eval_history"], "training recorded evaluations"
    assert "eval_dim_64_cosine_ndcg@10" in record["eval_history"][-1]
    card = (out / "README.md").read_text()
    assert "## medsearch fine-tuning" in card
    assert "MatryoshkaLoss over MultipleNegativesRankingLoss" in card

    tuned = Encoder(str(out), device="cpu")
    assert tuned.dim == 384
    assert tuned.fingerprint != Encoder("default", device="cpu").fingerprint
    build_index(BUNDLED, tmp_path / "idx", tuned)
    hits = Searcher(open_index(tmp_path / "idx"), tuned).search(["always thirsty and peeing a lot"], k=5)[0].hits
    assert len(hits) == 5
    assert any(h.id in {"doc-019", "doc-020"} for h in hits), "doc-019 or doc-020 is in the top 5"


def test_train_bad_input_from_the_cli(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", [{"anchor": "a", "positive": "p"}])
    write_jsonl(tmp_path / "two.jsonl", [{"anchor": "a", "positive": "p"}, {"anchor": "b", "positive": "q"}])
    for args, pattern in [
        (["train", str(tmp_path / "two.jsonl"), "--out", str(tmp_path / "m"), "--dim-weights", "1,2"], "give one weight per Matryoshka dim (4: [384, 256, 128, 64])"),
        (["train", str(tmp_path / "two.jsonl"), "--out", str(tmp_path / "m"), "--dims", "512,64"], "Matryoshka dims must be between 1 and the model's 384"),
        (["train", str(tmp_path / "two.jsonl"), "--dim-weights", "1,x"], "--dim-weights must be comma-separated numbers"),
        (["train", str(tmp_path / "missing.jsonl")], "training pairs not found"),
        (["train", str(tmp_path / "one.jsonl"), "--out", str(tmp_path / "m")], "need at least 2 training pairs"),
        (["train", str(tmp_path / "one.jsonl"), "--batch-size", "1"], "Invalid value for '--batch-size'"),
        (["train", str(tmp_path / "one.jsonl"), "--dims", "64,abc"], "--dims must be comma-separated integers"),
    ]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert pattern in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_resume_from_the_last_checkpoint(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainer

    import medsearch.training.finetune as training

    pairs = write_jsonl(tmp_path / "pairs.jsonl", bundled_pairs(24))
    settings = dict(batch_size=4, grad_accum=1, save_steps=1, device="cpu")
    # An interrupted run: checkpoints stay because no clean-up happens (shutil.rmtree is a no-op).
    monkeypatch.setattr(training.shutil, "rmtree", lambda *a, **k: None)
    training.train(pairs, tmp_path / "m", settings=TrainSettings(max_steps=2, **settings), progress=False)
    assert "checkpoint-2" in [p.name for p in (tmp_path / "m" / "checkpoints").iterdir()]
    monkeypatch.undo()

    calls = []
    real_train = SentenceTransformerTrainer.train

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("resume_from_checkpoint"))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "train", spy)
    result = training.train(pairs, tmp_path / "m", settings=TrainSettings(max_steps=3, **settings), resume=True, progress=False)
    assert calls == [True]
    assert result.steps == 3
    assert not (tmp_path / "m" / "checkpoints").exists()


def test_merge_averages_parameters_and_refuses_bad_input(tmp_path, tiny1024_path):
    import torch

    shifted = Encoder("default", device="cpu").model
    with torch.no_grad():
        for value in shifted.state_dict().values():
            if value.is_floating_point():
                value.add_(1.0)
    shifted.save(str(tmp_path / "shifted"))
    result = CliRunner().invoke(cli, ["merge", "default", str(tmp_path / "shifted"), "--out", str(tmp_path / "soup"), "--weight", "0.25"])
    assert result.exit_code == 0, result.output
    base, soup = Encoder("default", device="cpu").model.state_dict(), Encoder(str(tmp_path / "soup"), device="cpu").model.state_dict()
    name = next(k for k, v in base.items() if v.is_floating_point())
    assert torch.allclose(soup[name], base[name] + 0.25)
    record = json.loads((tmp_path / "soup" / "medsearch_merge.json").read_text())
    assert record["weight"] == 0.25
    assert record["first_fingerprint"] == Encoder("default", device="cpu").fingerprint != record["second_fingerprint"]

    for args, pattern in [
        (["merge", "default", str(tmp_path / "shifted"), "--out", str(tmp_path / "soup")], "already exists and is not empty"),
        (["merge", "default", str(tmp_path / "shifted"), "--out", str(tmp_path / "m2"), "--weight", "1.5"], "merge weight must be between 0 and 1"),
        (["merge", "default", tiny1024_path, "--out", str(tmp_path / "m3")], "they are not the same architecture"),
        (["merge", "default", "--out", str(tmp_path / "m4")], "Missing argument 'SECOND'"),
    ]:
        result = CliRunner().invoke(cli, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0, result.output
        assert len(lines) == 1, result.output
        assert pattern in lines[0], result.output
    assert not any((tmp_path / m).exists() for m in ("m2", "m3", "m4"))


def test_mined_negatives_are_other_answers_the_model_ranks_close(minilm):
    from conftest import SMALL_DOCS
    from datasets import Dataset

    from medsearch.training.finetune import mine_negatives

    pairs = Dataset.from_dict({"anchor": [f"What is {d['title']}?" for d in SMALL_DOCS],
                               "positive": [d["text"] for d in SMALL_DOCS]})
    mined = mine_negatives(pairs, minilm, count=2)
    assert mined.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    answers = set(pairs["positive"])
    for row in mined:
        assert row["negative_1"] in answers and row["negative_2"] in answers
        assert row["positive"] not in (row["negative_1"], row["negative_2"]), "a pair's own answer is never its negative"
        ranked = minilm.encode_passages([row["negative_1"], row["negative_2"]]) @ minilm.encode_queries([row["anchor"]])[0]
        assert ranked[0] >= ranked[1] - 1e-5, "the closest negative first"
