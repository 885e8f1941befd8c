"""`medsearch data`: MedQuAD's XML and BEIR archives to BEIR folders, on fixture files written here
in each source's format (the real download code runs against file:// and loopback URLs)."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from medsearch.cli import cli
from medsearch.data.download import fetch, unpacked
from medsearch.data.medquad import normalise, read_pairs, split_of, write_medquad
from medsearch.errors import BadInputError, DownloadError
from medsearch.training.evaluation import load_benchmark

HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def medquad_xml(doc_id: str, focus: str, pairs: list[tuple[str, str, str, str]], url: str = "https://example.org/x") -> str:
    """A document in MedQuAD's format; pairs: (qid, qtype, question, answer)."""
    body = "".join(
        f'\t<QAPair pid="{n}">\n\t\t\t<Question qid="{qid}" qtype="{qtype}">{question}</Question>\n'
        f"\t\t\t<Answer>{answer}</Answer>\n\t</QAPair>\n"
        for n, (qid, qtype, question, answer) in enumerate(pairs, start=1)
    )
    return (f'{HEADER}<Document id="{doc_id}" source="Fixture" url="{url}">\n<Focus>{focus}</Focus>\n'
            f"<FocusAnnotations>\n\t<UMLS>\n\t\t<CUIs>\n\t\t\t<CUI>C0000000</CUI>\n\t\t</CUIs>\n\t</UMLS>\n</FocusAnnotations>\n"
            f"<QAPairs>\n{body}</QAPairs>\n</Document>\n")


SYMPTOMS = ("Signs and symptoms of this condition include pain in the joints and a rash that comes and goes. "
            "People who have it often feel tired and may have a fever that lasts for weeks at a time.")
FOCI = [f"Fixture condition {name}" for name in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")]


@pytest.fixture
def medquad_repo(tmp_path) -> Path:
    return make_medquad_repo(tmp_path / "MedQuAD-master")


def make_medquad_repo(root: Path) -> Path:
    """A small MedQuAD-shaped repository: two source folders, an empty (copyright-removed) answer,
    an answer shared by two foci, a question asked in two documents, indented answers."""
    first, second, adam = root / "1_Fixture_QA", root / "2_Other_QA", root / "10_MPlus_ADAM_QA"
    for folder in (first, second, adam):
        folder.mkdir(parents=True)
    for n, focus in enumerate(FOCI, start=1):
        doc = f"{n:07d}"
        (first / f"{doc}.xml").write_text(medquad_xml(doc, focus, [
            (f"{doc}-1", "information", f"What is (are) {focus} ?", f"{focus} is a made-up condition\n      used in tests number {n}."),
            (f"{doc}-2", "symptoms", f"What are the symptoms of {focus} ?", SYMPTOMS + f" Case {n}."),
            (f"{doc}-3", "inheritance", f"Is {focus} inherited ?", "This condition is inherited in an autosomal recessive pattern."),
        ]))
    (second / "0000001.xml").write_text(medquad_xml("0000001", FOCI[0], [
        ("0000001-1", "information", f"What is (are) {FOCI[0]} ?", "A second source describes alpha differently."),
    ]))
    (adam / "0000001.xml").write_text(medquad_xml("0000001", "Removed", [("0000001-1", "information", "What is (are) Removed ?", "")]))
    return root


def test_normalise_and_split():
    assert normalise("Key Points\n        - one    two\n\n   \n  three ") == "Key Points\n- one two\nthree"
    assert split_of("Asthma") == split_of("  asthma ")
    assert split_of("Asthma") in ("train", "dev", "test")
    shares = [split_of(f"condition {i}") for i in range(5000)]
    assert 0.77 < shares.count("train") / 5000 < 0.83
    assert 0.08 < shares.count("test") / 5000 < 0.12


def test_medquad_folder_from_xml(medquad_repo, tmp_path):
    pairs = read_pairs(medquad_repo)
    assert len(pairs) == 31  # 10 x 3 + 1; the empty answer is dropped
    assert pairs[0].id == "1_Fixture_QA/0000001/0000001-1"
    assert pairs[-1].folder == "2_Other_QA"  # folders by number
    counts = write_medquad(pairs, tmp_path / "out", sample_size=5)
    out = tmp_path / "out"
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").open()]
    queries = {q["_id"]: q for q in map(json.loads, (out / "queries.jsonl").open())}
    # the inheritance answer is shared by every focus: one document, no title; identical questions: one query
    shared = [d for d in corpus if d["text"].startswith("This condition is inherited")]
    assert len(shared) == 1
    assert shared[0]["title"] == ""
    assert counts["documents"] == len(corpus) == 10 + 10 + 1 + 1
    assert counts["queries"] == len(queries) == 30
    assert corpus[0]["text"] == f"{FOCI[0]} is a made-up condition\nused in tests number 1."
    bench = load_benchmark(out)
    alpha = next(q for q, r in queries.items() if r["text"] == f"What is (are) {FOCI[0]} ?")
    assert set(bench.qrels[alpha]) == {"1_Fixture_QA/0000001/0000001-1", "2_Other_QA/0000001/0000001-1"}
    # the split is by focus: no focus in two splits, and the training pairs are the train split's
    for focus in FOCI:
        assert len({q["split"] for q in queries.values() if q["focus"] == focus}) == 1
    train = [json.loads(line) for line in (out / "train_pairs.jsonl").open()]
    train_questions = {q["text"] for q in queries.values() if q["split"] == "train"}
    assert train, "train_pairs.jsonl is not empty"
    assert all(p["anchor"] in train_questions for p in train), "every training anchor is a train-split question"
    sample = [json.loads(line) for line in (out / "train_pairs_5.jsonl").open()]
    assert len(sample) == 5
    assert all(p in train for p in sample), "the sample is drawn from train_pairs.jsonl"
    symptoms = [json.loads(line) for line in (out / "symptom_pairs.jsonl").open()]
    assert symptoms, "symptom_pairs.jsonl is not empty"
    assert all("fixture condition" not in p["anchor"] for p in symptoms), "a symptom anchor does not name the condition"
    assert all(p["positive"].startswith("Fixture condition") for p in symptoms)  # the overview answer
    assert "CC BY 4.0" in (out / "README.md").read_text()
    # the same input gives the same files
    write_medquad(read_pairs(medquad_repo), tmp_path / "again", sample_size=5)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "train_pairs.jsonl", "symptom_pairs.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_medquad_cli_from_zip_and_folder(medquad_repo, tmp_path):
    archive = tmp_path / "MedQuAD-master.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in medquad_repo.rglob("*.xml"):
            handle.write(path, path.relative_to(tmp_path))
    cache = tmp_path / "cache"
    runner = CliRunner()
    for source, out in ((archive, "a"), (medquad_repo, "b")):
        result = runner.invoke(cli, ["data", "medquad", str(tmp_path / out), "--from", str(source), "--cache", str(cache)])
        assert result.exit_code == 0, result.output
        assert "22 documents, 30 queries" in result.output
    assert (tmp_path / "a" / "qrels.tsv").read_bytes() == (tmp_path / "b" / "qrels.tsv").read_bytes()
    # an existing output folder is replaced whole; a folder that is not a data set is refused
    result = runner.invoke(cli, ["data", "medquad", str(tmp_path / "a"), "--from", str(archive), "--cache", str(cache)])
    assert result.exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = runner.invoke(cli, ["data", "medquad", str(tmp_path / "mine"), "--from", str(archive), "--cache", str(cache)])
    assert result.exit_code == 1
    assert "not a data set folder" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_medquad_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no MedQuAD XML files"):
        read_pairs(tmp_path / "empty")
    (tmp_path / "broken" / "1_X_QA").mkdir(parents=True)
    (tmp_path / "broken" / "1_X_QA" / "0000001.xml").write_text("<Document><Focus>cut off")
    with pytest.raises(BadInputError, match=r"0000001.xml: not valid XML"):
        read_pairs(tmp_path / "broken")
    result = CliRunner().invoke(cli, ["data", "medquad", str(tmp_path / "out"), "--from", str(tmp_path / "broken"),
                                      "--cache", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "not valid XML" in result.output
    assert not (tmp_path / "out").exists()
    (tmp_path / "notzip.zip").write_text("plain text")
    result = CliRunner().invoke(cli, ["data", "medquad", str(tmp_path / "out"), "--from", str(tmp_path / "notzip.zip")])
    assert result.exit_code == 1
    assert "neither a folder nor a .zip" in result.output


def beir_archive(tmp_path: Path, name: str = "nfcorpus") -> Path:
    """A BEIR-format archive: NAME/corpus.jsonl, queries.jsonl, qrels/{test,dev}.tsv with grades."""
    archive = tmp_path / f"{name}.zip"
    corpus = [{"_id": f"MED-{i}", "title": f"Study {i}", "text": text, "metadata": {}} for i, text in enumerate([
        "Statins lower LDL cholesterol and cut the risk of heart attack.",
        "Vitamin D supplements and bone density in older women.",
        "Fibre intake and colorectal cancer risk in a cohort of adults.",
        "Green tea catechins and blood pressure: a meta-analysis.",
    ])]
    queries = [{"_id": "PLAIN-1", "text": "do statins prevent heart attacks"},
               {"_id": "PLAIN-2", "text": "vitamin d for bones"},
               {"_id": "PLAIN-3", "text": "fibre and bowel cancer"},
               {"_id": "PLAIN-4", "text": "never judged"}]
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(f"{name}/corpus.jsonl", "".join(json.dumps(r) + "\n" for r in corpus))
        handle.writestr(f"{name}/queries.jsonl", "".join(json.dumps(r) + "\n" for r in queries))
        handle.writestr(f"{name}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nPLAIN-1\tMED-0\t2\nPLAIN-1\tMED-3\t1\nPLAIN-2\tMED-1\t2\n")
        handle.writestr(f"{name}/qrels/dev.tsv", "query-id\tcorpus-id\tscore\nPLAIN-3\tMED-2\t1\nPLAIN-3\tMED-0\t0\n")
    return archive


def test_beir_cli_keeps_grades_and_splits(tmp_path):
    archive = beir_archive(tmp_path)
    result = CliRunner().invoke(cli, ["data", "beir", "nfcorpus", str(tmp_path / "nf"), "--from", str(archive),
                                      "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "4 documents, 3 queries (test 2, dev 1), 5 judgements, grades [0, 1, 2]" in result.output
    test = load_benchmark(tmp_path / "nf", "test")
    assert test.qrels == {"PLAIN-1": {"MED-0": 2, "MED-3": 1}, "PLAIN-2": {"MED-1": 2}}
    assert set(load_benchmark(tmp_path / "nf", "dev").queries) == {"PLAIN-3"}
    result = CliRunner().invoke(cli, ["data", "beir", "msmarco", str(tmp_path / "x"), "--from", str(archive)])
    assert result.exit_code == 2
    assert "Invalid value for '{nfcorpus|trec-covid|scifact}'" in result.output


def test_eval_on_a_graded_beir_folder(tmp_path):
    """End to end: the fetched folder evaluates with graded gains (lexical: no model needed)."""
    import math

    archive = beir_archive(tmp_path)
    CliRunner().invoke(cli, ["data", "beir", "nfcorpus", str(tmp_path / "nf"), "--from", str(archive), "--cache", str(tmp_path / "c")])
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "nf"), "--split", "test", "--mode", "lexical", "-q",
                                      "--cache", str(tmp_path / "ix"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    # PLAIN-1: BM25 ranks MED-0 (grade 2) first; MED-3 (grade 1) shares no word with it: NDCG = 2 / (2 + 1/log2(3))
    # PLAIN-2: MED-1 first: 1
    assert row["ndcg@10"] == pytest.approx((2 / (2 + 1 / math.log2(3)) + 1) / 2, abs=1e-4)


def test_fetch_downloads_once_through_the_real_path(tmp_path):
    source = beir_archive(tmp_path)
    cache = tmp_path / "cache"
    got = fetch(source.as_uri(), cache)
    assert got.read_bytes() == source.read_bytes()
    assert got.parent == cache
    source.unlink()
    assert fetch(source.as_uri(), cache) == got  # cached: not fetched again
    assert not list(cache.glob("*.part"))
    assert (unpacked(got, cache) / "nfcorpus" / "corpus.jsonl").is_file()


def test_offline_download_error_names_the_way_out(tmp_path):
    with socket.socket() as s:  # a port with nothing listening on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nfcorpus.zip"
    with pytest.raises(DownloadError, match=f"could not download {url}"):
        fetch(url, tmp_path / "cache", timeout=5)
    assert not list((tmp_path / "cache").glob("*"))  # no partial file left
    import medsearch.data.download as download

    original = download.SOURCES["beir"]
    download.SOURCES["beir"] = f"http://127.0.0.1:{port}/{{name}}.zip"
    try:
        result = CliRunner().invoke(cli, ["data", "beir", "scifact", str(tmp_path / "sf"), "--cache", str(tmp_path / "c")])
    finally:
        download.SOURCES["beir"] = original
    assert result.exit_code == 1
    assert "--from PATH" in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "sf").exists()
