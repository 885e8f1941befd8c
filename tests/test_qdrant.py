"""The Qdrant backend against qdrant-client's local mode (the official client's in-process engine;
no mock): the same answers as FAISS, the CLI and the service over a Qdrant index, point ids and
payloads, and what goes wrong (bad options, an unreachable server, a held local folder, no extra).
The behaviour both backends share runs in the shared suite (tests/test_updates.py, test_search.py)."""

import json
import subprocess
import sys
import textwrap
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import BUNDLED
from servers import free_port, get, uvicorn_thread
from test_cli import assert_one_line_error, run

from medsearch.errors import BackendUnavailableError, MissingExtraError
from medsearch.index.backends import qdrant, qdrant_payloads
from medsearch.index.backends.base import prefix
from medsearch.index.folder import open_index
from medsearch.index.manifest import Manifest
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings
from medsearch.training.evaluation import ir_metrics, load_benchmark, search_runs

QUERIES = [json.loads(line) for line in open(BUNDLED / "queries.jsonl")]


def test_deep_equals_faiss_and_fast_stays_within_one_percent_of_deep(bundled_index, bundled_qdrant_index, minilm):
    """The issue's bar on the bundled questions, through the library (the CLI is the same code)."""
    faiss_searcher = Searcher(open_index(bundled_index), minilm)
    qdrant_searcher = Searcher(open_index(bundled_qdrant_index), minilm)
    bench = load_benchmark(BUNDLED)
    qids = list(bench.queries)
    texts = [bench.queries[q] for q in qids]
    vectors = minilm.encode_queries(texts)
    doc_ids = faiss_searcher.index.store.doc_ids()
    runs = {}
    for name, searcher in (("faiss", faiss_searcher), ("qdrant", qdrant_searcher)):
        for tier in ("deep", "fast"):
            runs[name, tier], _ = search_runs(searcher, vectors, texts, qids, doc_ids, 10, tier=tier)
    same = np.mean([[d for d, _ in runs["faiss", "deep"][q]] == [d for d, _ in runs["qdrant", "deep"][q]] for q in qids])
    assert same >= 0.99
    for q in qids:  # the same documents get the same scores (cosine of the same vectors)
        np.testing.assert_allclose([s for _, s in runs["qdrant", "deep"][q]], [s for _, s in runs["faiss", "deep"][q]],
                                   atol=1e-4)
    deep, fast = (ir_metrics(runs["qdrant", tier], bench)["ndcg@10"] for tier in ("deep", "fast"))
    assert fast >= 0.99 * deep


def test_cli_index_query_every_tier_and_info(tmp_path):
    index, store = tmp_path / "idx", tmp_path / "qdrant"
    result = run("index", BUNDLED, "--index", index, "--backend", "qdrant", "--qdrant-path", store,
                 "--collection", "guides", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Indexed 187 documents" in result.output
    assert "Fast tier:" in result.output
    manifest = open_index(index).manifest
    assert manifest["backend"]["collection"].startswith("guides-")
    assert manifest["backend"]["path"] == str(store.resolve())
    assert set(manifest["index_types"].values()) == {"qdrant"}
    assert not (index / "gen-000001" / "vectors.npy").exists()
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES[:5]))
    for tier in ("fast", "light", "standard", "deep"):
        result = run("query", "--queries", queries, "--index", index, "--tier", tier, "--json")  # only --index
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines()]
        assert [line["query_id"] for line in lines] == [q["_id"] for q in QUERIES[:5]]
        assert all(len(line["results"]) == 10 for line in lines), tier
    result = run("query", "diabetes", "--index", index, "--filter", "topic=symptom", "--json", "-k", "3")
    assert [r["metadata"]["topic"] for r in json.loads(result.output)["results"]] == ["symptom"] * 3
    info = run("info", "--index", index)
    assert f"qdrant collection '{manifest['backend']['collection']}' at local mode {store.resolve()}" in info.output
    again = run("index", BUNDLED, "--index", index, "--qdrant-path", store, "--quiet")  # no --collection: the index's
    assert "unchanged 187" in again.output, again.output
    assert "nothing to write" in again.output, again.output
    assert open_index(index).manifest["backend"] == manifest["backend"]


@pytest.mark.parametrize("args, message", [
    (["--collection", "x"], "--collection need a location: --qdrant-url or --qdrant-path"),
    (["--backend", "faiss", "--qdrant-path", "q"], "--qdrant-path only go with --backend qdrant"),
    (["--backend", "qdrant"], "--backend qdrant needs a location"),
    (["--qdrant-url", "http://a:6333", "--qdrant-path", "q"], "give one of --qdrant-url and --qdrant-path"),
    (["--qdrant-path", "q", "--collection", "two words"], "collection name 'two words'"),
    (["--qdrant-path", "q", "--shards", "0"], "--shards"),
    (["--qdrant-url", "not a url"], "Qdrant server 'not a url' is not an http(s) URL"),
    (["--qdrant-url", "http://qdrant:port"], "is not an http(s) URL"),
    (["--ray-address", "auto"], "--ray-address and --ray-actors go with --ray"),
])
def test_cli_backend_options_errors(tmp_path, args, message):
    result = run("index", BUNDLED, "--index", tmp_path / "idx", *args)
    assert_one_line_error(result, message)
    assert not (tmp_path / "idx").exists()


def test_an_unreachable_server_is_one_line_and_writes_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run("index", BUNDLED, "--index", tmp_path / "idx", "--qdrant-url", url, "--quiet")
    assert_one_line_error(result, f"cannot reach Qdrant at {url}")
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_a_local_folder_held_by_another_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from qdrant_client import QdrantClient
        client = QdrantClient(path={str(tmp_path / 'q')!r})
        print('open', flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(BackendUnavailableError, match="is open in another process"):
            qdrant.client_for(qdrant.settings("c", path=tmp_path / "q"))
    finally:
        holder.kill()
        holder.wait()


def test_point_ids_payloads_and_named_vectors(bundled_qdrant_index, bundled_index):
    index = open_index(bundled_qdrant_index)
    client, collection = index.backend.client, index.backend.collection
    version = index.store.hashes()["doc-020"]
    assert qdrant.point_id("doc-020", 0, version) != qdrant.point_id("doc-020", 1, version)
    assert qdrant.point_id("doc-020", 0, version) != qdrant.point_id("doc-020", 0, "another version")
    (point,) = client.retrieve(collection, [qdrant.point_id("doc-020", 0, version)], with_vectors=True)
    row = point.payload["row"]
    assert point.payload["id"] == "doc-020"
    assert point.payload["position"] == 0
    assert point.payload["metadata"] == index.store.document("doc-020")["metadata"]
    assert index.chunk_doc[row] == point.payload["doc"]
    assert point.payload["text"] in index.store.document("doc-020")["text"]
    assert set(point.vector) == {"d64", "d128", "full"}
    full = open_index(bundled_index).backend.vectors[row][None, :]  # the FAISS index of the same corpus, same row order
    np.testing.assert_allclose(point.vector["full"], full[0], atol=1e-3)
    np.testing.assert_allclose(point.vector["d64"], prefix(full, 64)[0], atol=1e-3)
    config = client.get_collection(collection).config.params.vectors
    assert config["full"].hnsw_config.m == 0  # full: re-scoring only, no graph
    assert config["d64"].size == 64


def test_payload_numbers_read_numbers_as_the_sql_filter_does():
    [p] = qdrant_payloads.payloads([{"row": 0, "position": 0, "text": "t", "doc": 0, "id": "7", "title": "T", "source": "",
                            "url": "", "metadata": {"year": "2019", "dose": 2.5, "flag": True, "name": "n1",
                                                    "date": "2019-05-01", "huge": "1e999", "list": [1]}}])
    # SQLite's CAST reads the longest numeric prefix ("2019-05-01" -> 2019); JSON holds no infinity;
    # a boolean is no number (`flag<=1` never matches true)
    assert p["numbers"] == {"year": 2019.0, "dose": 2.5, "date": 2019.0, "id": 7.0}


def test_service_over_a_qdrant_index_answers_concurrent_clients(bundled_qdrant_index, minilm):
    searcher = Searcher(open_index(bundled_qdrant_index), minilm)
    jobs = [(QUERIES[i]["text"], ("fast", "deep", "light")[i % 3]) for i in range(12)]
    expected = [searcher.search([q], tier=tier, k=10)[0] for q, tier in jobs]
    with uvicorn_thread(create_app(searcher, ServerSettings(batch_wait_ms=10))) as url:
        port = int(url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: get(port, "/search?" + urllib.parse.urlencode(
                {"q": job[0], "tier": job[1]})), jobs))
    assert [status for status, _ in answers] == [200] * len(jobs)
    for (_, body), want in zip(answers, expected):
        assert [h["id"] for h in body["results"]] == [h.id for h in want.hits]


def test_a_missing_extra_names_it(monkeypatch, tmp_path):
    settings = {**qdrant.settings("c", path=tmp_path), "collection": "c-1"}
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'medsearch\[qdrant\]'"):
        qdrant.QdrantBackend(None, Manifest(backend=settings, full_dim=384, index_types={"64": "qdrant", "384": "qdrant"}))
    result = run("index", BUNDLED, "--index", tmp_path / "idx", "--qdrant-path", tmp_path / "q", "--quiet")
    assert_one_line_error(result, "needs the 'qdrant' extra")
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_a_faiss_index_moves_to_qdrant_without_encoding(bundled_index, tmp_path, minilm, monkeypatch):
    import shutil

    from medsearch.index.writes import sync

    shutil.copytree(bundled_index, tmp_path / "idx")
    faiss_hits = Searcher(open_index(tmp_path / "idx"), minilm).search([QUERIES[0]["text"]], tier="deep")[0].hits
    monkeypatch.setattr(minilm, "encode_passages", lambda *a, **k: pytest.fail("nothing should be encoded"))
    report = sync(BUNDLED, tmp_path / "idx", minilm, backend=qdrant.settings("moved", path=tmp_path / "q"))
    monkeypatch.undo()  # (a search may encode sentences for its quotes)
    assert report.moved_to == "qdrant"
    assert report.unchanged == 187
    assert "vectors moved to qdrant" in report.summary()
    index = open_index(tmp_path / "idx")
    assert index.backend_name == "qdrant"
    assert index.backend.count() == 204
    assert index.generation == 2
    hits = Searcher(index, minilm).search([QUERIES[0]["text"]], tier="deep")[0].hits
    assert [h.id for h in hits] == [h.id for h in faiss_hits]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in faiss_hits], atol=1e-5)


def test_a_write_that_died_before_its_switch_leaves_no_points_behind(tmp_path, memo_minilm, minilm, monkeypatch):
    """Points are written before the switch; a crash leaves them past the generation's rows, where
    searches skip them, and the next write deletes them before it numbers its own rows from there."""
    from medsearch.documents.corpus import Document
    from medsearch.index import generations
    from medsearch.index.build import build_index
    from medsearch.index.writes import upsert

    build_index(BUNDLED, tmp_path / "idx", memo_minilm, backend=qdrant.settings("t", path=tmp_path / "q"))
    crashed = Document(id="zorblax", title="Zorblax fever", text="Zorblax fever paints purple spots on both knees.")
    monkeypatch.setattr(generations, "commit", lambda root, tmp, **options: (_ for _ in ()).throw(RuntimeError("power cut")))
    with pytest.raises(RuntimeError, match="power cut"):
        upsert(tmp_path / "idx", [crashed], minilm)
    monkeypatch.undo()
    index = open_index(tmp_path / "idx")
    assert index.backend.count() == 205
    assert index.chunks == 204  # the orphan point is there, past the rows
    searcher = Searcher(index, minilm)
    for tier in ("fast", "deep"):
        assert "zorblax" not in [h.id for h in searcher.search(["purple spots on both knees"], tier=tier)[0].hits]
    upsert(tmp_path / "idx", [Document(id="gout", title="Gout", text="Gout is a painful swollen big toe joint.")], minilm)
    index = open_index(tmp_path / "idx")
    assert index.backend.count() == 205
    assert index.chunks == 205  # the orphan went; the new row took its number
    searcher = Searcher(index, minilm)
    assert searcher.search(["painful swollen big toe"], tier="deep")[0].hits[0].id == "gout"
    assert "zorblax" not in [h.id for h in searcher.search(["purple spots on both knees"], tier="deep", k=200)[0].hits]


@pytest.mark.parametrize("write", ["replace", "delete"])
def test_a_replace_or_delete_that_dies_before_its_switch_leaves_the_old_version_answering(
        tmp_path, memo_minilm, minilm, monkeypatch, write):
    """The old version's points stay until the new generation is committed: a crash before the
    switch leaves dense search answering exactly as before."""
    from medsearch.documents.corpus import Document
    from medsearch.index import generations
    from medsearch.index.build import build_index
    from medsearch.index.writes import delete, upsert

    build_index(BUNDLED, tmp_path / "idx", memo_minilm, backend=qdrant.settings("t", path=tmp_path / "q"))
    query = "what are the early signs of type 2 diabetes"
    before = Searcher(open_index(tmp_path / "idx"), minilm).search([query], tier="deep")[0].hits
    assert before[0].id == "doc-020"
    monkeypatch.setattr(generations, "commit", lambda root, tmp, **options: (_ for _ in ()).throw(RuntimeError("power cut")))
    changed = Document(id="doc-020", title="Knitting", text="Casting on stitches for a wool scarf.")
    with pytest.raises(RuntimeError, match="power cut"):
        upsert(tmp_path / "idx", [changed], minilm) if write == "replace" else delete(tmp_path / "idx", ["doc-020"])
    monkeypatch.undo()
    searcher = Searcher(open_index(tmp_path / "idx"), minilm)
    for tier in ("fast", "deep"):
        after = searcher.search([query], tier=tier)[0].hits
        assert [(h.id, round(h.score, 5)) for h in after][:3] == [(h.id, round(h.score, 5)) for h in before][:3]
    upsert(tmp_path / "idx", [changed], minilm) if write == "replace" else delete(tmp_path / "idx", ["doc-020"])
    index = open_index(tmp_path / "idx")
    assert index.backend.count() == index.live_chunks  # the old version's points went after the switch
    hits = Searcher(index, minilm).search([query], tier="deep", k=200)[0].hits
    assert ("doc-020" in [h.id for h in hits]) == (write == "replace")
    if write == "replace":
        assert "wool scarf" in next(h.snippet for h in hits if h.id == "doc-020")
