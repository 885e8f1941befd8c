"""The HTTP API with FastAPI's TestClient: every route, every bad input, the token, CORS, loading."""

import threading

import pytest
from conftest import write_jsonl
from fastapi.testclient import TestClient

from medsearch.errors import MedsearchError, ModelMismatchError
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings

QUESTION = "what are the early signs of type 2 diabetes"


@pytest.fixture(scope="module")
def searcher(bundled_index, minilm):
    return Searcher(open_index(bundled_index), minilm)


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher, ServerSettings(max_query_chars=200, max_queries=5))) as client:
        yield client


def test_get_search_is_the_cli_json(client, searcher):
    response = client.get("/search", params={"q": QUESTION, "tier": "deep", "k": 5})
    assert response.status_code == 200
    body = response.json()
    (expected,) = searcher.search([QUESTION], tier="deep", k=5)
    expected = expected.to_json()
    assert list(body) == ["query", "results", "timings_ms"] == list(expected)
    assert [h["id"] for h in body["results"]] == [h["id"] for h in expected["results"]]
    assert body["results"][0]["title"] == "Type 2 diabetes: early signs"
    assert [h["score"] for h in body["results"]] == pytest.approx([h["score"] for h in expected["results"]], abs=1e-5)
    assert list(body["results"][0]) == ["id", "score", "title", "snippet", "url", "source", "metadata", "found_by", "first_stage_score", "rerank_score",
                                        "citation", "span", "highlights", "quote"]
    assert [(h["span"], h["highlights"]) for h in body["results"]] == [(h["span"], h["highlights"]) for h in expected["results"]]
    assert body["results"][0]["found_by"] == {"dense": 1, "lexical": 1}, "no mode named: hybrid, the index's default"
    assert body["results"][0]["metadata"] == {"topic": "condition"}
    assert body["results"][0]["source"] == "corpus.jsonl"
    assert set(body["timings_ms"]) == {"encode", "search", "rerank", "lexical", "fuse", "hydrate"}
    assert body["timings_ms"]["encode"] > 0


def test_modes_over_http_are_the_library_results(client, searcher):
    from medsearch.retrieval.fusion import Fusion

    question = "warfarin INR blood test"
    for mode, extra in (("lexical", {}), ("hybrid", {}), ("hybrid", {"fusion": "rrf", "rrf_k": 10}),
                        ("hybrid", {"dense_weight": 0.3})):
        body = client.get("/search", params={"q": question, "k": 5, "mode": mode, **extra}).json()
        fusion = Fusion(extra.get("fusion", "convex"), rrf_k=extra.get("rrf_k", 60), weight=extra.get("dense_weight", 0.7))
        (expected,) = searcher.search([question], k=5, mode=mode, fusion=fusion)
        assert [(h["id"], h["found_by"]) for h in body["results"]] == [(h.id, h.found_by) for h in expected.hits]
    lexical = client.get("/search", params={"q": question, "mode": "lexical"}).json()
    assert lexical["timings_ms"]["encode"] == 0
    assert "lexical" in lexical["timings_ms"]
    batch = client.post("/search", json={"queries": [{"text": question}, {"text": "wheezing at night"}], "mode": "hybrid", "k": 3}).json()
    assert all(len(r["results"]) == 3 for r in batch), "each query in the batch gets k=3 results"
    assert all("fuse" in r["timings_ms"] for r in batch), "hybrid mode times the fusion step"
    assert any(len(h["found_by"]) == 2 for h in batch[0]["results"])


@pytest.mark.parametrize("tier", ["fast", "light", "standard", "deep"])
def test_every_tier_and_a_stored_dim(client, tier):
    body = client.get("/search", params={"q": "wheezing at night", "tier": tier, "k": 3}).json()
    assert len(body["results"]) == 3
    by_dim = client.get("/search", params={"q": "wheezing at night", "dim": 128, "k": 3}).json()
    light = client.get("/search", params={"q": "wheezing at night", "tier": "light", "k": 3}).json()
    assert [h["id"] for h in by_dim["results"]] == [h["id"] for h in light["results"]]


def test_post_batch_keeps_order_and_ids(client):
    queries = [{"id": "q1", "text": "burning when I pee"}, {"id": 7, "text": QUESTION}, {"text": "migraine with aura"}]
    response = client.post("/search", json={"queries": queries, "tier": "fast", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert [r["query_id"] for r in body] == ["q1", "7", "3"]
    assert [r["query"] for r in body] == [q["text"] for q in queries]
    single = client.get("/search", params={"q": QUESTION, "k": 4}).json()
    assert [h["id"] for h in body[1]["results"]] == [h["id"] for h in single["results"]]
    assert all(len(r["results"]) == 4 for r in body)


def test_documents_info_and_probes(client):
    doc = client.get("/documents/doc-020").json()
    assert doc["title"] == "Type 2 diabetes: early signs"
    assert len(doc["text"]) > 200
    assert set(doc) == {"id", "title", "text", "url", "source", "metadata", "layout"}
    assert doc["layout"] is None  # a JSONL record: no pages or sections
    info = client.get("/info").json()
    assert info["documents"] == 187
    assert info["tier_dims"]["fast"] == 64
    assert "docs.db" in info["files"]
    assert client.get("/livez").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["documents"] == 187
    spec = client.get("/openapi.json").json()
    assert {"/search", "/documents/{doc_id}", "/info", "/readyz"} <= set(spec["paths"])
    assert "<title>" in client.get("/docs").text


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<label for="q"' in page.text
    assert "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_document_ids_with_slashes(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "guides/asthma.md", "title": "Asthma guide", "text": "Use the reliever inhaler when wheezy."},
        {"id": "plain", "title": "Plain", "text": "Drink water when thirsty.", "url": "https://example.org/x"},
    ])
    build_index(corpus, tmp_path / "idx", minilm)
    with TestClient(create_app(Searcher(open_index(tmp_path / "idx"), minilm))) as client:
        assert client.get("/documents/guides/asthma.md").json()["title"] == "Asthma guide"
        assert client.get("/documents/guides%2Fasthma.md").json()["title"] == "Asthma guide"
        assert client.get("/documents/plain").json()["url"] == "https://example.org/x"


@pytest.mark.parametrize(
    "method, url, body, status, message",
    [
        ("GET", "/search?q=", None, 400, "empty query: give some text to search for"),
        ("GET", "/search?q=%20%20%09", None, 400, "empty query"),
        ("GET", "/search", None, 400, "query parameter q: Field required"),
        ("GET", "/search?q=" + "a" * 201, None, 400, "the query has 201 characters; the limit is 200"),
        ("GET", "/search?q=fever&tier=turbo", None, 400, "query parameter tier: Input should be 'fast', 'light', 'standard' or 'deep'"),
        ("GET", "/search?q=fever&k=0", None, 400, "query parameter k: Input should be greater than or equal to 1"),
        ("GET", "/search?q=fever&k=1001", None, 400, "query parameter k: Input should be less than or equal to 1000"),
        ("GET", "/search?q=fever&k=ten", None, 400, "query parameter k: Input should be a valid integer"),
        ("GET", "/search?q=fever&dim=100", None, 400, "dim 100 is not stored in"),
        ("GET", "/search?q=fever&mode=semantic", None, 400, "query parameter mode: Input should be 'dense', 'lexical' or 'hybrid'"),
        ("GET", "/search?q=fever&mode=hybrid&dense_weight=1.5", None, 400, "query parameter dense_weight: Input should be less than or equal to 1"),
        ("GET", "/search?q=fever&mode=hybrid&fusion=max", None, 400, "query parameter fusion: Input should be 'rrf' or 'convex'"),
        ("POST", "/search", {"queries": [{"text": "fever"}], "mode": "bm25"}, 400, "mode: Input should be"),
        ("GET", "/search?q=fever&oversample=0", None, 400, "query parameter oversample: Input should be greater than or equal to 1"),
        ("POST", "/search", b'{"queries": [', 400, "malformed JSON body"),
        ("POST", "/search", b"[1, 2]", 400, "request body: Input should be a valid dictionary"),
        ("POST", "/search", b"", 400, "request body: a JSON object is required"),
        ("POST", "/search", {"queries": []}, 400, "queries: List should have at least 1 item"),
        ("POST", "/search", {"queries": [{"text": "x"}] * 6}, 400, "6 queries in one request; the limit is 5"),
        ("POST", "/search", {"queries": [{"id": "a", "text": "fever"}, {"id": "b", "text": " "}]}, 400, "empty query (query b)"),
        ("POST", "/search", {"queries": [{"id": "a", "text": "b" * 201}]}, 400, "query a has 201 characters; the limit is 200"),
        ("POST", "/search", {"queries": [{"text": "fever"}], "k": 5000}, 400, "k: Input should be less than or equal to 1000"),
        ("POST", "/search", {"queries": [{"text": "fever"}], "tier": "turbo"}, 400, "tier: Input should be"),
        ("POST", "/search", {"queries": [{"txt": "fever"}]}, 400, "queries.0.text: Field required"),
        ("POST", "/search", {"queries": ["fever"]}, 400, "queries.0: Input should be a valid dictionary"),
        ("GET", "/documents/no-such-doc", None, 404, "no document with id 'no-such-doc'"),
        ("GET", "/nowhere", None, 404, "no route /nowhere"),
        ("DELETE", "/search", None, 405, "Method Not Allowed"),
    ],
)
def test_bad_input_gets_a_4xx_json_error(client, method, url, body, status, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    if isinstance(body, bytes):
        kwargs["headers"] = {"Content-Type": "application/json"}
    response = client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_body_over_the_limit_is_refused_unread(searcher):
    with TestClient(create_app(searcher, ServerSettings(max_body_bytes=100))) as client:
        response = client.post("/search", json={"queries": [{"text": "x" * 200}]})
        assert response.status_code == 413
        assert "the limit is 100" in response.json()["error"]


def test_token(searcher):
    with TestClient(create_app(searcher, ServerSettings(token="s3cret"))) as client:
        for path in ("/search?q=fever", "/info", "/documents/doc-020", "/openapi.json", "/docs"):
            missing = client.get(path)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"].startswith("missing bearer token")
            wrong = client.get(path, headers={"Authorization": "Bearer s3cre"})
            assert wrong.status_code == 401
            assert wrong.json()["error"].startswith("wrong token")
            assert client.get(path, headers={"Authorization": "Basic s3cret"}).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        post = client.post("/search", json={"queries": [{"text": "fever"}]})
        assert post.status_code == 401
        for public in ("/livez", "/readyz", "/", "/static/app.js"):  # probes, and the page (it holds no data)
            assert client.get(public).status_code == 200


def test_cors_off_by_default_and_one_origin_when_set(searcher, client):
    preflight = {"Origin": "https://intranet.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.get("/search?q=fever", headers={"Origin": "https://intranet.example"}).headers
    with TestClient(create_app(searcher, ServerSettings(cors_origin="https://intranet.example", token="t"))) as cors:
        answer = cors.options("/search", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://intranet.example"
        other = cors.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_not_ready_until_loaded_then_ready(searcher):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return searcher

    with TestClient(create_app(slow_load, ServerSettings(warm_up=False))) as client:
        assert client.get("/livez").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json() == {"error": "loading the model and index"}
        busy = client.get("/search?q=fever")
        assert busy.status_code == 503
        assert "still loading" in busy.json()["error"]
        assert busy.headers["retry-after"], "a 503 while loading says when to retry"
        release.set()
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/search?q=fever").status_code == 200


def test_a_failed_load_is_reported_and_stops_the_server(tmp_path):
    failures = []

    def bad_load():
        raise ModelMismatchError("index built with another model", tmp_path, "other")

    with TestClient(create_app(bad_load, on_load_error=failures.append)) as client:
        for _ in range(200):
            if failures:
                break
            threading.Event().wait(0.05)
        assert [str(f) for f in failures] == ["index built with another model"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"] == "cannot serve: index built with another model"
        answer = client.get("/search?q=fever")  # 503 with the reason, whatever the kind of error
        assert answer.status_code == 503 and "index built with another model" in answer.json()["error"]


def test_a_load_that_fails_unexpectedly_is_logged_and_answered_503_with_its_reason(caplog):
    """Before, an exception that was not medsearch's own left the service 'still loading' forever, unlogged."""
    failures = []

    def broken():
        raise OSError("Input/output error reading dim64.faiss")

    with TestClient(create_app(broken, on_load_error=failures.append)) as client:
        for _ in range(200):
            if failures:
                break
            threading.Event().wait(0.05)
        answer = client.get("/search?q=fever")
    assert answer.status_code == 503 and "OSError: Input/output error" in answer.json()["error"]
    assert failures and any("loading failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad, message", [
    ({"max_batch": 0}, "max_batch must be at least 1"),
    ({"batch_wait_ms": -1}, "batch_wait_ms must be at least 0"),
    ({"token": "  "}, "the token is empty"),
    ({"search_threads": 0}, "search_threads must be at least 1"),
])
def test_settings_are_validated(searcher, bad, message):
    with pytest.raises(MedsearchError, match=message):
        create_app(searcher, ServerSettings(**bad))


@pytest.fixture
def writable(tmp_path, bundled_index, minilm):
    import shutil

    shutil.copytree(bundled_index, tmp_path / "idx")
    searcher = Searcher(open_index(tmp_path / "idx"), minilm)
    settings = ServerSettings(writable=True, warm_up=False, token="t")
    with TestClient(create_app(searcher, settings), headers={"Authorization": "Bearer t"}) as client:
        yield client, tmp_path / "idx"


def test_writes_over_http_show_up_in_the_next_search(writable):
    client, _ = writable
    new = {"id": "zorblax", "title": "Zorblax fever", "text": "Zorblax fever paints purple spots on both knees.", "topic": "condition"}
    added = client.post("/documents", json={"documents": [new]})
    assert added.status_code == 200
    assert added.json() == {
        "added": 1, "updated": 0, "unchanged": 0, "deleted": 0, "compacted": False, "generation": 2, "documents": 188}
    for tier in ("fast", "deep"):
        assert client.get("/search", params={"q": "purple spots on the knees", "tier": tier}).json()["results"][0]["id"] == "zorblax"
    assert client.get("/documents/zorblax").json()["metadata"] == {"topic": "condition"}
    again = client.post("/documents", json={"documents": [new]}).json()
    assert again["unchanged"] == 1
    assert again["generation"] is None
    gone = client.delete("/documents/zorblax")
    assert gone.status_code == 200
    assert gone.json()["deleted"] == 1
    assert gone.json()["documents"] == 187
    ids = [h["id"] for h in client.get("/search", params={"q": "purple spots on the knees", "k": 200}).json()["results"]]
    assert "zorblax" not in ids
    assert len(ids) == 187
    assert client.get("/documents/zorblax").status_code == 404
    assert client.get("/info").json()["generation"] == 3


def test_a_write_by_another_process_is_picked_up_without_restart(writable, minilm):
    from medsearch.index.writes import delete

    client, path = writable
    assert client.get("/search", params={"q": QUESTION, "k": 1}).json()["results"][0]["id"] == "doc-020"
    delete(path, ["doc-020"])  # e.g. `medsearch delete doc-020` while the service runs
    assert client.get("/search", params={"q": QUESTION, "k": 1}).json()["results"][0]["id"] != "doc-020"
    assert client.get("/info").json()["documents"] == 186


@pytest.mark.parametrize("method, url, body, status, message", [
    ("POST", "/documents", {"documents": [{"id": "x"}]}, 400, "document 1: missing or empty 'text' field"),
    ("POST", "/documents", {"documents": [{"text": "no id"}]}, 400, "document 1: missing or empty 'id'"),
    ("POST", "/documents", {"documents": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]}, 400, "duplicate document id 'a'"),
    ("POST", "/documents", {"documents": []}, 400, "documents: List should have at least 1 item"),
    ("POST", "/documents", {"documents": ["text"]}, 400, "documents.0: Input should be a valid dictionary"),
    ("DELETE", "/documents/nope", None, 404, "no document with id 'nope'"),
])
def test_bad_writes(writable, method, url, body, status, message):
    client, _ = writable
    response = client.request(method, url, json=body) if body is not None else client.request(method, url)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_read_only_by_default_and_filters_over_http(client):
    for response in (client.post("/documents", json={"documents": [{"id": "a", "text": "t"}]}), client.delete("/documents/doc-020")):
        assert response.status_code == 403
        assert "start it with --writable" in response.json()["error"]
    hits = client.get("/search", params=[("q", "chest pain"), ("filter", "topic=symptom"), ("tier", "deep")]).json()["results"]
    assert len(hits) == 10
    assert all(h["metadata"]["topic"] == "symptom" for h in hits), "every hit matches topic=symptom"
    posted = client.post("/search", json={"queries": [{"text": "chest pain"}], "filters": ["topic=symptom", "id!=doc-004"]}).json()
    assert len(posted[0]["results"]) == 10
    assert "doc-004" not in [h["id"] for h in posted[0]["results"]]
    bad = client.get("/search", params=[("q", "chest pain"), ("filter", "colour=red")])
    assert bad.status_code == 400
    assert "unknown filter field 'colour'" in bad.json()["error"]


@pytest.mark.parametrize("field", ["k", "rerank", "dense_weight"])
def test_json_true_is_not_a_number_in_a_search_body(client, field):
    """A hostile review: {"rerank": true} was taken as rerank 1 (pydantic's lax mode)."""
    answer = client.post("/search", json={"queries": [{"text": "fever"}], field: True})
    assert answer.status_code == 400 and field in answer.json()["error"] and "not true or false" in answer.json()["error"]
