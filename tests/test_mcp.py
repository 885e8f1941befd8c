"""`medsearch mcp` as an MCP client runs it: one server process for the module, started and spoken to
through the SDK's own stdio client and ClientSession (from a blocking portal, so the tests stay
plain functions). Its tools and their schemas, a search whose first hit is checked, a document read,
bad input that comes back as a one-line tool error while the server goes on answering, a write
seen without a restart, and nothing but the protocol on stdout and no query text on stderr."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

from anyio.from_thread import start_blocking_portal  # noqa: E402
from conftest import REPO  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from medsearch.documents.corpus import documents_from_records  # noqa: E402
from medsearch.index.writes import upsert  # noqa: E402
from medsearch.retrieval.options import OPTIONS  # noqa: E402
from medsearch.retrieval.search import Searcher  # noqa: E402

DIABETES = "what are the early signs of type 2 diabetes"
SECRET_QUERY = "zqx-private-words-4711 chest pain at night"  # must never reach the server's log


class Client:
    """A ClientSession driven from synchronous tests through an anyio portal."""

    def __init__(self, portal, session, errlog, problems):
        self.portal, self.session, self.errlog, self.problems = portal, session, errlog, problems

    def call(self, name: str, arguments: dict):
        return self.portal.call(self.session.call_tool, name, arguments)

    def search(self, **arguments) -> dict:
        result = self.call("search", arguments)
        assert not result.is_error, result.content[0].text
        return result.structured_content


@pytest.fixture(scope="module")
def mcp_index(bundled_index, tmp_path_factory):
    """A copy of the bundled index (one test writes to it)."""
    path = tmp_path_factory.mktemp("mcp") / "index"
    shutil.copytree(bundled_index, path, symlinks=True)
    return path


@pytest.fixture(scope="module")
def client(mcp_index, tmp_path_factory):
    errlog = tmp_path_factory.mktemp("mcp-log") / "stderr.log"
    env = {key: os.environ[key] for key in ("MEDSEARCH_CACHE", "MEDSEARCH_RUNTIME", "TOKENIZERS_PARALLELISM")
           if key in os.environ}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    params = StdioServerParameters(command=sys.executable, args=["-m", "medsearch", "mcp", "--index", str(mcp_index)],
                                   env=env, cwd=str(REPO))
    problems = []  # what the transport could not read as JSON-RPC (anything else on the server's stdout)

    async def on_message(message):
        if isinstance(message, Exception):
            problems.append(message)

    with open(errlog, "w") as log, start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(stdio_client(params, errlog=log)) as (read, write):
            session = ClientSession(read, write, read_timeout_seconds=120, message_handler=on_message)
            with portal.wrap_async_context_manager(session):
                portal.call(session.initialize)
                yield Client(portal, session, errlog, problems)


def test_lists_search_and_get_document_with_their_schemas(client):
    tools = {tool.name: tool for tool in client.portal.call(client.session.list_tools).tools}
    assert set(tools) == {"search", "get_document"}
    search = tools["search"].input_schema
    assert search["required"] == ["query"]
    # every option of the one options table, with the HTTP API's bounds, choices and help
    assert set(search["properties"]) == {"query", *(option.name for option in OPTIONS)}
    assert search["properties"]["k"]["minimum"] == 1 and search["properties"]["k"]["maximum"] == 1000
    assert search["properties"]["tier"]["enum"] == ["fast", "light", "standard", "deep"]
    assert search["properties"]["filters"]["type"] == "array"
    assert all(prop.get("description") for prop in search["properties"].values())
    assert tools["get_document"].input_schema["required"] == ["id"]
    assert tools["search"].annotations.read_only_hint is True


def test_search_puts_the_expected_document_first(client, mcp_index):
    found = client.search(query=DIABETES, k=3)
    assert found["query"] == DIABETES
    assert found["results"][0]["title"] == "Type 2 diabetes: early signs"
    assert len(found["results"]) == 3
    first = found["results"][0]
    assert {"id", "title", "snippet", "url", "source", "score", "metadata", "found_by"} <= set(first)
    # what `medsearch query --json` gives, field for field (timings apart)
    expected = Searcher.open(mcp_index, load_model=False).search([DIABETES], k=3, mode="lexical")[0].to_json()
    lexical = client.search(query=DIABETES, k=3, mode="lexical")
    assert [h["id"] for h in lexical["results"]] == [h["id"] for h in expected["results"]]
    assert lexical["results"] == expected["results"]
    # options and filters reach the search
    only = client.search(query="chest pain", k=5, tier="deep", filters=["topic=symptom"])
    assert len(only["results"]) == 5
    assert {h["metadata"]["topic"] for h in only["results"]} == {"symptom"}


def test_the_text_content_is_the_same_json(client):
    result = client.call("search", {"query": DIABETES, "k": 2})
    assert not result.is_error
    assert json.loads(result.content[0].text) == result.structured_content


def test_get_document_returns_the_whole_document(client, mcp_index):
    hit = client.search(query=DIABETES, k=1)["results"][0]
    result = client.call("get_document", {"id": hit["id"]})
    assert not result.is_error
    document = result.structured_content
    assert document["id"] == hit["id"] and document["title"] == hit["title"]
    assert {"id", "title", "text", "url", "source", "metadata"} <= set(document)  # (and whatever the store adds)
    original = next(json.loads(line) for line in open(REPO / "corpus" / "corpus.jsonl")
                    if json.loads(line)["_id"] == hit["id"])
    assert document["text"] == original["text"]  # the whole text, not a snippet
    assert len(document["text"]) > len(hit["snippet"].rstrip(" …"))


@pytest.mark.parametrize(("tool", "arguments", "message"), [
    ("search", {"query": ""}, "empty query: give some text to search for"),
    ("search", {"query": "   "}, "empty query: give some text to search for"),
    ("search", {"query": "fever", "k": 0}, "k: Input should be greater than or equal to 1"),
    ("search", {"query": "fever", "k": 100_000}, "k: Input should be less than or equal to 1000"),
    ("search", {"query": "fever", "k": "ten"}, "k: Input should be a valid integer"),
    ("search", {"query": "fever", "tier": "ultra"}, "tier: Input should be 'fast', 'light', 'standard' or 'deep'"),
    ("search", {"query": "fever", "filters": ["topic"]}, "malformed filter 'topic'"),
    ("search", {"query": "fever", "filters": ["colour=red"]}, "unknown filter field 'colour'"),
    ("search", {"query": "fever", "k": 1000, "oversample": 1000}, "k x oversample asks for 1000000 candidates"),
    ("search", {"query": "fever", "dim": 100}, "dim 100"),
    ("search", {"query": "fever", "rerank": 5}, "re-ranking needs a cross-encoder"),
    ("search", {"query": "fever\x00"}, "the query: "),
    ("search", {"query": "fever " * 400}, "the query has 2400 characters; the limit is 1000"),
    ("search", {}, "query: Field required"),
    ("get_document", {"id": "no-such-document"}, "no document with id 'no-such-document'"),
    ("get_document", {"id": ""}, "no document with id ''"),
])
def test_bad_input_is_a_one_line_tool_error_and_the_server_goes_on(client, tool, arguments, message):
    result = client.call(tool, arguments)
    assert result.is_error
    text = result.content[0].text
    assert message in text
    assert "\n" not in text and "Traceback" not in text and "Error executing tool" not in text
    assert client.search(query=DIABETES, k=1)["results"][0]["title"] == "Type 2 diabetes: early signs"


def test_a_write_is_searched_without_a_restart(client, mcp_index, minilm):
    record = {"id": "mcp-new", "title": "Chilblains", "text": "Chilblains are itchy, painful red or purple swellings "
              "on toes and fingers after exposure to cold, damp air; warm the skin slowly and keep it dry."}
    upsert(mcp_index, documents_from_records([record]), minilm)
    found = client.search(query="itchy purple swellings on my toes after the cold", k=3)
    assert found["results"][0]["id"] == "mcp-new"
    assert client.call("get_document", {"id": "mcp-new"}).structured_content["title"] == "Chilblains"


def test_stdout_is_the_protocol_alone_and_the_log_holds_no_query(client):
    assert client.search(query=SECRET_QUERY, k=2)["results"]
    assert client.call("search", {"query": SECRET_QUERY, "filters": ["colour=red"]}).is_error
    assert not client.problems, f"the server wrote something else than JSON-RPC on stdout: {client.problems}"
    log = client.errlog.read_text()
    assert "search: 2 hits" in log  # the log is there, and it counts
    assert "zqx-private-words" not in log and "chest pain" not in log and "Chilblains" not in log


def test_http_transport_needs_the_token(mcp_index, tmp_path):
    """--transport http: streamable HTTP on 127.0.0.1, 401 without the bearer token, the same tools with it."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from servers import free_port, get

    (tmp_path / "token").write_text("s3cret\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "medsearch", "mcp", "--index", str(mcp_index), "--transport", "http",
                                "--port", str(port), "--token-file", str(tmp_path / "token")],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"mcp exited with {process.returncode}: {process.stderr.read()}"
            assert time.monotonic() < deadline, "the http transport did not start"
            try:
                status, body = get(port, "/mcp", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        assert status == 401 and "bearer token" in body["error"]
        assert get(port, "/mcp", {"Authorization": "Bearer wrong"})[0] == 401

        async def session_calls():
            async with httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"}, timeout=60) as http:
                async with streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        tools = {tool.name for tool in (await session.list_tools()).tools}
                        found = await session.call_tool("search", {"query": DIABETES, "k": 3})
                        bad = await session.call_tool("search", {"query": "fever", "k": 0})
                        return tools, found, bad

        with start_blocking_portal() as portal:
            tools, found, bad = portal.call(session_calls)
        assert tools == {"search", "get_document"}
        assert found.structured_content["results"][0]["title"] == "Type 2 diabetes: early signs"
        assert bad.is_error and bad.content[0].text == "k: Input should be greater than or equal to 1"
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--transport", "http"], "--transport http needs a token: give --token-file FILE or set MEDSEARCH_TOKEN"),
    (["--token-file", "token.txt"], "--token-file goes with --transport http"),
    (["--transport", "http", "--token-file", "missing.txt"], "file not found: missing.txt"),
    (["--index", "no-such-index"], "no index at no-such-index; build one with: medsearch index CORPUS --index no-such-index"),
])
def test_mcp_command_refuses_in_one_line(arguments, message, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from medsearch.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDSEARCH_TOKEN", raising=False)
    monkeypatch.delenv("MEDSEARCH_INDEX", raising=False)
    (tmp_path / "token.txt").write_text("s3cret")
    result = CliRunner().invoke(cli, ["mcp", *arguments])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
