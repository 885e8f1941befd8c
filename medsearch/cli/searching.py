"""The commands that answer queries: query (and how it prints a result), serve (the HTTP API and
page) and mcp (the Model Context Protocol server)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import click

from medsearch.cli.group import cli
from medsearch.cli.options import (
    device_option,
    index_option,
    index_runtime_option,
    reranker_option,
    search_options,
)
from medsearch.documents.corpus import read_queries
from medsearch.retrieval.hits import QueryResult
from medsearch.retrieval.options import MAX_QUOTE_SENTENCES
from medsearch.retrieval.search import Searcher
from medsearch.server.settings import ServerSettings
from medsearch.version import __version__


@cli.command()
@click.argument("text", required=False)
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False), help="Batch mode: a .jsonl file (_id, text) or a text file with one query a line.")
@index_option
@search_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query (query_id, query, results[id, score, title, snippet, url, source, metadata, found_by], timings_ms).")
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@reranker_option
def query(text, queries_file, index_dir, options, as_json, model, device, runtime, reranker):
    """Search the index for TEXT, or for every query in --queries FILE (encoded in one pass).

    In hybrid mode each hit says which lists found it and at what rank (found_by)."""
    if (text is None) == (queries_file is None):
        raise click.UsageError("give a query TEXT or --queries FILE (one of them)")
    if queries_file:
        ids, texts = read_queries(queries_file)
    else:
        ids, texts = None, [text]
    # one library call: the queries checked (once, before a model loads), the index opened, searched
    for result in Searcher.query(index_dir, texts, options, query_ids=ids, model=model, device=device, runtime=runtime,
                                 reranker=reranker):
        if as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            _print_result(result)


def citation_line(citation: dict) -> str:
    """'leaflets/x.pdf, p. 3, Dosage > Children' (or the URL for a web page), "" when nothing is known."""
    place = [f"p. {citation['page']}"] if citation.get("page") else []
    if citation.get("section"):
        place.append(citation["section"])
    where = citation.get("url") or citation.get("source") or ""
    return ", ".join([where, *place] if where else place)


def _print_result(result: QueryResult) -> None:
    heading = f"[{result.query_id}] {result.query}" if result.query_id is not None else result.query
    click.secho(heading, bold=True)
    if not result.hits:
        click.echo("  (no results)")
    for rank, hit in enumerate(result.hits, start=1):
        lists = ", ".join(f"{name} #{place}" for name, place in hit.found_by.items()) if len(hit.found_by) > 1 or "dense" not in hit.found_by else ""
        click.echo(f"{rank:>3}. {hit.score:.4f}  {hit.title or '(untitled)'}  [{hit.id}]" + (f"  ({lists})" if lists else ""))
        click.echo(textwrap.fill(hit.snippet, width=100, initial_indent="       ", subsequent_indent="       "))
        if cited := citation_line(hit.citation):
            click.echo(f"       -- {cited}")
    timings = ", ".join(f"{key} {value:.1f} ms" for key, value in result.timings_ms.items())
    click.echo(f"     ({timings})\n")


@cli.command()
@index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="File holding a bearer token that every route but /livez, /readyz and the page needs (or set MEDSEARCH_TOKEN).")
@click.option("--cors-origin", default=None, help="Let pages from this one origin (e.g. https://intranet.example) call the API; CORS is off by default.")
@click.option("--batch-wait-ms", default=ServerSettings.batch_wait_ms, show_default=True, type=click.FloatRange(min=0), help="How long a query waits for others to share its encoder pass.")
@click.option("--max-batch", default=ServerSettings.max_batch, show_default=True, type=click.IntRange(min=1), help="Most queries in one encoder pass.")
@click.option("--encode-workers", default=None, type=click.IntRange(min=1), help="Encoder passes at once, each on cores / workers threads (torch threads, or one OpenVINO stream each) [default: 1 on the OpenVINO runtimes; 2 on torch, 1 on one core].")
@click.option("--no-batching", is_flag=True, help="One encoder call per request (for comparison).")
@click.option("--max-query-chars", default=ServerSettings.max_query_chars, show_default=True, type=click.IntRange(min=1), help="Longer queries get a 400.")
@click.option("--max-queries", default=ServerSettings.max_queries, show_default=True, type=click.IntRange(min=1), help="Most queries in one POST /search.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Threads per encoder pass [default: cores / encode workers].")
@click.option("--search-threads", default=None, type=click.IntRange(min=1), help="Threads for search and hydration, one faiss thread each [default: the machine's cores].")
@click.option("--writable", is_flag=True, help="Accept writes: POST /documents (add or replace) and DELETE /documents/ID; needs a token.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME", help="A Host header name the service answers (repeat; '*': any) [default: localhost, 127.0.0.1 and ::1 on a loopback address, any otherwise].")
@click.option("--max-pending", default=ServerSettings.max_pending, show_default=True, type=click.IntRange(min=1), help="Most queries waiting for the encoder, all requests together; a request that would go past it gets a 503 (one with more queries than that is taken when none wait).")
@click.option("--request-timeout", default=ServerSettings.request_timeout_s, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Seconds a search may wait and run before it gets a 503.")
@click.option("--read-timeout", default=ServerSettings.read_timeout_s, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Seconds a client has to send a whole request (headers and body); slower connections are closed.")
@click.option("--max-connections", default=ServerSettings.max_connections, show_default=True, type=click.IntRange(min=1), help="Connections at once; past it requests get a 503.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True, help="info and debug log one line per request (route, status, ms, counts; no query text); warning and above do not.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=ServerSettings.log_format, show_default=True, help="Request lines as key=value pairs, or one JSON object per line.")
@click.option("--log-queries", is_flag=True, help="Put the query text in the request lines (off by default: queries can be personal health information).")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535), help="Also serve the Prometheus metrics alone on 127.0.0.1:PORT, without a token (for a scraper on this host); /metrics on the API needs the token.")
@click.option("--snapshot-dir", default=None, type=click.Path(file_okay=False), help="Folder where POST /snapshot writes snapshots of the index (needs --writable); off by default.")
@click.option("--snapshot-keep", type=click.IntRange(min=1), default=ServerSettings.snapshot_keep, show_default=True,
              help="POST /snapshot keeps only the newest N snapshots of the index in --snapshot-dir.")
@click.option("--snapshot-key-file", type=click.Path(dir_okay=False), default=None,
              help="POST /snapshot signs its snapshots with the key in this file (see snapshot --key-file).")
@click.option("--snapshot-max-bytes", type=click.IntRange(min=1), default=ServerSettings.snapshot_max_bytes, show_default=True,
              help="POST /snapshot refuses once the index's snapshots in --snapshot-dir would pass this many bytes.")
@click.option("--quote-sentences", type=click.IntRange(0, MAX_QUOTE_SENTENCES), default=ServerSettings.quote_sentences,
              show_default=True, help="Sentences a search that names no quote_sentences may encode to quote the hits "
                                      "that share no term with the query (they cost encoder time all requests share; "
                                      "the search page asks for its own).")
@reranker_option
def serve(index_dir, host, port, model, device, runtime, token_file, cors_origin, batch_wait_ms, max_batch, encode_workers, no_batching,
          max_query_chars, max_queries, threads, search_threads, writable, allowed_hosts, max_pending, request_timeout,
          read_timeout, max_connections, log_level, log_format, log_queries, metrics_port, snapshot_dir, snapshot_keep,
          snapshot_max_bytes, snapshot_key_file, quote_sentences, reranker):
    """Serve the index over HTTP: the search page at /, the API at /search, /documents/ID, /info,
    probes at /livez and /readyz, Prometheus metrics at /metrics, OpenAPI at /docs.

    The model and index load once, in the background: /readyz answers 503 until they are ready.
    SIGTERM or Ctrl-C lets in-flight requests finish, then exits.
    """
    from medsearch.index.archive import read_key
    from medsearch.server.app import serve as run_server

    token = read_token(token_file)
    if writable and not token:
        raise click.UsageError("--writable needs a token: give --token-file FILE or set MEDSEARCH_TOKEN")
    settings = ServerSettings(
        token=token, cors_origin=cors_origin, batching=not no_batching, batch_wait_ms=batch_wait_ms,
        max_batch=max_batch, encode_workers=encode_workers, max_query_chars=max_query_chars, max_queries=max_queries,
        search_threads=search_threads, writable=writable, allowed_hosts=tuple(allowed_hosts) or None,
        max_pending=max_pending, request_timeout_s=request_timeout, read_timeout_s=read_timeout,
        max_connections=max_connections, log_format=log_format, log_queries=log_queries, metrics_port=metrics_port,
        snapshot_dir=snapshot_dir, snapshot_keep=snapshot_keep, snapshot_max_bytes=snapshot_max_bytes,
        snapshot_key=read_key(snapshot_key_file) if snapshot_key_file else None, quote_sentences=quote_sentences,
    )
    settings.validate()  # before the line that says it serves
    click.echo(f"medsearch {__version__}: serving {index_dir} on http://{host}:{port}"
               f" ({'token required' if token else 'no token'}; /readyz once the model is loaded)", err=True)
    run_server(index_dir, host=host, port=port, model=model, device=device, runtime=runtime, settings=settings,
               threads=threads, log_level=log_level, reranker=reranker)


def read_token(token_file: str | None) -> str | None:
    """The bearer token of `serve` and `mcp --transport http`: the file's (stripped; an empty or
    missing file is a usage error), else MEDSEARCH_TOKEN, else None."""
    if not token_file:
        return os.environ.get("MEDSEARCH_TOKEN") or None
    path = Path(token_file)
    if not path.is_file():
        raise click.BadParameter(f"file not found: {path}", param_hint="'--token-file'")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="'--token-file'")
    return token


@cli.command()
@index_option
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio: the client starts this command and speaks MCP on its stdin and stdout; http: streamable "
                   "HTTP on 127.0.0.1:PORT/mcp, every request needing the bearer token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="http: the port on 127.0.0.1.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="http: file holding the bearer token every request needs (or set MEDSEARCH_TOKEN).")
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@reranker_option
@click.option("--log-level", type=click.Choice(["error", "warning", "info", "debug"]), default="info", show_default=True,
              help="Log lines on stderr: info gives one a call (tool, hits, milliseconds; never the query or a document's text).")
def mcp(index_dir, transport, port, token_file, model, device, runtime, reranker, log_level):
    """Serve the index to LLM clients (Claude Desktop, IDEs, agents) over the Model Context Protocol:
    the tools `search` (a query and the search options of `medsearch query`; the hits as `query --json`
    gives them) and `get_document` (a document's whole text by id). Needs the mcp extra:
    pip install 'medsearch[mcp]'.

    \b
    medsearch mcp --index indexes/default                         stdio (the client starts it)
    medsearch mcp --transport http --token-file token.txt         http://127.0.0.1:8765/mcp

    To plug it into Claude Desktop (claude_desktop_config.json) or another MCP client, give the client
    a server whose command is `medsearch` (its full path when it is in a virtual environment) and whose
    args are ["mcp", "--index", "/path/to/index"]:

    \b
    {"mcpServers": {"medsearch": {"command": "medsearch", "args": ["mcp", "--index", "/path/to/index"]}}}

    The model and index load once, before the server answers; each search reads the index's newest
    generation, so writes (medsearch add, a writable service) show without a restart. Stdout carries
    the protocol alone; logs go to stderr.
    """
    from medsearch.mcp_server import run as run_mcp

    token = None
    if transport == "http":
        token = read_token(token_file)
        if not token:
            raise click.UsageError("--transport http needs a token: give --token-file FILE or set MEDSEARCH_TOKEN")
    elif token_file:
        raise click.UsageError("--token-file goes with --transport http")
    run_mcp(index_dir, transport, model=model, device=device, runtime=runtime, reranker=reranker, port=port,
            token=token, log_level=log_level)
