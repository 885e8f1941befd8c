"""The CLI end to end with click's CliRunner, and every command's bad input: one line, exit != 0."""

import json

import pytest
from click.testing import CliRunner
from conftest import BUNDLED, write_jsonl

from medsearch.cli import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def assert_one_line_error(result, pattern):
    assert result.exit_code != 0, result.output
    # an exception the CLI did not turn into its one-line error reaches CliRunner as itself (a user
    # would see its traceback); the CLI's own errors end in SystemExit
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), lines[0]
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, minilm):
    path = tmp_path_factory.mktemp("cli") / "idx"
    result = run("index", BUNDLED, "--index", path, "--quiet")
    assert result.exit_code == 0, result.output
    assert "Indexed 187 documents" in result.output
    assert "docs/s" in result.output
    assert "Tiers: fast=64, light=128, standard=384, deep=384" in result.output
    return path


def test_query_human_output(cli_index):
    result = run("query", "what are the early signs of type 2 diabetes", "--index", cli_index, "--k", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "what are the early signs of type 2 diabetes"
    assert lines[1].startswith("  1. ")
    assert "[doc-" in lines[1]
    assert sum(line.lstrip()[:2] in {"1.", "2.", "3."} for line in lines) == 3
    assert "encode" in lines[-1]
    assert "ms" in lines[-1]


def test_query_json_for_every_tier(cli_index):
    for tier in ("fast", "light", "standard", "deep"):
        result = run("query", "inhaler for wheezing", "--index", cli_index, "--tier", tier, "--k", "5", "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["query"] == "inhaler for wheezing"
        assert "query_id" not in out
        assert len(out["results"]) == 5
        assert list(out["results"][0]) == ["id", "score", "title", "snippet", "url", "source", "metadata", "found_by", "first_stage_score", "rerank_score",
                                             "citation", "span", "highlights", "quote"]
        assert out["results"][0]["source"] == "corpus.jsonl"
        assert "topic" in out["results"][0]["metadata"]
        assert set(out["timings_ms"]) == {"encode", "search", "rerank", "lexical", "fuse", "hydrate"}, "no mode named: hybrid"


def test_batch_queries_json(cli_index):
    result = run("query", "--queries", BUNDLED / "queries.jsonl", "--index", cli_index, "--tier", "deep", "--k", "10", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    expected = [json.loads(line)["_id"] for line in open(BUNDLED / "queries.jsonl")]
    assert [line["query_id"] for line in lines] == expected
    assert all(len(line["results"]) == 10 for line in lines)


def test_dim_option_and_info(cli_index):
    result = run("query", "kidney function blood test", "--index", cli_index, "--dim", "128", "--json")
    assert result.exit_code == 0
    assert len(json.loads(result.output)["results"]) == 10
    info = run("info", "--index", cli_index)
    assert info.exit_code == 0
    assert "all-MiniLM-L6-v2" in info.output
    assert "fast=64 (flat)" in info.output
    assert "187 (" in info.output
    manifest = json.loads(run("info", "--index", cli_index, "--json").output)
    assert manifest["documents"] == 187
    assert "vectors.faiss" in manifest["files"]


def test_model_mismatch_from_the_cli(cli_index, tiny1024_path):
    result = run("query", "fever", "--index", cli_index, "--model", tiny1024_path)
    assert_one_line_error(result, "was built with model")
    assert_one_line_error(result, f"query without --model, or rebuild with: medsearch index CORPUS --index {cli_index} --model {tiny1024_path}")


def test_bad_inputs(tmp_path, cli_index):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": oops}\n', encoding="utf-8")
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "empty.jsonl", [])
    write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "ok"}, {"_id": "q2", "text": ""}])
    cases = [
        (["index", tmp_path / "missing", "--index", tmp_path / "i"], "corpus path not found"),
        (["index", tmp_path / "empty", "--index", tmp_path / "i"], "no corpus files"),
        (["index", tmp_path / "empty.jsonl", "--index", tmp_path / "i"], "the corpus is empty"),
        (["index", bad, "--index", tmp_path / "i"], "bad.jsonl:2: malformed JSON"),
        (["index", BUNDLED, "--index", tmp_path / "i", "--model", tmp_path / "nomodel"], "model folder not found"),
        (["index", BUNDLED, "--index", tmp_path / "i", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["index"], "Missing argument 'PATH'"),
        (["query", "fever", "--index", cli_index, "--tier", "turbo"], "Invalid value for '--tier'"),
        (["query", "fever", "--index", tmp_path / "none"], f"no index at {tmp_path / 'none'}; build one with: medsearch index CORPUS --index"),
        (["query", "", "--index", cli_index], "empty query"),
        (["query", "   ", "--index", cli_index], "empty query"),
        (["query", "--index", cli_index], "give a query TEXT or --queries FILE"),
        (["query", "fever", "--queries", tmp_path / "q.jsonl", "--index", cli_index], "one of them"),
        (["query", "--queries", tmp_path / "nope.jsonl", "--index", cli_index], "queries file not found"),
        (["query", "--queries", tmp_path / "q.jsonl", "--index", cli_index], "q.jsonl:2: missing or empty 'text'"),
        (["query", "fever", "--index", cli_index, "--dim", "100"], "dim 100 is not stored"),
        (["query", "fever", "--index", cli_index, "--k", "0"], "Invalid value for '--k'"),
        (["info", "--index", tmp_path / "none"], "no index at"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run(*args), pattern)
    assert not (tmp_path / "i").exists()  # nothing half-written


def test_help_and_module_entry_points():
    import subprocess
    import sys

    from conftest import REPO

    assert "Semantic search for medical text" in run("--help").output
    assert "fast: 64-dim candidates re-ranked" in run("query", "--help").output
    for entry in (["-m", "medsearch"], [str(REPO / "cli.py")]):
        out = subprocess.run([sys.executable, *entry, "--version"], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0
        assert "medsearch, version" in out.stdout


def test_add_delete_compact_filter_and_info(tmp_path, cli_index):
    import shutil

    index = tmp_path / "idx"
    shutil.copytree(cli_index, index)
    new = write_jsonl(tmp_path / "new.jsonl", [
        {"id": "zorblax", "title": "Zorblax fever", "text": "Zorblax fever paints purple spots on both knees.", "topic": "condition"},
    ])
    added = run("add", new, "--index", index, "-q")
    assert added.exit_code == 0
    assert "added 1, updated 0, unchanged 0, deleted 0 -> generation 2: 188 documents" in added.output
    assert "unchanged 1" in run("add", new, "--index", index, "-q").output
    top = json.loads(run("query", "purple spots on the knees", "--index", index, "--json").output)["results"][0]
    assert top["id"] == "zorblax"
    deleted = run("delete", "zorblax", "doc-001", "--index", index)
    assert deleted.exit_code == 0
    assert "deleted 2 -> generation 3: 186 documents" in deleted.output
    info = run("info", "--index", index).output
    assert "186 (203 live chunks, 2 dead rows of 205)" in info
    assert "generation  3" in info
    assert "topic" in info
    as_json = json.loads(run("info", "--index", index, "--json").output)
    assert (as_json["documents"], as_json["live_chunks"], as_json["dead_chunks"], as_json["generation"]) == (186, 203, 2, 3)
    filtered = json.loads(run("query", "chest pain", "--index", index, "--filter", "topic=symptom", "--json").output)
    assert len(filtered["results"]) == 10
    assert {h["metadata"]["topic"] for h in filtered["results"]} == {"symptom"}
    compacted = run("compact", "--index", index)
    assert compacted.exit_code == 0
    assert "compacted -> generation 4: 186 documents, 203 chunk rows (0 dead)" in compacted.output
    assert "nothing to compact" in run("compact", "--index", index).output
    (tmp_path / "ids.txt").write_text("doc-002\n\ndoc-003\n")
    assert "deleted 2" in run("delete", "--ids-file", tmp_path / "ids.txt", "--index", index).output
    for args, pattern in [
        (["delete", "nope", "--index", index], "no document with id 'nope'"),
        (["delete", "--index", index], "give document IDs or --ids-file"),
        (["delete", "--ids-file", tmp_path / "none.txt", "--index", index], "'--ids-file': file not found"),
        (["add", tmp_path / "missing.jsonl", "--index", index], "corpus path not found"),
        (["add", new, "--index", tmp_path / "noindex"], "no index at"),
        (["query", "x", "--index", index, "--filter", "topic"], "malformed filter 'topic'"),
        (["query", "x", "--index", index, "--filter", "colour=red"], "unknown filter field 'colour'"),
        (["compact", "--index", tmp_path / "noindex"], "no index at"),
    ]:
        assert_one_line_error(run(*args), pattern)
