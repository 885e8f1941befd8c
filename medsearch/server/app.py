"""The HTTP API and the search page: a FastAPI app built by a factory over a `Searcher`.

    create_app(searcher)                     # tests: a loaded Searcher, ready at once
    create_app(lambda: Searcher.open(dir))   # `medsearch serve`: loads in the background,
                                             # /livez answers at once, /readyz once loaded

This module wires the app: the service's state (service.py), the routers by domain (routes/:
search, documents, info, probes and metrics, the page), the access-log middleware (access.py: one
line and the metrics per request), the guard middleware (Host, token, body size), the exception
handlers, and `serve` (uvicorn with the bounds its protocol lacks, its own access log off). The
request and response models are in models.py, the error body and JSON rendering in responses.py,
the metrics in metrics.py.

Model and index load once. CPU work runs off the event loop (service.py): query encoding on one
encoder thread, concurrent queries encoded together by the micro-batcher; search and hydration on
a small pool of search threads, each running faiss with one OpenMP thread.

Every error is JSON `{"error": "..."}`: 400 bad input, 401 missing or wrong token, 404 unknown
document or route, 409 model/index mismatch or a write in progress, 413 body too large, 503 still
loading, overloaded or past the request deadline (with Retry-After); never a stack trace, an
absolute path or a process id.

One request never hurts another: text is checked (lone surrogates, NUL, non-finite numbers) before
anything is encoded; an encoder pass that fails is retried request by request (batching.py); the
queue for the encoder is bounded; a client that disconnects is dropped before its pass; writes run
on a thread of their own and the new generation loads off the event loop; bodies are counted as
they are read (chunked or not); a connection must send its whole request within a read timeout.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from contextlib import asynccontextmanager
from functools import partial
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from medsearch.errors import (
    BackendUnavailableError,
    BadInputError,
    MedsearchError,
    MismatchError,
    NoSpaceError,
    NotFoundError,
    RerankerUnavailableError,
)
from medsearch.index.generations import IndexLockedError
from medsearch.retrieval.search import Searcher
from medsearch.server.access import AccessMiddleware, access_log
from medsearch.server.metrics import start_metrics_server
from medsearch.server.models import ERRORS
from medsearch.server.responses import error, json_bytes
from medsearch.server.routes import documents, info, page, search, snapshots
from medsearch.server.service import (
    ClientGone,
    LoadFailed,
    ReadOnly,
    Service,
    ServiceBusy,
    ServiceLoading,
    SnapshotFailed,
)
from medsearch.server.settings import (
    ServerSettings,
    allowed_hosts,
    available_cores,
    is_loopback,
)
from medsearch.version import __version__

log = logging.getLogger("medsearch.server")
PUBLIC_PATHS = ("/livez", "/readyz", "/", "/favicon.ico")  # and /static/: the page holds no data


# ---- errors: one JSON shape for all of them (responses.py) ----

def _status(err: MedsearchError) -> int:
    if isinstance(err, (ServiceLoading, LoadFailed, BackendUnavailableError, RerankerUnavailableError, ServiceBusy)):
        return 503
    if isinstance(err, SnapshotFailed):
        return 500
    if isinstance(err, NoSpaceError):
        return 507  # Insufficient Storage: the write committed nothing
    if isinstance(err, ClientGone):
        return 499  # nginx's "client closed request": nobody reads it
    if isinstance(err, ReadOnly):
        return 403
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, MismatchError):
        return 409
    return 400


def _validation_message(err: RequestValidationError) -> str:
    """Pydantic's errors as one line that names each bad field: 'query parameter k: ...'."""
    parts = []
    for e in err.errors():
        if e.get("type") == "json_invalid":
            return f"malformed JSON body: {e.get('ctx', {}).get('error', e['msg'])}"
        where, *path = e.get("loc", ()) or ("request",)
        name = ".".join(str(p) for p in path)
        if where == "body" and not path:
            parts.append(f"request body: {e['msg']}" if e["type"] != "missing" else "request body: a JSON object is required")
            continue
        place = {"query": "query parameter ", "path": "path parameter ", "body": "", "header": "header "}.get(where, "")
        parts.append(f"{place}{name}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


# ---- the app ----

def create_app(source: Searcher | Callable[[], Searcher], settings: ServerSettings | None = None,
               on_load_error: Callable[[MedsearchError], None] | None = None) -> FastAPI:
    """The FastAPI app over a loaded `Searcher`, or over a function that loads one at start-up.

    `on_load_error` is called if that loading fails (`medsearch serve` then stops the server)."""
    settings = settings or ServerSettings()
    settings.validate()
    service = Service(source, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start(on_load_error)
        yield
        await service.stop()

    app = FastAPI(
        title="medsearch", version=__version__, lifespan=lifespan, responses=ERRORS,
        description="Semantic search over medical documents: tiered Matryoshka indexes, a fast funnel tier.",
    )
    app.state.service = service  # what the routes' ServiceDep dependency reads
    app.add_middleware(_GuardMiddleware, token=settings.token, max_body_bytes=settings.max_body_bytes,
                       hosts=settings.allowed_hosts)
    if settings.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    # added last, so outermost: requests the guard refuses are timed, counted and logged too
    app.add_middleware(AccessMiddleware, routes=app.router.routes, metrics=service.metrics)

    @app.exception_handler(MedsearchError)
    async def library_error(request: Request, err: MedsearchError):
        if isinstance(err, IndexLockedError):
            err = IndexLockedError("the index is being written by another process; try again when it has finished")
        retry = {"Retry-After": "2"} if isinstance(err, (ServiceLoading, ServiceBusy)) else None
        return error(_status(err), str(err), retry)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return error(400, _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        message = f"no route {request.url.path}" if err.status_code == 404 else str(err.detail)
        return error(err.status_code, message, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception):
        log.exception("unexpected error on %s %s", request.method, ascii(request.url.path))  # (no raw control characters)
        return error(500, "internal error (the server log has the details)")

    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    app.include_router(info.router)
    app.include_router(search.router)
    app.include_router(documents.router)
    app.include_router(snapshots.router)
    return app


class _GuardMiddleware:
    """Before a request reaches the app: its Host header must be allowed (a page on another site
    whose name resolves to this server, DNS rebinding, is refused), the bearer token on every route
    but the probes and the page's static files (which hold no data), and its body is read here,
    counted as it arrives (Content-Length or chunked): past the limit the answer is 413 and the
    connection closes, so no large body is ever held. Plain ASGI: cheap per request."""

    BODYLESS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, token: str | None, max_body_bytes: int, hosts: tuple[str, ...] | None = None):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.hosts = None if not hosts or "*" in hosts else {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.hosts is not None:
            given = [value for name, value in scope["headers"] if name == b"host"]
            host = _host_name(given[0]) if len(given) == 1 else None  # none, or several: refused (RFC 9112)
            if host not in self.hosts:
                allowed = ", ".join(sorted(self.hosts))
                if len(given) != 1:
                    message = f"one Host header is required, {len(given)} were sent"
                else:
                    shown = (host or given[0].decode("latin-1")).encode("ascii", "backslashreplace").decode()[:100]
                    message = f"host '{shown}' is not served here"
                return await error(400, f"{message} (the service's allowed hosts: {allowed})")(scope, receive, send)
        if self.token and not (path in PUBLIC_PATHS or path.startswith("/static/")) and scope["method"] != "OPTIONS":
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(value.strip(), self.token):
                message = "missing bearer token" if not given else "wrong token"
                response = error(401, f"{message}: send the header 'Authorization: Bearer <token>'",
                                 {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        if scope["method"] in self.BODYLESS:
            return await self.app(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(int(length), scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await self._too_large(None, scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: waits for the client to disconnect
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, length: int | None, scope, receive, send):
        size = f"request body of {length} bytes" if length is not None else "request body over the limit"
        response = error(413, f"{size}; the limit is {self.max_body_bytes}", {"Connection": "close"})
        return await response(scope, receive, send)


_HOST = re.compile(r"^(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:/@\s]+))(?::\d{1,5})?$")


def _host_name(value: bytes) -> str | None:
    """The host part of a Host header, lower-cased: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1';
    None for anything that is not a host with an optional port."""
    match = _HOST.match(value.decode("latin-1").strip().lower())
    return None if match is None else match.group("ip6") or match.group("name")


# The encoder thread gives up the GIL inside every torch op and must take it back after each one
# (a BERT forward is ~200 ops); with Python's default 5 ms switch interval, a thread busy with
# HTTP or hydration keeps it that long. 0.1 ms: about +6% requests/s at 32 clients (bench/serve_load.py).
SWITCH_INTERVAL_S = 0.0001


def encoder_threads(threads: int | None = None, encode_workers: int = 1) -> int:
    """Threads per encoder pass: `threads`, or the machine's cores shared among the encode workers."""
    return threads or max(1, available_cores() // encode_workers)


MAX_HEAD_BYTES = 64 * 1024  # a request's line and headers together (431 past it)


def read_timeout_protocol(read_timeout: float, max_head_bytes: int = MAX_HEAD_BYTES,
                          max_body_bytes: int = ServerSettings.max_body_bytes):
    """uvicorn's httptools protocol with the bounds it lacks:
    - a read deadline: each request must arrive whole (headers and body) within `read_timeout`
      seconds of the connection's start or of the previous response's end; a connection still
      sending then (idle from the start, half a header, half a body) is dropped;
    - a write deadline: a client that reads nothing of its answer for `read_timeout` seconds is
      dropped (a graceful close would wait for the unsent answer forever, holding its memory and
      its connection slot); a slow reader that makes progress is not;
    - a request line and headers of at most `max_head_bytes` (httptools has no limit, and builds a
      long header value in quadratic time): past it the answer is 431 and the connection closes;
    - no trailers after a chunked body (they would be headers past the cap), and at most
      8 x `max_body_bytes` raw bytes a request (a 1-byte-chunked body at the limit takes ~6x):
      past either the connection is dropped;
    - its own answers in JSON `{"error": "..."}` like the app's, where uvicorn's are plain text: 400
      for a request httptools cannot parse, and 503 with Retry-After past uvicorn's
      `limit_concurrency` (`--max-connections`), checked here as uvicorn checks it (a request is
      refused once the open connections, its own included, or the requests running reach the limit).
    uvicorn closes idle keep-alive connections itself. What stays uvicorn's: its h11 protocol (never
    used by `serve`) answers both in plain text, and a connection dropped by a bound above gets no
    answer at all."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    def closing_answer(status: str, message: str) -> bytes:
        """A whole JSON error answer, written to the socket as it is before the connection closes."""
        body = json_bytes({"error": message})
        return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode() + body

    head_431 = closing_answer("431 Request Header Fields Too Large",
                              f"request line and headers over {max_head_bytes} bytes")
    malformed_400 = closing_answer("400 Bad Request",
                                   "malformed HTTP request: its request line or headers cannot be parsed")

    max_request_bytes = max_head_bytes + 8 * max_body_bytes

    class BoundedProtocol(HttpToolsProtocol):
        _deadline = None
        _write_deadline = None
        _unsent = 0  # bytes waiting to be sent when the write deadline was armed
        _head = 0  # bytes of the request head received so far; None once the headers are complete
        _raw = 0  # bytes of the request received so far, head and body

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # the connection limit is checked here (on_headers_complete), not by uvicorn: its answer is plain text
            self._app, self._limit, self.limit_concurrency = self.app, self.limit_concurrency, None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(read_timeout, self._expired)

        def _expired(self) -> None:
            self._deadline = None
            cycle = self.cycle
            reading = cycle is None or cycle.response_complete or cycle.more_body
            if reading and not self.transport.is_closing():
                self.transport.abort()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head is not None:
                self._head += len(data)
            self._raw += len(data)
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self._head is not None and self._head > max_head_bytes:
                self.transport.write(head_431)
                self.transport.close()
            elif self._raw > max_request_bytes:
                self.transport.abort()

        def on_message_begin(self) -> None:
            self._head = self._raw = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._head is None:  # a trailer after a chunked body
                self.transport.abort()
                return
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head = None
            limit = self._limit
            full = limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
            if full:
                self.logger.warning("Exceeded concurrency limit.")
            self.app = self._at_capacity if full else self._app  # the app uvicorn runs for this request
            super().on_headers_complete()

        async def _at_capacity(self, scope, receive, send) -> None:
            message = f"the service is at its limit of {self._limit} connections; try again in a moment"
            await error(503, message, {"Retry-After": "2", "Connection": "close"})(scope, receive, send)

        def send_400_response(self, msg: str) -> None:  # httptools cannot parse the request
            self.transport.write(malformed_400)
            self.transport.close()

        def on_message_complete(self) -> None:
            self._raw = 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def pause_writing(self) -> None:  # the client is not reading what it was sent
            super().pause_writing()
            if self._write_deadline is None:
                self._unsent = self.transport.get_write_buffer_size()
                self._write_deadline = self.loop.call_later(read_timeout, self._write_expired)

        def _write_expired(self) -> None:
            unsent = self.transport.get_write_buffer_size()
            if unsent < self._unsent:  # the client reads, slowly: another period
                self._unsent = unsent
                self._write_deadline = self.loop.call_later(read_timeout, self._write_expired)
            else:
                self._write_deadline = None
                self.transport.abort()

        def resume_writing(self) -> None:
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None
            super().resume_writing()

        def connection_lost(self, exc) -> None:
            for timer in (self._deadline, self._write_deadline):
                if timer is not None:
                    timer.cancel()
            self._deadline = self._write_deadline = None
            super().connection_lost(exc)

    return BoundedProtocol


def serve(index_dir: str, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
          device: str | None = None, runtime: str | None = None, settings: ServerSettings | None = None, threads: int | None = None,
          log_level: str = "info", reranker: str | None = None) -> None:
    """Run the service until SIGINT/SIGTERM (in-flight requests finish first). Checks the settings
    and the index before listening; the model (and `reranker`, a cross-encoder for the re-ranking
    stage) loads in the background (/readyz says when).

    One line per request goes to stderr (logger `medsearch.access`, `settings.log_format`; none above
    `log_level` info), never uvicorn's access log: it writes the raw path with its query string, the
    text of every GET /search. With `settings.metrics_port`, the metrics are served alone, without a
    token, on 127.0.0.1 at that port too."""
    import dataclasses

    import uvicorn

    from medsearch.index.folder import open_index
    from medsearch.index.model_check import index_runtime

    settings = settings or ServerSettings()
    settings.validate()  # a writable service without a token fails here
    index = open_index(index_dir)  # a missing or foreign index fails here, before the port opens
    if settings.encode_workers is None and index_runtime(index, runtime, model) != "torch":
        # OpenVINO: one stream on every core serves more queries than a stream per core (2 cores,
        # 32 clients: 301 against 250 requests/s, bench/serve_load.py); torch: two single-threaded passes
        settings = dataclasses.replace(settings, encode_workers=1)
    index.close()
    if settings.snapshot_dir is not None:
        from medsearch.index.snapshot import check_outside

        check_outside(index_dir, settings.snapshot_dir, f"the snapshot folder {settings.snapshot_dir}")
    settings = dataclasses.replace(settings, allowed_hosts=allowed_hosts(settings, host))
    if not settings.token and not is_loopback(host):
        log.warning("serving %s without a token: anyone who can reach it can search it (give a token file)", host)
    if settings.metrics_port is not None and settings.metrics_port == port:
        raise BadInputError(f"the metrics port {port} is the service's own port: give another one")
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # a short GIL switch interval: the event loop answers between passes
    failure: list[MedsearchError] = []
    server: uvicorn.Server | None = None

    def stop_on_error(err: MedsearchError) -> None:
        failure.append(err)
        server.should_exit = True

    # Each encode worker runs its passes on a share of the cores: torch's intra-op threads, or one
    # OpenVINO stream per worker (the lean runner keeps one inference request per stream).
    encoding = {"threads": encoder_threads(threads, settings.workers), "streams": settings.workers}
    app = create_app(partial(Searcher.open, index_dir, model=model, device=device, runtime=runtime, reranker=reranker,
                             encoding=encoding),
                     settings, on_load_error=stop_on_error)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                            access_log=False,  # it logs GET /search?q=<the query>: access.py logs requests instead
                            http=read_timeout_protocol(settings.read_timeout_s, max_body_bytes=settings.max_body_bytes),
                            limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s)
    server = uvicorn.Server(config)
    metrics_server = None
    if settings.metrics_port is not None:
        try:
            metrics_server = start_metrics_server(app.state.service.metrics.registry, settings.metrics_port)
        except OSError:
            raise BadInputError(f"cannot serve the metrics on 127.0.0.1:{settings.metrics_port} (port in use)") from None
    try:
        with access_log(settings.log_format, log_level):
            server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (it has logged why)
        raise BadInputError(f"cannot listen on {host}:{port} (port in use, or not an address of this machine)") from None
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    if failure:
        raise failure[0]


__all__ = ["ServerSettings", "create_app", "encoder_threads", "serve"]
