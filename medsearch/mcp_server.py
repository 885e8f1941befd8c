"""`medsearch mcp`: a Model Context Protocol server over an index, for LLM clients (Claude Desktop, IDEs,
agents), on the official `mcp` SDK (extra: mcp). A thin layer like the CLI and the HTTP API: two tools,
each one library call.

    search(query, tier, k, dim, oversample, filters, mode, rerank, fusion, ...)
        Searcher.search on one query: the JSON of `medsearch query --json` (QueryResult.to_json)
    get_document(id)
        the whole document, as GET /documents/{id} returns it

The search options are options.OPTIONS, with the HTTP API's types, bounds and help texts
(server.models.option_field). A bad input (a library error, or arguments the schema refuses) comes
back as a tool error holding one line; anything else as the SDK's generic tool error, the traceback on
stderr; either way the server goes on. The index is opened once; each search reads its newest
generation (Searcher follows a writer's commits), so the server never needs a restart.

Over stdio nothing but the protocol reaches stdout: loading the model runs with stdout pointed at
stderr, logging goes to stderr, and no line names a query or a document's text (counts and timings only).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from medsearch.errors import BadInputError, MedsearchError
from medsearch.index.folder import DEFAULT_INDEX
from medsearch.index.manifest import MAX_CANDIDATES
from medsearch.retrieval.options import OPTIONS, SearchOptions
from medsearch.retrieval.search import Searcher
from medsearch.server.models import option_field
from medsearch.server.responses import public_message
from medsearch.server.settings import ServerSettings
from medsearch.validation import check_text
from medsearch.version import __version__

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import CallToolResult, TextContent, ToolAnnotations
except ImportError as err:  # pragma: no cover (the extra is not installed)
    from medsearch.errors import MissingExtraError

    raise MissingExtraError("the MCP server needs the mcp package: pip install 'medsearch[mcp]'", "mcp") from err

log = logging.getLogger("medsearch.mcp")
TRANSPORTS = ("stdio", "http")
HTTP_PATH = "/mcp"
INSTRUCTIONS = (
    "Semantic search over a collection of medical documents. Call `search` with a question or keywords "
    "(in the documents' language); each hit has an id, title, snippet, score and a citation (source file "
    "or url, PDF page, section heading path), and a `quote`: the sentence of the hit that best answers "
    "the query, with its offsets in the document's text. Cite the source, page and section when you "
    "quote. Call `get_document` with a hit's id for the whole text. Filters narrow a search "
    "by field (source, url, title, id or a metadata field): field=value, field!=value, field>=number, "
    "field<=number."
)


class _Server(MCPServer):
    """MCPServer whose tool errors are one line: a library error's message (MedsearchError), or the
    arguments the schema refused, field by field. Anything else stays the SDK's generic error."""

    async def call_tool(self, name, arguments, context=None):
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as err:  # the SDK's wrapper: what the tool raised is its __cause__
            cause = err.__cause__
            if isinstance(cause, MedsearchError):  # its whole message on one line (errors.reason cuts at 200
                # characters), as the HTTP API shows it: no absolute path (the client may be a hosted model)
                message = public_message(" ".join(str(cause).split()) or type(cause).__name__)
            elif isinstance(cause, ValidationError):
                message = _validation_message(cause)
            else:
                raise
            log.info("%s: refused (%s)", name, type(cause).__name__)
            return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _validation_message(err: ValidationError) -> str:
    """Pydantic's errors as one line naming each bad argument (never its value): 'k: Input should be ...'."""
    parts = []
    for e in err.errors():
        name = ".".join(str(part) for part in e.get("loc", ())) or "arguments"
        parts.append(f"{name}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _parameter(name: str, annotation: Any, field: Any) -> inspect.Parameter:
    """A keyword parameter whose annotation carries the field's bounds and help (its default apart:
    the SDK builds the argument model from the signature)."""
    described = Annotated[(annotation, *field.metadata, Field(description=field.description))]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=described)


def build_server(index_dir: str | Path = DEFAULT_INDEX, *, model: str | None = None, device: str | None = None,
                 runtime: str | None = None, reranker: str | None = None,
                 searcher: Searcher | None = None) -> MCPServer:
    """The MCP server over the index at `index_dir`, opened here once (the model loaded: a bad index or
    model fails now, not at the first call), or over `searcher`. `model`, `device`, `runtime` and
    `reranker` as `Searcher.open` takes them."""
    if searcher is None:
        searcher = Searcher.open(index_dir, model=model, device=device, runtime=runtime, reranker=reranker)
    server = _Server("medsearch", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    def search(query: str, **values) -> dict[str, Any]:
        started = time.perf_counter()
        check_text(query, "the query")
        if len(query) > ServerSettings.max_query_chars:  # the service's bound: a query's cost grows with its words
            raise BadInputError(f"the query has {len(query)} characters; the limit is {ServerSettings.max_query_chars}")
        options = SearchOptions.flat(**values)
        if options.oversample is not None and options.k * options.oversample > MAX_CANDIDATES:  # the service's bound
            raise BadInputError(f"k x oversample asks for {options.k * options.oversample} candidates; the limit is "
                                f"{MAX_CANDIDATES}")
        result = searcher.search([query], options)[0]
        log.info("search: %d hits in %.1f ms (generation %s)", len(result.hits),
                 (time.perf_counter() - started) * 1000, result.generation)
        return result.to_json()

    query_field = Field(description="The question or keywords to search for.")
    search.__signature__ = inspect.Signature(
        [inspect.Parameter("query", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           annotation=Annotated[str, query_field])]
        + [_parameter(option.name, *option_field(option)) for option in OPTIONS],
        return_annotation=dict[str, Any],
    )
    server.add_tool(
        search, name="search", title="Search the medical documents", annotations=read_only,
        description="Search the index for a question or keywords: the best k documents, best first, each with "
                    "its id, title, snippet, score, citation (source or url, page, section), the sentence that "
                    "best answers the query (quote, with offsets in the document's text) and the query's terms "
                    "in it (highlights). Every option is optional; the index's defaults are good ones (hybrid "
                    "dense + BM25, fast tier).")

    def get_document(id: Annotated[str, Field(description="A document id, as a search hit gives it.")]) -> dict[str, Any]:
        check_text(id, "the document id")
        with searcher.pinned() as index:
            document = index.store.document(id)
        log.info("get_document: %d characters", len(document.get("text") or ""))
        return document

    server.add_tool(
        get_document, name="get_document", title="Read a whole document", annotations=read_only,
        description="The whole document with this id: title, text, url, source, metadata and layout (where "
                    "each PDF page and each section starts in the text).")
    return server


@contextlib.contextmanager
def _stdout_to_stderr():
    """Anything written to stdout in the block (by Python or by a native library) goes to stderr: over
    stdio, stdout is the protocol's alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _configure_logging(level: str) -> None:
    """Log lines to stderr (before the SDK's MCPServer would add its own handler): medsearch's at
    `level`, the SDK's warnings and errors only."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("medsearch").setLevel(level.upper())


def run(index_dir: str | Path = DEFAULT_INDEX, transport: str = "stdio", *, model: str | None = None,
        device: str | None = None, runtime: str | None = None, reranker: str | None = None,
        port: int = 8765, token: str | None = None, log_level: str = "info") -> None:
    """Serve the index over MCP until the client leaves (stdio: stdin closes) or, over HTTP, until
    SIGTERM or Ctrl-C. `transport`: stdio, or http (streamable HTTP on 127.0.0.1:`port`, path /mcp,
    every request needing `Authorization: Bearer <token>`)."""
    if transport not in TRANSPORTS:
        raise BadInputError(f"unknown transport '{transport}' (choose from: {', '.join(TRANSPORTS)})")
    if transport == "http" and not token:
        raise BadInputError("the http transport needs a bearer token")
    _configure_logging(log_level)
    with _stdout_to_stderr():
        server = build_server(index_dir, model=model, device=device, runtime=runtime, reranker=reranker)
    if transport == "stdio":
        log.info("serving %s over MCP on stdio", Path(index_dir).name)
        server.run("stdio")
        return
    import uvicorn

    # the SDK's app: DNS-rebinding protection (Host and Origin must be loopback names) on a loopback host
    app = BearerToken(server.streamable_http_app(streamable_http_path=HTTP_PATH, host="127.0.0.1"), token)
    log.info("serving %s over MCP on http://127.0.0.1:%d%s (bearer token)", Path(index_dir).name, port, HTTP_PATH)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class BearerToken:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <token>` (401 otherwise);
    lifespan events pass (the SDK's session manager starts there)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # (the SDK's app has no websocket route: refused before any check)
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(value.strip(), self.token):
                body = b'{"error": "missing or wrong bearer token: send the header \'Authorization: Bearer <token>\'"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
