"""Operations: the service's Prometheus metrics and its request logs, on real servers on loopback
(uvicorn in a thread, and `medsearch serve` as a process), scraped and parsed with prometheus-client's
own parser.

- /metrics: counters move by what was done between two scrapes (5 searches: +5), the stage and
  latency histograms are there, the token guards it, an unknown path adds no label value, the
  index's gauges are the manifest's numbers and follow a write;
- request logs: one line per request with route, status and ms, never the query text unless
  --log-queries; --log-format json; --metrics-port serves the metrics without the token.
"""

import http.client
import json
import shutil
import signal
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, start_serve, uvicorn_thread, wait_ready

from medsearch.errors import MedsearchError
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "zebra-quokka-7731 chest pain"  # a query text that must not reach a log by default


def request(port: int, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, str, str]:
    """(status, content type, body text) of one request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {**(headers or {}), **({"Content-Type": "application/json"} if body is not None else {})}
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, response.getheader("Content-Type", ""), text


def scrape(port: int, headers: dict | None = AUTH, path: str = "/metrics") -> list:
    """Every sample of a scrape: (name, labels, value)."""
    status, content_type, text = request(port, "GET", path, headers=headers)
    assert status == 200, text
    assert content_type.startswith("text/plain")
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list, name: str, **labels) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for n, got, v in samples if n == name and labels.items() <= got.items())


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def searcher(bundled_index, minilm):
    return Searcher(open_index(bundled_index), minilm)


@pytest.fixture(scope="module")
def server(searcher):
    """A read-only service with a token; yields (port, app)."""
    app = create_app(searcher, ServerSettings(token=TOKEN, warm_up=False))
    with uvicorn_thread(app) as url:
        yield port_of(url), app


def test_five_searches_move_the_search_counter_by_five(server):
    port, _ = server
    before = scrape(port)
    assert {"mode": "lexical", "tier": "standard"} in [labels for n, labels, _ in before if n == "medsearch_search_queries_total"], \
        "every mode and tier's series exists before its first query"
    for params in ("q=fever+and+cough", "q=chest+pain&tier=deep&mode=dense", "q=warfarin+INR&mode=lexical"):
        assert request(port, "GET", f"/search?{params}", headers=AUTH)[0] == 200
    batch = {"queries": [{"text": "early signs of diabetes"}, {"text": "asthma inhaler"}], "tier": "light"}
    assert request(port, "POST", "/search", batch, AUTH)[0] == 200
    after = scrape(port)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("medsearch_search_queries_total") == 5, "3 GET + a POST of 2 queries"
    assert moved("medsearch_search_queries_total", mode="dense", tier="deep") == 1
    assert moved("medsearch_search_queries_total", mode="lexical") == 1
    assert moved("medsearch_search_queries_total", tier="light") == 2
    assert moved("medsearch_http_requests_total", route="/search", method="GET", status="200") == 3
    assert moved("medsearch_http_requests_total", route="/search", method="POST", status="200") == 1
    assert moved("medsearch_http_request_duration_seconds_count", route="/search") == 4
    # each stage that ran, once per query: nothing is encoded in lexical mode, everything is hydrated
    assert moved("medsearch_search_stage_duration_seconds_count", stage="encode") == 4
    assert moved("medsearch_search_stage_duration_seconds_count", stage="hydrate") == 5
    assert moved("medsearch_search_stage_duration_seconds_count", stage="lexical") == 4, "every query but the dense one"
    for stage in ("encode", "hydrate", "search"):
        buckets = [s for s in after if s[0] == "medsearch_search_stage_duration_seconds_bucket" and s[1]["stage"] == stage]
        assert buckets and buckets[-1][1]["le"] == "+Inf", f"no buckets for stage {stage}"
    # the 4 texts encoded went through the micro-batcher, in at least one pass
    assert moved("medsearch_encoder_batch_size_sum") == 4
    assert 1 <= moved("medsearch_encoder_batch_size_count") <= 4
    assert value(after, "medsearch_encoder_queue_depth") == 0


def test_metrics_need_the_token_and_labels_stay_bounded(server, searcher):
    port, _ = server
    assert request(port, "GET", "/metrics")[0] == 401
    assert request(port, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(port, "GET", "/search?q=fever")[0] == 401
    doc_id = searcher.index.store.document("doc-001")["id"]
    assert request(port, "GET", f"/documents/{doc_id}", headers=AUTH)[0] == 200
    assert request(port, "GET", "/nope", headers=AUTH)[0] == 404
    before = scrape(port)
    for junk in ("/zebra/quokka/7731", "/documents-x", "/search/extra", "/metrics/doc-001"):
        assert request(port, "GET", junk, headers=AUTH)[0] in (404, 405)
    text = request(port, "GET", "/metrics", headers=AUTH)[2]
    after = scrape(port)
    routes = {labels["route"] for name, labels, _ in after if "route" in labels}
    assert routes == {labels["route"] for name, labels, _ in before if "route" in labels}, "no new route label value"
    assert {"/search", "/documents/{doc_id}", "/metrics", "other"} <= routes
    assert value(after, "medsearch_http_requests_total", route="other") - value(before, "medsearch_http_requests_total", route="other") >= 3
    assert value(after, "medsearch_http_requests_total", route="/search", status="401") >= 1, "a refused request keeps its route"
    for leak in ("zebra", "quokka", doc_id, "fever"):
        assert leak not in text


def test_index_gauges_are_the_manifest_and_follow_a_write(tmp_path, bundled_index, minilm, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="medsearch.access")
    path = tmp_path / "idx"
    shutil.copytree(bundled_index, path)
    app = create_app(Searcher(open_index(path), minilm), ServerSettings(token=TOKEN, writable=True, warm_up=False))

    def expected():
        index = open_index(path)
        manifest = index.manifest
        return {"generation": index.generation, "documents": manifest.documents, "chunks": manifest.chunks,
                "live_chunks": manifest.live_chunks, "dead_chunks": manifest.dead_chunks,
                "bytes": sum(index.files().values())}

    def gauges(samples):
        return {name: value(samples, f"medsearch_index_{name}") for name in expected()}

    with uvicorn_thread(app) as url:
        port = port_of(url)
        first = scrape(port)
        assert gauges(first) == expected()
        assert gauges(first)["generation"] == 1 and gauges(first)["documents"] == 187
        (info,) = [labels for name, labels, _ in first if name == "medsearch_info"]
        assert info["backend"] == "faiss" and info["runtime"] == "torch" and info["version"]
        assert "all-MiniLM-L6-v2" in info["model"] and "/" not in info["model"], "a model name, never a path"

        new = {"id": "zorblax", "title": "Zorblax fever", "text": "Zorblax fever paints purple spots on both knees."}
        assert request(port, "POST", "/documents", {"documents": [new]}, AUTH)[0] == 200
        added = scrape(port)
        assert gauges(added) == expected()
        assert gauges(added)["generation"] == 2 and gauges(added)["documents"] == 188
        assert request(port, "DELETE", "/documents/doc-001", headers=AUTH)[0] == 200
        deleted = scrape(port)
        assert gauges(deleted) == expected()
        assert gauges(deleted)["dead_chunks"] > 0 and gauges(deleted)["documents"] == 187
        assert value(deleted, "medsearch_writes_total", kind="upsert", outcome="ok") == 1
        assert value(deleted, "medsearch_writes_total", kind="delete", outcome="ok") == 1
        assert value(deleted, "medsearch_write_duration_seconds_count") == 2
        assert request(port, "GET", "/search?q=" + SECRET.replace(" ", "+"), headers=AUTH)[0] == 200

    lines = {(r.access["method"], r.access["route"]): r.access for r in caplog.records if hasattr(r, "access")}
    upsert = lines[("POST", "/documents")]
    assert (upsert["status"], upsert["kind"], upsert["documents"], upsert["generation"]) == (200, "upsert", 1, 2)
    assert lines[("DELETE", "/documents/{doc_id}")]["generation"] == 3
    search = lines[("GET", "/search")]
    assert search["queries"] == 1 and search["query_chars"] == [len(SECRET)] and search["hits"] == 10
    assert search["generation"] == 3 and search["mode"] == "hybrid" and search["tier"] == "fast"
    assert "query" not in search
    logged = json.dumps([r.access for r in caplog.records if hasattr(r, "access")]) + caplog.text
    assert "zebra" not in logged and "zorblax" not in logged and "doc-001" not in logged, "no text, no document id"


@pytest.mark.parametrize("bad, message", [
    ({"log_format": "xml"}, "unknown log format 'xml'"),
    ({"metrics_port": 0}, "metrics_port must be a port number from 1 to 65535; got 0"),
    ({"metrics_port": 70000}, "metrics_port must be a port number"),
])
def test_log_and_metrics_settings_are_validated(searcher, bad, message):
    with pytest.raises(MedsearchError, match=message):
        create_app(searcher, ServerSettings(**bad))


def test_serve_refuses_bad_log_and_metrics_flags(bundled_index):
    """One line, no traceback, before any model loads (a taken metrics port too)."""
    import socket

    from click.testing import CliRunner

    from medsearch.cli import cli

    def error_of(*args):
        result = CliRunner().invoke(cli, ["serve", "--index", str(bundled_index), *map(str, args)])
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        return result.output.strip().splitlines()[-1]

    assert "Invalid value for '--log-format': 'xml' is not one of 'text', 'json'" in error_of("--log-format", "xml")
    assert "Invalid value for '--metrics-port'" in error_of("--metrics-port", "0")
    assert "the metrics port 8123 is the service's own port" in error_of("--port", "8123", "--metrics-port", "8123")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot serve the metrics on 127.0.0.1:{port} (port in use)" in error_of("--port", free_port(), "--metrics-port", port)


def run_serve(bundled_index, tmp_path, *args: str) -> tuple[str, str, dict]:
    """`medsearch serve` with a token and ARGS: a GET and a POST /search of SECRET, then SIGTERM; its
    stderr, its stdout (where uvicorn writes its access log), and what the requests answered."""
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    process = start_serve("--index", str(bundled_index), "--port", str(port), "--token-file", str(tmp_path / "token"), *args)
    try:
        wait_ready(port, process)
        got = {"get": request(port, "GET", "/search?k=3&q=" + SECRET.replace(" ", "%20"), headers=AUTH)[0],
               "post": request(port, "POST", "/search", {"queries": [{"text": SECRET}, {"text": "fever"}], "k": 3}, AUTH)[0]}
        if "--metrics-port" in args:
            metrics_port = int(args[args.index("--metrics-port") + 1])
            got["sidecar"] = scrape(metrics_port, headers=None, path="/")
            got["api"] = request(port, "GET", "/metrics")[0]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return stderr, stdout, got


def test_serve_logs_requests_without_their_text_and_serves_metrics_on_a_side_port(bundled_index, tmp_path):
    """Default log settings (at --log-level debug, where uvicorn's access log used to write GET
    /search?q=...): the lines name route, status and ms, never the query."""
    metrics_port = free_port()
    stderr, stdout, got = run_serve(bundled_index, tmp_path, "--log-level", "debug", "--metrics-port", str(metrics_port))
    assert got["get"] == got["post"] == 200
    for output in (stderr, stdout):
        assert "zebra" not in output and "quokka" not in output, output
    lines = [line for line in stderr.splitlines() if "route=/search" in line]
    assert len(lines) == 2, stderr
    get, post = lines
    assert get.startswith("time=") and " method=GET route=/search status=200 ms=" in get
    assert f"queries=1 query_chars=[{len(SECRET)}] hits=3 generation=1 mode=hybrid tier=fast" in get
    assert " method=POST route=/search status=200 " in post and f"query_chars=[{len(SECRET)},5] hits=6" in post
    # the side port answers without the token; the API's /metrics still wants it
    assert value(got["sidecar"], "medsearch_search_queries_total") == 3
    assert value(got["sidecar"], "medsearch_http_requests_total", route="/search", status="200") == 2
    assert got["api"] == 401


def test_serve_json_lines_with_queries(bundled_index, tmp_path):
    stderr, _, got = run_serve(bundled_index, tmp_path, "--log-format", "json", "--log-queries")
    assert got["get"] == got["post"] == 200
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    searches = [line for line in lines if line["route"] == "/search"]
    assert [line["method"] for line in searches] == ["GET", "POST"], stderr
    get, post = searches
    assert list(get) == ["time", "method", "route", "status", "ms", "queries", "query_chars", "query", "hits",
                         "generation", "mode", "tier"]
    assert get["time"].endswith("Z") and datetime.fromisoformat(get["time"].replace("Z", "+00:00"))
    assert (get["status"], get["queries"], get["query"], get["hits"]) == (200, 1, [SECRET], 3)
    assert isinstance(get["ms"], float) and get["ms"] > 0
    assert post["query"] == [SECRET, "fever"] and post["query_chars"] == [len(SECRET), 5]
    assert all(set(line) >= {"time", "method", "route", "status", "ms"} for line in lines)
    assert any(line["route"] == "/readyz" for line in lines)


@pytest.mark.parametrize("formatter", ["text", "json"])
def test_a_query_cannot_break_or_forge_a_log_line(formatter):
    """With --log-queries, a query holding a newline, a carriage return, an escape sequence, a Unicode
    line separator, NEL or a C1 control character stays on its one line, with nothing raw."""
    import logging

    from medsearch.server.access import JsonFormatter, TextFormatter

    hostile = "fever\n time=x status=200\r\x1b[2J\u2028\u0085\x9b31m é"
    record = logging.LogRecord("medsearch.access", logging.INFO, __file__, 1, "GET /search 200", None, None)
    record.access = {"method": "GET", "route": "/search", "status": 200, "query": [hostile]}
    line = (TextFormatter() if formatter == "text" else JsonFormatter()).format(record)
    assert line.isascii() and line.isprintable(), repr(line)
    if formatter == "json":
        assert json.loads(line)["query"] == [hostile]
    else:
        assert json.loads(line.split(" query=", 1)[1]) == [hostile]
