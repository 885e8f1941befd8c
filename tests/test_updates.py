"""The living index: upsert, delete, compact, filters, generations and the writer lock, on every
tier and on HNSW candidates too."""

import errno
import json
import shutil
import sqlite3
import threading

import numpy as np
import pytest
from conftest import BUNDLED, SMALL_DOCS, backend_settings, to_legacy_layout, write_jsonl

from medsearch.documents.corpus import Document
from medsearch.errors import BadInputError, MedsearchError, NotFoundError
from medsearch.index import generations
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.integrity import verify
from medsearch.index.writes import (
    AUTO_COMPACT_DEAD_FRACTION,
    compact,
    delete,
    sync,
    upsert,
)
from medsearch.retrieval.search import Searcher

TIERS = ("fast", "light", "standard", "deep")
ZORBLAX = Document(id="zorblax", title="Zorblax fever",
                   text="Zorblax fever is an invented tropical illness that paints purple spots on both knees.",
                   metadata={"topic": "condition", "year": 2024})
ZORBLAX_QUERY = "purple spots on both knees"


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm):
    """The bundled corpus indexed once, and a copy of it in the FAISS layout before the one stored
    matrix (which medsearch still reads, and whose writes produce this layout)."""
    out = {"faiss": tmp_path_factory.mktemp("faiss") / "idx", "legacy": tmp_path_factory.mktemp("legacy") / "idx"}
    build_index(BUNDLED, out["faiss"], minilm)
    shutil.copytree(out["faiss"], out["legacy"])
    to_legacy_layout(out["legacy"])
    return out


@pytest.fixture(params=["faiss", "legacy", "qdrant"])
def live_index(request, built, tmp_path, memo_minilm):
    """A fresh bundled index for a test to change: a copy of the FAISS one (this layout or the one before),
    or a new Qdrant collection in local mode (the shared backend suite: every test below runs on both
    backends unless it says why not)."""
    if request.param == "qdrant":
        build_index(BUNDLED, tmp_path / "idx", memo_minilm, backend=backend_settings("qdrant", tmp_path))
    else:
        shutil.copytree(built[request.param], tmp_path / "idx")
    return tmp_path / "idx"


def faiss_only(index_dir, why: str) -> None:
    if open_index(index_dir).backend_name != "faiss":
        pytest.skip(why)


def ids(searcher, query, tier, k=10, **kwargs):
    return [h.id for h in searcher.search([query], tier=tier, k=k, **kwargs)[0].hits]


def test_the_layout_before_the_one_matrix_is_read_and_its_next_write_is_in_this_layout(built, tmp_path, minilm):
    """An index written before the one stored matrix answers every tier as the same index in this
    layout does (its deep scores are its float16 rows, as this layout's are); an add writes the next
    generation in this layout, and so does a compaction."""
    from medsearch.index.writes import compact

    shutil.copytree(built["legacy"], tmp_path / "old")
    old, new = Searcher(open_index(tmp_path / "old"), minilm), Searcher(open_index(built["faiss"]), minilm)
    assert old.index.backend.legacy and not new.index.backend.legacy
    for tier in TIERS:
        (was,), (now,) = old.search([ZORBLAX_QUERY], tier=tier, k=5), new.search([ZORBLAX_QUERY], tier=tier, k=5)
        assert [h.id for h in was.hits] == [h.id for h in now.hits], tier
        np.testing.assert_allclose([h.score for h in was.hits], [h.score for h in now.hits], atol=2e-3)
    assert verify(tmp_path / "old").ok
    assert open_index(tmp_path / "old").backend.outdated()
    upsert(tmp_path / "old", [ZORBLAX], minilm)
    files = {p.name for p in open_index(tmp_path / "old").folder.iterdir()}
    assert "vectors.faiss" in files and "binary.faiss" in files
    assert not {"vectors.npy", "dim64.faiss"} & files
    assert ids(Searcher(open_index(tmp_path / "old"), minilm), ZORBLAX_QUERY, "fast")[0] == "zorblax"
    shutil.copytree(built["legacy"], tmp_path / "old2")
    assert compact(tmp_path / "old2").compacted
    assert "vectors.faiss" in {p.name for p in open_index(tmp_path / "old2").folder.iterdir()}
    assert verify(tmp_path / "old2").ok


def test_add_is_found_at_rank_one_in_every_tier(live_index, minilm):
    report = upsert(live_index, [ZORBLAX], minilm)
    assert (report.added, report.updated, report.unchanged, report.generation) == (1, 0, 0, 2)
    searcher = Searcher(open_index(live_index), minilm)
    for tier in TIERS:
        assert ids(searcher, ZORBLAX_QUERY, tier)[0] == "zorblax", tier
    manifest = open_index(live_index).manifest
    assert manifest["documents"] == 188
    assert manifest["dead_chunks"] == 0
    assert manifest["chunks"] == 205


def test_unchanged_costs_nothing_and_changed_replaces_the_old_text(live_index, minilm):
    upsert(live_index, [ZORBLAX], minilm)

    def no_model():
        raise AssertionError("nothing to encode: the model must not load")

    again = upsert(live_index, [ZORBLAX], no_model)
    assert (again.unchanged, again.generation) == (1, None)
    assert open_index(live_index).generation == 2
    changed = Document(id="zorblax", title="Zorblax fever", text="Zorblax fever now turns both elbows bright green.",
                       metadata={"topic": "symptom"})
    report = upsert(live_index, [changed], minilm)
    assert (report.updated, report.added) == (1, 0)
    searcher = Searcher(open_index(live_index), minilm)
    for tier in TIERS:
        assert ids(searcher, "bright green elbows", tier)[0] == "zorblax"
        hits = searcher.search([ZORBLAX_QUERY], tier=tier, k=200)[0].hits
        assert [h.id for h in hits].count("zorblax") == 1  # the old chunk is dead: one hit, the new text
        assert "purple" not in next(h.snippet for h in hits if h.id == "zorblax")
    manifest = open_index(live_index).manifest
    assert manifest["documents"] == 188
    assert manifest["dead_chunks"] == 1
    assert manifest["metadata_fields"] == ["topic"]


def test_a_deleted_document_never_appears_in_any_tier(live_index, minilm):
    searcher = Searcher(open_index(live_index), minilm)
    query = "what are the early signs of type 2 diabetes"
    assert ids(searcher, query, "deep")[0] == "doc-020"
    report = delete(live_index, ["doc-020", "doc-019"])
    assert report.deleted == 2
    assert report.generation == 2
    for tier in TIERS:
        everything = ids(searcher, query, tier, k=500)  # the same Searcher moves to the new generation
        assert "doc-020" not in everything
        assert "doc-019" not in everything
        assert len(everything) == 185, tier
    for dim in (64, 128, 384):
        assert "doc-020" not in ids(searcher, query, "deep", k=500, dim=dim)
    for mode in ("lexical", "hybrid"):  # BM25 keeps the deleted rows (a delete links it): masked out
        assert "doc-020" not in ids(searcher, query, "deep", k=500, mode=mode)
    manifest = open_index(live_index).manifest
    assert manifest["documents"] == 185
    assert manifest["dead_chunks"] == 2
    assert manifest["chunks"] == 204
    with pytest.raises(NotFoundError, match="no document with id 'doc-020'.*nothing was deleted"):
        delete(live_index, ["doc-021", "doc-020"])
    assert open_index(live_index).manifest["documents"] == 185  # doc-021 is still there
    with pytest.raises(MedsearchError, match="no document with id 'doc-020'"):
        searcher.index.store.document("doc-020")


def test_compact_drops_dead_rows_and_keeps_the_answers(live_index, minilm):
    if open_index(live_index).backend_name == "qdrant":  # Qdrant deletes points at once: nothing to compact
        delete(live_index, ["doc-001"])
        report = compact(live_index)
        assert not report.compacted, "Qdrant leaves no dead rows to compact"
        assert report.generation is None
        assert open_index(live_index).generation == 2
        return
    upsert(live_index, [ZORBLAX], minilm)
    delete(live_index, ["doc-001", "doc-002", "doc-003"])
    searcher = Searcher(open_index(live_index), minilm)
    queries = [json.loads(line)["text"] for line in open(BUNDLED / "queries.jsonl")][:20] + [ZORBLAX_QUERY]
    # dense: BM25's term statistics lose the dead rows' words in a compaction, the vectors do not change
    before = {t: searcher.search(queries, tier=t, k=10, mode="dense") for t in ("fast", "deep")}
    report = compact(live_index)
    index = open_index(live_index)
    assert report.compacted, "compact writes a new generation"
    assert index.manifest["dead_chunks"] == 0
    assert index.manifest["chunks"] == 202
    assert index.manifest["documents"] == 185
    assert index.live is None
    assert index.manifest.index_type(64) == searcher.index.manifest.index_type(64)  # flat stays flat, HNSW stays HNSW
    for tier, results in before.items():
        for old, new in zip(results, searcher.search(queries, tier=tier, k=10, mode="dense")):
            assert [h.id for h in new.hits] == [h.id for h in old.hits]
            np.testing.assert_allclose([h.score for h in new.hits], [h.score for h in old.hits], atol=1e-5)
    assert compact(live_index).compacted is False  # nothing dead: nothing written


def test_many_dead_rows_compact_by_themselves(tmp_path, small_corpus, minilm):
    build_index(small_corpus, tmp_path / "idx", minilm)
    chunks = open_index(tmp_path / "idx").chunks
    report = delete(tmp_path / "idx", ["hf-guide"])  # the long document: most of the rows
    assert (chunks - 7) / chunks > AUTO_COMPACT_DEAD_FRACTION
    assert report.compacted, "a delete past the dead fraction compacts by itself"
    assert open_index(tmp_path / "idx").manifest["dead_chunks"] == 0
    assert open_index(tmp_path / "idx").chunks == 7


def test_index_command_is_incremental(tmp_path, minilm, backend):
    corpus = write_jsonl(tmp_path / "c" / "docs.jsonl", SMALL_DOCS)
    first = sync(corpus, tmp_path / "idx", minilm, backend=backend_settings(backend, tmp_path))
    assert first.added == 8
    assert first.generation == 1
    edited = [d for d in SMALL_DOCS if d["id"] != "flu"] + [{"id": "gout", "title": "Gout", "text": "Gout is a painful swollen big toe joint from uric acid crystals."}]
    edited[0] = {**edited[0], "text": edited[0]["text"] + " Thirst is common."}
    write_jsonl(corpus, edited)
    report = sync(corpus, tmp_path / "idx", minilm)
    assert (report.added, report.updated, report.deleted, report.unchanged) == (1, 1, 1, 6)
    searcher = Searcher(open_index(tmp_path / "idx"), minilm)
    assert ids(searcher, "painful swollen big toe", "deep")[0] == "gout"
    assert "flu" not in ids(searcher, "flu", "deep", k=50)
    rebuilt = sync(corpus, tmp_path / "idx", minilm, rebuild=True)
    index = open_index(tmp_path / "idx")
    assert rebuilt.added == 8
    assert index.manifest["dead_chunks"] == 0
    assert index.backend_name == backend
    assert ids(Searcher(index, minilm), "painful swollen big toe", "fast")[0] == "gout"
    if backend == "qdrant":  # the rebuild wrote a collection of its own and dropped the one it replaced
        assert [c.name for c in index.backend.client.get_collections().collections] == [index.backend.collection]


@pytest.mark.parametrize("tier", TIERS)
def test_a_narrow_filter_still_returns_k_matching_documents(live_index, minilm, tier):
    searcher = Searcher(open_index(live_index), minilm)
    hits = searcher.search(["chest pain when climbing stairs"], tier=tier, k=10, filters=["topic=symptom"])[0].hits
    assert len(hits) == 10
    assert all(h.metadata["topic"] == "symptom" for h in hits), "every hit matches topic=symptom"  # 11 of 187 documents match
    few = searcher.search(["pain"], tier=tier, k=10, filters=["topic=symptom", "id!=doc-004", "title!=Palpitations: a racing or fluttering heart"])[0].hits
    assert len(few) == 9
    assert {"doc-004", "doc-017"}.isdisjoint(h.id for h in few), "the filtered-out documents stay out"
    assert searcher.search(["pain"], tier=tier, k=10, filters=["topic=nothing-has-this"])[0].hits == []


def test_filters_on_numbers_sources_and_deleted_documents(tmp_path, minilm, backend):
    docs = [
        {"id": f"d{i}", "title": f"Leaflet {i}", "text": f"Advice leaflet number {i} about blood pressure.", "year": 2015 + i,
         "source": "MedlinePlus" if i % 2 else "NHS"}
        for i in range(10)
    ] + [{"id": "csv-like", "text": "A leaflet about blood pressure with a year stored as text.", "year": "2019"}]
    build_index(write_jsonl(tmp_path / "d.jsonl", docs), tmp_path / "idx", minilm,
                backend=backend_settings(backend, tmp_path))
    searcher = Searcher(open_index(tmp_path / "idx"), minilm)
    found = lambda *filters: sorted(ids(searcher, "blood pressure", "deep", k=50, filters=list(filters)))  # noqa: E731
    assert found("year>=2020", "year<=2022") == ["d5", "d6", "d7"]
    assert found("year=2019") == ["csv-like", "d4"]  # a number and the same number as text
    assert found("year>=2024") == ["d9"]
    assert found("source=MedlinePlus", "year<=2018") == ["d1", "d3"]
    assert found("source!=MedlinePlus") == ["csv-like", "d0", "d2", "d4", "d6", "d8"]
    delete(tmp_path / "idx", ["d1"])
    assert found("source=MedlinePlus", "year<=2018") == ["d3"]


@pytest.mark.parametrize("bad, message", [
    ("topic", "malformed filter 'topic'"),
    ("=symptom", "malformed filter '=symptom'"),
    ("topic!symptom", "malformed filter 'topic!symptom'"),
    ("year<2020", "malformed filter 'year<2020'"),
    ("topic=", "no value after '='"),
    ("year>=soon", "'>=' needs a number, not 'soon'"),
    ("year<=nan", "needs a finite number"),
    ("colour=red", "unknown filter field 'colour' \\(fields of this index: id, title, source, url, topic\\)"),
])
def test_bad_filters(live_index, minilm, bad, message):
    searcher = Searcher(open_index(live_index), minilm)
    with pytest.raises(BadInputError, match=message):
        searcher.search(["fever"], filters=[bad])


def test_one_writer_at_a_time(live_index, minilm):
    with generations.writer_lock(live_index):
        with pytest.raises(MedsearchError, match=r"is being written by pid \d+; try again when it has finished"):
            upsert(live_index, [ZORBLAX], minilm)
        with pytest.raises(MedsearchError, match="is being written"):
            delete(live_index, ["doc-001"])
    assert upsert(live_index, [ZORBLAX], minilm).added == 1  # the lock is free again


def test_a_write_that_dies_before_the_switch_changes_nothing(live_index, minilm, monkeypatch):
    searcher = Searcher(open_index(live_index), minilm)
    before = searcher.search([ZORBLAX_QUERY], tier="deep", k=10)[0].hits

    def crash(root, tmp, **options):
        raise RuntimeError("power cut")

    monkeypatch.setattr(generations, "commit", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        upsert(live_index, [ZORBLAX], minilm)
    monkeypatch.undo()
    after = Searcher(open_index(live_index), minilm).search([ZORBLAX_QUERY], tier="deep", k=10)[0].hits
    assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in before]
    assert sorted(p.name for p in live_index.iterdir()) == [".lock", "CURRENT", "gen-000001"]


def test_readers_keep_one_generation_while_a_writer_works(live_index, minilm):
    """Threads query while another thread adds and deletes: no errors, and every answer is the
    answer of one committed generation (each generation's answer computed afterwards)."""
    searcher = Searcher(open_index(live_index), minilm)
    query = "purple spots on the knees and fever"
    vector = minilm.encode_queries([query])
    answers, errors, stop = [], [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                ranked, _ = searcher.search_vectors(vector, tier="fast", k=5)
                answers.append(tuple(row for row, _ in ranked[0]))
            except Exception as err:  # noqa: BLE001 (any error fails the test below)
                errors.append(repr(err))

    expected = set()

    def committed_answer() -> None:  # each generation's answer, read while it is current
        index = open_index(live_index)
        ranked, _ = Searcher(index, None).search_vectors(vector, tier="fast", k=5, index=index)
        expected.add(tuple(row for row, _ in ranked[0]))
        index.close()

    committed_answer()
    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for i in range(4):
            upsert(live_index, [Document(id=f"z{i}", title="Zorblax fever", text=f"{ZORBLAX.text} Variant {i}.")], minilm)
            committed_answer()
            delete(live_index, [f"doc-{i + 1:03d}"])
            committed_answer()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors
    assert len(answers) > 10
    assert len(expected) >= 3
    assert set(answers) <= expected, "every answer is some generation's top 5"


def test_copying_an_index_folder_keeps_it_working(live_index, tmp_path, minilm):
    faiss_only(live_index, "a Qdrant index's folder names its collection: a copy shares it")
    upsert(live_index, [ZORBLAX], minilm)
    shutil.copytree(live_index, tmp_path / "copy")
    assert ids(Searcher(open_index(tmp_path / "copy"), minilm), ZORBLAX_QUERY, "fast")[0] == "zorblax"



def _raising(err: Exception):
    def fail(*args, **kwargs):
        raise err
    return fail


@pytest.mark.parametrize("where, err", [
    ("medsearch.index.writes.write_change", sqlite3.OperationalError("database or disk is full")),
    ("medsearch.index.backends.faiss.BinaryCodes.save", RuntimeError("Error in faiss::FileIOWriter: No space left on device")),
    ("medsearch.index.backends.faiss.BinaryCodes.save", OSError(errno.ENOSPC, "No space left on device")),
])
def test_a_full_disk_during_a_write_is_one_line_and_changes_nothing(built, tmp_path, monkeypatch, where, err):
    """SQLite and faiss say a full device in their own words (not an OSError): the generation writer
    turns each into one NoSpaceError line (HTTP 507), after leaving the index as it was; the same
    add then succeeds once there is room."""
    from click.testing import CliRunner

    from medsearch.cli import cli

    shutil.copytree(built["faiss"], tmp_path / "idx")
    before = open_index(tmp_path / "idx").generation
    add = write_jsonl(tmp_path / "more" / "more.jsonl",
                      [{"id": "zz", "title": "Zorblax", "text": "Zorblax causes purple spots on both knees."}])
    args = ["add", str(add), "--index", str(tmp_path / "idx")]
    monkeypatch.setattr(where, _raising(err))
    result = CliRunner().invoke(cli, args)
    monkeypatch.undo()
    lines = result.output.strip().splitlines()  # (progress bars above it, then the one error line)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.output
    assert "no space left on the device while writing a new generation; the index is unchanged" in lines[-1]
    assert open_index(tmp_path / "idx").generation == before
    assert not [p.name for p in (tmp_path / "idx").iterdir() if p.name.startswith(".tmp-")]
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and open_index(tmp_path / "idx").generation == before + 1, again.output
