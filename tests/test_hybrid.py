"""Lexical and hybrid search: BM25 over the index's chunks, fusion, the living index, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import BUNDLED, SMALL_DOCS, write_jsonl

from medsearch.cli import cli
from medsearch.documents.corpus import Document
from medsearch.errors import BadInputError, IndexFormatError
from medsearch.index import layout
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.writes import compact, delete, upsert
from medsearch.retrieval.fusion import Fusion, fuse
from medsearch.retrieval.search import Searcher

# ---- fusion, by hand ----

def test_rrf_by_hand():
    lists = {"dense": [(1, 10, 0.9), (2, 20, 0.8), (3, 30, 0.7)], "lexical": [(3, 31, 9.0), (4, 40, 5.0)]}
    got = fuse(lists, Fusion("rrf", rrf_k=60), k=4)
    assert [row for row, _, _ in got] == [30, 10, 20, 40]  # doc 3: 1/63 + 1/61 beats doc 1's 1/61
    assert got[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert got[0][2] == {"dense": 3, "lexical": 1}
    assert got[1][1] == pytest.approx(1 / 61)
    assert got[1][2] == {"dense": 1}
    # a tie in the fused score goes to the better best rank: doc 2 (dense #2) before doc 4 (lexical #2)
    assert got[2][1] == pytest.approx(got[3][1])
    assert got[3][2] == {"lexical": 2}
    assert len(fuse(lists, Fusion("rrf"), k=2)) == 2


def test_convex_by_hand():
    lists = {"dense": [(1, 10, 0.9), (2, 20, 0.5), (3, 30, 0.4)], "lexical": [(3, 31, 12.0), (2, 21, 2.0)]}
    got = {row: score for row, score, _ in fuse(lists, Fusion("convex", weight=0.7), k=3)}
    # dense normalised: 1, 0.2, 0; lexical: doc 3 -> 1, doc 2 -> 0
    assert got[10] == pytest.approx(0.7)
    assert got[20] == pytest.approx(0.7 * 0.2)
    assert got[30] == pytest.approx(0.3)
    only_lexical = fuse(lists, Fusion("convex", weight=0.0), k=1)
    assert only_lexical[0][0] == 30


def test_bad_fusion_settings():
    for fusion, pattern in [(Fusion("max"), "unknown fusion 'max'"), (Fusion(weight=1.5), "between 0 and 1"),
                            (Fusion(rrf_k=-1), "0 or more"), (Fusion(depth=0), "at least 1")]:
        with pytest.raises(BadInputError, match=pattern):
            fusion.check()


# ---- over a real index ----

@pytest.fixture(scope="module")
def small_index(tmp_path_factory, minilm):
    corpus = write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", SMALL_DOCS)
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(corpus, path, minilm, vector_dtype="float32")
    return path


def test_lexical_search_ranks_by_exact_terms(small_index):
    searcher = Searcher(open_index(small_index), None)  # no model needed for lexical search
    (result,) = searcher.search(["haemoglobin"], mode="lexical", k=3)
    assert [h.id for h in result.hits] == ["anemia"]  # the only document with that word
    assert result.hits[0].found_by == {"lexical": 1}
    assert result.timings_ms["encode"] == 0
    (result,) = searcher.search(["the of and"], mode="lexical")  # only stop words: nothing matches
    assert result.hits == []
    (result,) = searcher.search(["headaches"], mode="lexical")  # stemmed: headache(s)
    assert result.hits[0].id == "migraine"
    with pytest.raises(BadInputError, match="needs a model"):
        searcher.search(["fever"], mode="dense")


def test_lexical_collapses_chunks_and_fills_k(small_index):
    searcher = Searcher(open_index(small_index), None)
    (result,) = searcher.search(["heart failure weight"], mode="lexical", k=3)
    ids = [h.id for h in result.hits]
    assert ids[0] == "hf-guide"
    assert len(ids) == len(set(ids))  # its many chunks count once


def test_hybrid_lists_say_who_found_each_hit(small_index, minilm):
    searcher = Searcher(open_index(small_index), minilm)
    (hybrid,) = searcher.search(["burning pee antibiotics"], mode="hybrid", k=4)
    (dense,) = searcher.search(["burning pee antibiotics"], mode="dense", k=4)
    (lexical,) = searcher.search(["burning pee antibiotics"], mode="lexical", k=4)
    assert hybrid.hits[0].id == "uti"
    assert set(hybrid.hits[0].found_by) == {"dense", "lexical"}
    for hit in hybrid.hits:  # every rank it reports is the rank that list gives
        for name, rank in hit.found_by.items():
            single = dense if name == "dense" else lexical
            if rank <= len(single.hits):
                assert single.hits[rank - 1].id == hit.id
    assert {"encode", "search", "rerank", "lexical", "fuse"} <= set(hybrid.timings_ms)


@pytest.mark.parametrize("tier", ["fast", "light", "standard", "deep"])
def test_hybrid_works_on_every_tier_with_filters(small_index, minilm, tier):
    searcher = Searcher(open_index(small_index), minilm)
    (result,) = searcher.search(["heart failure"], mode="hybrid", tier=tier, k=5, filters=["section=cardiology"])
    assert [h.id for h in result.hits] == ["hf-guide"]
    (result,) = searcher.search(["heart failure"], mode="lexical", k=5, filters=["id!=hf-guide"])
    assert "hf-guide" not in [h.id for h in result.hits]


def test_bad_mode(small_index, minilm):
    searcher = Searcher(open_index(small_index), minilm)
    with pytest.raises(BadInputError, match="unknown mode 'semantic'"):
        searcher.search(["fever"], mode="semantic")


def test_living_index_keeps_lexical_in_step(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "docs.jsonl", SMALL_DOCS)
    path = tmp_path / "index"
    build_index(corpus, path, minilm)
    searcher = Searcher(open_index(path), minilm)
    new = Document(id="gout", title="Gout", text="Gout is sudden joint pain from urate crystals, often in the big toe.")
    upsert(path, [new], minilm)
    assert searcher.search(["urate crystals"], mode="lexical")[0].hits[0].id == "gout"  # a new generation, rebuilt
    delete(path, ["gout", "anemia"])
    index = open_index(path)
    assert (index.folder / "lexical").is_dir()
    assert index.manifest["dead_chunks"] > 0
    for mode in ("lexical", "hybrid"):
        ids = [h.id for r in searcher.search(["urate crystals haemoglobin"], mode=mode, k=10) for h in r.hits]
        assert "gout" not in ids
        assert "anemia" not in ids
    compact(path)
    assert open_index(path).manifest["dead_chunks"] == 0
    assert searcher.search(["haemoglobin"], mode="lexical")[0].hits == []
    assert searcher.search(["asthma inhalers"], mode="lexical")[0].hits[0].id == "asthma"


def test_an_index_without_lexical_says_rebuild(tmp_path, small_index):
    copy = tmp_path / "old"
    shutil.copytree(small_index, copy)
    folder = open_index(copy).folder
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["lexical"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="no lexical index"):
        Searcher(open_index(copy), None).search(["fever"], mode="lexical")
    out = CliRunner().invoke(cli, ["query", "fever", "--index", str(copy), "--mode", "hybrid"])
    assert out.exit_code == 1
    assert "no lexical index" in out.output
    assert "--rebuild" in out.output
    assert out.output.strip().count("\n") == 0
    out = CliRunner().invoke(cli, ["query", "fever", "--index", str(copy), "--json"])
    assert out.exit_code == 0, "without a lexical index a query that names no mode is dense"
    assert json.loads(out.output)["timings_ms"].keys() == {"encode", "search", "rerank", "hydrate"}


def test_a_query_that_names_no_mode_is_hybrid_where_there_is_a_lexical_index(small_index, minilm):
    searcher = Searcher(open_index(small_index), minilm)
    default = searcher.search(["haemoglobin blood count"], k=3)[0]
    hybrid = searcher.search(["haemoglobin blood count"], k=3, mode="hybrid")[0]
    dense = searcher.search(["haemoglobin blood count"], k=3, mode="dense")[0]
    assert [(h.id, h.score) for h in default.hits] == [(h.id, h.score) for h in hybrid.hits]
    assert any("lexical" in h.found_by for h in default.hits), "a default query uses BM25 too"
    assert all(set(h.found_by) == {"dense"} for h in dense.hits), "an explicit mode wins"
    assert open_index(small_index).describe()["default_mode"] == "hybrid"


def test_query_cli_modes(small_index):
    out = CliRunner().invoke(cli, ["query", "haemoglobin", "--index", str(small_index), "--mode", "lexical", "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert record["results"][0]["id"] == "anemia"
    assert record["results"][0]["found_by"] == {"lexical": 1}
    out = CliRunner().invoke(cli, ["query", "haemoglobin blood count", "--index", str(small_index), "--mode", "hybrid",
                                   "--fusion", "convex", "--dense-weight", "0.6", "-k", "2"])
    assert out.exit_code == 0, out.output
    assert "dense #" in out.output, out.output
    assert "lexical #" in out.output, out.output
    for args, pattern in [(["--mode", "semantic"], "Invalid value for '--mode'"),
                          (["--dense-weight", "2"], "not in the range"), (["--fusion", "max"], "Invalid value for '--fusion'")]:
        out = CliRunner().invoke(cli, ["query", "fever", "--index", str(small_index), *args])
        assert out.exit_code == 2, out.output
        assert pattern in out.output, out.output


def test_an_index_fuses_as_its_models_tuning_chose_unless_a_query_says_otherwise(tmp_path):
    """A model folder's medsearch_search.json (written by `medsearch tune`) sets its indexes' fusion."""
    import os

    from conftest import SMALL_DOCS, write_jsonl

    from medsearch.encoding.encoder import Encoder
    from medsearch.encoding.loading import default_model_path
    from medsearch.errors import ModelLoadError

    model = tmp_path / "tuned"
    shutil.copytree(default_model_path(), model, copy_function=os.symlink)
    (model / "medsearch_search.json").write_text(json.dumps({"fusion": {"method": "rrf", "rrf_k": 5}}))
    encoder = Encoder(str(model), device="cpu")
    corpus = write_jsonl(tmp_path / "docs.jsonl", SMALL_DOCS)
    build_index(corpus, tmp_path / "index", encoder)
    index = open_index(tmp_path / "index")
    assert index.manifest.fusion == Fusion(method="rrf", rrf_k=5)
    searcher = Searcher(index, encoder)
    query = "wheezing and short of breath at night"

    def ranked(**options):
        return [(h.id, round(h.score, 6)) for h in searcher.search([query], k=5, **options)[0].hits]

    assert ranked() == ranked(mode="hybrid", fusion=Fusion(method="rrf", rrf_k=5)), "the model's fusion by default"
    assert ranked() != ranked(mode="hybrid", fusion=Fusion()), "not the library's default"
    flagged = CliRunner().invoke(cli, ["query", query, "--index", str(tmp_path / "index"), "--model", str(model),
                                       "--runtime", "torch", "--dense-weight", "0.7", "-k", "5", "--json"])
    assert flagged.exit_code == 0, flagged.output
    assert [(h["id"], round(h["score"], 6)) for h in json.loads(flagged.output)["results"]] == ranked(
        mode="hybrid", fusion=Fusion(weight=0.7)), "a fusion flag replaces the index's fusion"
    (model / "medsearch_search.json").write_text(json.dumps({"fusion": {"method": "borda"}}))
    with pytest.raises(ModelLoadError, match="not a fusion setting"):
        _ = Encoder(str(model), device="cpu").search_defaults


def test_a_write_tokenizes_only_its_own_chunks_and_bm25_equals_a_fresh_build(tmp_path, minilm):
    import zipfile

    from medsearch.index import lexical
    from medsearch.index.store import DocStore

    path = tmp_path / "idx"
    build_index(BUNDLED / "corpus.jsonl", path, minilm)
    first = open_index(path).folder
    changed = [{"id": "doc-001", "title": "Changed", "text": "Gout inflames the big toe joint."},
               {"id": "new-1", "title": "Shingles", "text": "A painful blistering rash along one nerve."}]
    upsert(path, [Document(**d) for d in changed], minilm)
    delete(path, ["doc-002"])
    upsert(path, [Document(id="new-2", title="Croup", text="A barking cough in young children.")], minilm)
    index = open_index(path)
    with zipfile.ZipFile(index.folder / layout.LEXICAL_DIR / layout.TOKENS) as saved:
        assert {"ids.npy", "offsets.npy", "vocab.npy"} <= set(saved.namelist())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    store = DocStore(index.folder / "docs.db")
    lexical.write_lexical(fresh, store.passages(index.manifest.chunks))
    kept, rebuilt = lexical.Lexical(index.folder), lexical.Lexical(fresh)
    for query in ["gout toe", "barking cough", "rash nerve", "chest pain", "diabetes thirst", "the"]:
        assert np.array_equal(kept.scores(query), rebuilt.scores(query)), query
    assert first != index.folder


def test_damaged_token_ids_stop_a_write_in_one_line(tmp_path, minilm, small_corpus):

    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    tokens = open_index(path).folder / layout.LEXICAL_DIR / layout.TOKENS
    data = bytearray(tokens.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tokens.write_bytes(bytes(data))
    write_jsonl(tmp_path / "add.jsonl", [{"id": "gout", "text": "Uric acid crystals inflame a joint."}])
    result = CliRunner().invoke(cli, ["add", str(tmp_path / "add.jsonl"), "--index", str(path), "-q"])
    assert result.exit_code == 1
    assert "lexical/tokens.npz differs from the checksum its commit recorded: the index is damaged" in result.output
    assert "Traceback" not in result.output


def test_unreadable_token_ids_of_an_unrecorded_generation_are_tokenized_again(tmp_path, minilm, small_corpus):

    path = tmp_path / "idx"
    build_index(small_corpus, path, minilm)
    folder = open_index(path).folder
    (folder / layout.CHECKSUMS).unlink()  # a generation from before checksums
    (folder / layout.LEXICAL_DIR / layout.TOKENS).write_bytes(b"PK\x03\x04 not a zip")
    upsert(path, [Document(id="gout", text="Uric acid crystals inflame a joint.")], minilm)
    hits = Searcher.open(path, load_model=False).search(["uric acid joint"], mode="lexical", k=1)[0].hits
    assert hits[0].id == "gout"
