"""The service as users run it: a real uvicorn server on loopback, concurrent clients, the
`medsearch serve` process with its probes, token and graceful SIGTERM, and its bad input."""

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from conftest import BUNDLED
from servers import free_port, get, start_serve, uvicorn_thread, wait_ready

from medsearch.cli import cli
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings

QUERIES = [json.loads(line)["text"] for line in open(BUNDLED / "queries.jsonl")]


@pytest.fixture(scope="module")
def searcher(bundled_index, minilm):
    return Searcher(open_index(bundled_index), minilm)


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_clients_get_the_answers_of_sequential_search(searcher, batching):
    """24 clients at once, mixed tiers: each gets what Searcher.search gives that query alone;
    with batching on, the 24 queries took far fewer encoder passes."""
    jobs = [(QUERIES[i], ("fast", "deep", "light")[i % 3]) for i in range(24)]
    expected = [searcher.search([q], tier=tier, k=10)[0] for q, tier in jobs]
    app = create_app(searcher, ServerSettings(batching=batching, batch_wait_ms=20))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        start = threading.Barrier(len(jobs))

        def ask(job):
            query, tier = job
            start.wait()
            return get(port, "/search?" + __import__("urllib.parse").parse.urlencode({"q": query, "tier": tier}))

        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(ask, jobs))
        batcher = app.state.service.batcher
    assert [status for status, _ in answers] == [200] * len(jobs)
    for (_, body), want in zip(answers, expected):
        assert [h["id"] for h in body["results"]] == [h.id for h in want.hits]
        assert [h["score"] for h in body["results"]] == pytest.approx([h.score for h in want.hits], abs=1e-4)
    if batching:
        assert batcher.texts == len(jobs)
        assert batcher.passes <= len(jobs) // 3
    else:
        assert batcher.passes == len(jobs)


def test_serve_process_probes_token_and_graceful_sigterm(bundled_index, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    port = free_port()
    process = start_serve("--index", str(bundled_index), "--port", str(port), "--token-file", str(tmp_path / "token"))
    try:
        seen = wait_ready(port, process)
        assert seen[-1] == 200
        assert all(s in (200, 503) for s in seen), f"only 200 or 503 while starting: {seen}"
        auth = {"Authorization": "Bearer s3cret"}
        assert get(port, "/search?q=fever")[0] == 401
        status, body = get(port, "/search?q=what+are+the+early+signs+of+type+2+diabetes&k=3", auth)
        assert status == 200
        assert body["results"][0]["title"] == "Type 2 diabetes: early signs"

        # A slow batch in flight when SIGTERM arrives still gets its answer; then the process exits.
        long_queries = [{"id": i, "text": ((QUERIES[i] + " ") * 12)[:990]} for i in range(32)]
        answer = {}

        def slow_batch():
            import http.client

            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/search", body=json.dumps({"queries": long_queries, "tier": "deep"}),
                               headers={**auth, "Content-Type": "application/json"})
            response = connection.getresponse()
            answer["status"], answer["body"] = response.status, json.loads(response.read())

        client = threading.Thread(target=slow_batch)
        client.start()
        time.sleep(0.3)
        assert "status" not in answer, "the batch finished before SIGTERM: make it slower"
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        client.join(60)
        process.wait(15)
        assert time.monotonic() - stopped < 10
        assert answer["status"] == 200
        assert len(answer["body"]) == 32
        assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_bad_input(tmp_path, bundled_index):
    def error_of(*args):
        result = CliRunner().invoke(cli, ["serve", *map(str, args)])
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("Error: "), result.output
        assert "Traceback" not in result.output, result.output
        return lines[-1]

    assert f"no index at {tmp_path / 'none'}; build one with: medsearch index CORPUS --index" in error_of("--index", tmp_path / "none")
    assert "'--token-file': file not found" in error_of("--index", bundled_index, "--token-file", tmp_path / "nope")
    (tmp_path / "empty").write_text("  \n")
    assert "'--token-file'" in error_of("--index", bundled_index, "--token-file", tmp_path / "empty")
    assert "Invalid value for '--port'" in error_of("--index", bundled_index, "--port", "70000")
    assert "Invalid value for '--batch-wait-ms'" in error_of("--index", bundled_index, "--batch-wait-ms", "-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in error_of("--index", bundled_index, "--port", port)


def test_serve_exits_when_the_model_does_not_match(bundled_index, tiny1024_path):
    port = free_port()
    process = start_serve("--index", str(bundled_index), "--port", str(port), "--model", tiny1024_path)
    try:
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "was built with model" in stderr
