"""Issue 30 on every backend: what a document id is (taken exactly, NFC; found by its NFC or NFD
spelling through the store, writes, the CLI and the HTTP API), and what a metadata filter matches on
lists and booleans: one table of cases that FAISS (SQLite filters) and Qdrant (payload filters)
both answer (filters.py's docstring says the rules; docs/guides/living-index.md for users)."""

import urllib.parse

import pytest
from conftest import BACKENDS, backend_settings, write_jsonl
from fastapi.testclient import TestClient
from test_cli import assert_one_line_error, run

from medsearch.documents.corpus import Document
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.writes import delete, upsert
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings

NFC, NFD = "caf\u00e9", "cafe\u0301"

# Metadata of every JSON kind a filter meets: text, number, real, boolean, list, object, null, none
FILTER_DOCS = {
    "text": {"tags": "a", "year": "2019", "flag": "true"},
    "list": {"tags": ["a", "b"], "year": [2019, 2020], "flag": [True]},
    "int": {"tags": 5, "year": 2019, "flag": 1},
    "real": {"year": 2019.0, "flag": 0.0},
    "true": {"tags": False, "year": True, "flag": True},
    "false": {"year": False, "flag": False},
    "object": {"tags": {"a": 1}, "year": None},
    "bare": {},
}
EVERY = sorted(FILTER_DOCS)
FILTER_CASES = [
    # a list matches `=` when any element matches
    ("tags=a", ["list", "text"]),
    ("tags=b", ["list"]),
    ("tags!=a", sorted(set(EVERY) - {"list", "text"})),
    ("tags=5", ["int"]),
    # a boolean matches only `=true` / `=false` (and text "true"), never a number
    ("flag=true", ["list", "text", "true"]),
    ("flag=false", ["false"]),
    ("flag=1", ["int"]),
    ("flag=0", ["real"]),
    ("flag!=true", sorted(set(EVERY) - {"list", "text", "true"})),
    ("tags=false", ["true"]),
    ("year=true", ["true"]),
    # numbers: `=` by value, `<=` / `>=` never a boolean nor a list
    ("year=2019", ["int", "list", "real", "text"]),
    ("year=2020", ["list"]),
    ("year<=2020", ["int", "real", "text"]),
    ("year<=1", []),
    ("year>=0", ["int", "real", "text"]),
    ("flag<=1", ["int", "real"]),
    ("year!=2019", ["bare", "false", "object", "true"]),
    # columns are text
    ("id=int", ["int"]),
    ("id!=int", sorted(set(EVERY) - {"int"})),
]


@pytest.fixture(scope="module", params=BACKENDS)
def filter_index(request, tmp_path_factory, minilm):
    where = tmp_path_factory.mktemp(f"filters-{request.param}")
    docs = [{"id": name, "text": f"A leaflet about blood pressure, number {i}.", **metadata}
            for i, (name, metadata) in enumerate(FILTER_DOCS.items())]
    build_index(write_jsonl(where / "docs.jsonl", docs), where / "idx", minilm,
                backend=backend_settings(request.param, where))
    return Searcher(open_index(where / "idx"), minilm)


@pytest.mark.parametrize("text, expected", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filters_mean_the_same_on_every_backend(filter_index, text, expected):
    for tier in ("deep", "fast"):  # dense only: the backend's own filter (lexical and hybrid also use SQLite)
        hits = filter_index.search(["blood pressure"], tier=tier, k=20, mode="dense", filters=[text])[0].hits
        assert sorted(h.id for h in hits) == expected, tier
    lexical = filter_index.search(["blood pressure"], k=20, mode="lexical", filters=[text])[0].hits
    assert sorted(h.id for h in lexical) == expected, "lexical (SQLite)"


@pytest.fixture
def cafe_index(tmp_path, minilm, backend):
    docs = [{"id": NFD, "title": "Coffee", "text": "Coffee and the heart: caffeine can make the heart race."},
            {"id": "tea", "title": "Tea", "text": "Tea and sleep: an evening cup can keep you awake."}]
    build_index(write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "idx", minilm,
                backend=backend_settings(backend, tmp_path))
    return tmp_path / "idx"


def test_an_nfd_id_is_stored_in_nfc_and_found_by_either(cafe_index, minilm):
    index = open_index(cafe_index)
    assert index.store.hashes().keys() == {NFC, "tea"}
    assert index.store.document(NFD)["id"] == index.store.document(NFC)["id"] == NFC
    searcher = Searcher(index, minilm)
    for spelling in (NFC, NFD):
        assert [h.id for h in searcher.search(["coffee"], tier="deep", mode="dense", filters=[f"id={spelling}"])[0].hits] == [NFC]
    report = upsert(cafe_index, [Document(id=NFC, title="Coffee", text="Coffee, revised: caffeine and palpitations.")], minilm)
    assert (report.added, report.updated) == (0, 1), "the NFC spelling replaces the document stored from NFD"
    report = upsert(cafe_index, [Document(id=NFD, title="Coffee", text="Coffee, revised: caffeine and palpitations.")], minilm)
    assert (report.added, report.unchanged) == (0, 1)
    assert delete(cafe_index, [NFD]).deleted == 1
    index = open_index(cafe_index)
    assert index.store.hashes().keys() == {"tea"}
    assert [h.id for h in Searcher(index, minilm).search(["coffee"], tier="deep", mode="dense")[0].hits] == ["tea"]


def test_the_cli_add_and_delete_take_either_spelling(cafe_index, tmp_path):
    again = write_jsonl(tmp_path / "again.jsonl", [
        {"id": NFC, "title": "Coffee", "text": "Coffee and the heart: caffeine can make the heart race."}])
    result = run("add", again, "--index", cafe_index, "--quiet")
    assert result.exit_code == 0, result.output
    assert "added 0, updated 0, unchanged 1" in result.output
    result = run("delete", NFD, "--index", cafe_index)
    assert result.exit_code == 0, result.output
    assert "deleted 1" in result.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "tea ", "text": "Tea again."}])
    assert_one_line_error(run("add", bad, "--index", cafe_index), "bad.jsonl:1: document id 'tea ' has whitespace")


def test_the_http_api_reads_writes_and_deletes_by_either_spelling(tmp_path, minilm):
    build_index(write_jsonl(tmp_path / "docs.jsonl", [{"id": "tea", "text": "Tea and sleep."}]), tmp_path / "idx", minilm)
    settings = ServerSettings(writable=True, warm_up=False, token="t")
    with TestClient(create_app(Searcher(open_index(tmp_path / "idx"), minilm), settings),
                    headers={"Authorization": "Bearer t"}) as client:
        bad = client.post("/documents", json={"documents": [{"id": "pad ", "text": "Padding."}]})
        assert bad.status_code == 400
        assert bad.json()["error"] == "document 1: document id 'pad ' has whitespace at its start or end; ids are taken exactly: remove it"
        added = client.post("/documents", json={"documents": [{"id": NFD, "text": "Coffee and the heart."}]}).json()
        assert (added["added"], added["documents"]) == (1, 2)
        assert client.post("/documents", json={"documents": [{"id": NFC, "text": "Coffee and the heart."}]}).json()["unchanged"] == 1
        for spelling in (NFC, NFD):
            got = client.get(f"/documents/{urllib.parse.quote(spelling)}")
            assert got.status_code == 200, got.text
            assert got.json()["id"] == NFC
        gone = client.delete(f"/documents/{urllib.parse.quote(NFD)}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["documents"] == 1
        assert client.get(f"/documents/{urllib.parse.quote(NFC)}").status_code == 404


def test_medsearch_index_tells_of_normalised_ids_once(tmp_path, caplog):
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": NFD, "text": "Coffee and the heart."},
                                                   {"id": f"{NFD}-2", "text": "Coffee and sleep."}])
    with caplog.at_level("WARNING", logger="medsearch"):
        result = run("index", corpus, "--index", tmp_path / "idx", "--quiet")  # --model auto reads the corpus twice
    assert result.exit_code == 0, result.output
    told = [r.getMessage() for r in caplog.records if "NFC" in r.getMessage()]
    assert told == [f"{corpus}: 2 document ids were not in Unicode NFC form: normalised to it "
                    "(the NFC and NFD spellings of an id are one document)"]
    assert open_index(tmp_path / "idx").store.hashes().keys() == {NFC, f"{NFC}-2"}
