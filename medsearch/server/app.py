"""The HTTP API and the search page: a FastAPI app built by a factory over a `Searcher`.

    create_app(searcher)                     # tests: a loaded Searcher, ready at once
    create_app(lambda: Searcher.open(dir))   # `medsearch serve`: loads in the background,
                                             # /livez answers at once, /readyz once loaded

Model and index load once. CPU work runs off the event loop: query encoding on one encoder
thread (torch uses its own intra-op threads there), concurrent queries encoded together by the
micro-batcher; search and hydration on a small pool of search threads, each running faiss with
one OpenMP thread, so torch and faiss never ask for more threads than the machine has.

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

import asyncio
import json
import logging
import re
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files
from typing import Callable, Literal, Union

import faiss
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from medsearch import __version__
from medsearch.errors import BackendUnavailableError, BadInputError, MedsearchError, MismatchError, NotFoundError
from medsearch.generations import IndexLockedError
from medsearch.fusion import DEFAULT_MODE, METHODS, MODES, Fusion
from medsearch.index import TIERS
from medsearch.search import DEFAULT_OVERSAMPLE, DEFAULT_TIER, Searcher
from medsearch.server.batching import MicroBatcher, Overloaded
from medsearch.server.settings import ServerSettings, allowed_hosts, available_cores, is_loopback
from medsearch.validation import check_text
from medsearch.updates import WriteReport

log = logging.getLogger("medsearch.server")
STATIC = files("medsearch.server") / "static"
MAX_K = 1000
MAX_OVERSAMPLE = 1000
PUBLIC_PATHS = ("/livez", "/readyz", "/", "/favicon.ico")  # and /static/: the page holds no data
Tier = Literal["fast", "light", "standard", "deep"]
Mode = Literal["dense", "lexical", "hybrid"]
Method = Literal["rrf", "convex"]
assert set(Tier.__args__) == set(TIERS) and set(Mode.__args__) == set(MODES) and set(Method.__args__) == set(METHODS)
FUSION = Fusion()
MODE_HELP = "dense: the tier's vectors; lexical: BM25 over the same chunks; hybrid: both lists fused."


# ---- request and response models (the OpenAPI schema at /openapi.json) ----

class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Union[str, int, None] = Field(None, description="Returned as query_id; default: the query's position, from 1.")
    text: str = Field(..., description="The query text.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[QueryIn] = Field(..., min_length=1, description="Queries, encoded together in one pass.")
    tier: Tier = DEFAULT_TIER
    k: int = Field(10, ge=1, le=MAX_K, description="Documents per query.")
    dim: int | None = Field(None, description="Search this stored prefix dim instead of the tier's.")
    oversample: int | None = Field(DEFAULT_OVERSAMPLE, ge=1, le=MAX_OVERSAMPLE, description="fast tier: candidates = k x oversample [default: the count the index measured for its recall target].")
    filters: list[str] = Field([], description="field=value, field!=value, field>=number, field<=number; ANDed.")
    mode: Mode = Field(DEFAULT_MODE, description=MODE_HELP)
    fusion: Method = Field(FUSION.method, description="hybrid: reciprocal rank fusion or a convex combination of normalised scores.")
    rrf_k: int = Field(FUSION.rrf_k, ge=0, le=10_000, description="hybrid rrf: each list adds 1 / (rrf_k + rank).")
    dense_weight: float = Field(FUSION.weight, ge=0, le=1, description="hybrid convex: the dense scores' weight.")


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[dict] = Field(..., min_length=1, description="Documents to add or replace: id, text (required), title, url, source, any metadata field.")


class WriteOut(BaseModel):
    added: int
    updated: int
    unchanged: int
    deleted: int
    compacted: bool
    generation: int | None = Field(None, description="The new generation, or null when nothing changed.")
    documents: int


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    snippet: str
    url: str
    source: str
    metadata: dict
    found_by: dict[str, int] = Field(..., description="Each list that found the hit (dense, lexical) and its rank there.")


class SearchResponse(BaseModel):
    query_id: str | None = Field(None, description="POST only: the request's id for this query.")
    query: str
    results: list[HitOut]
    timings_ms: dict[str, float] = Field(..., description="encode (the shared encoder pass), search, rerank, lexical, fuse.")


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    url: str
    source: str
    metadata: dict


class ErrorOut(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 503)}


# ---- the service's state ----

class Service:
    """The loaded searcher, its threads and its batcher; `searcher` is None until loaded."""

    def __init__(self, source: Searcher | Callable[[], Searcher], settings: ServerSettings):
        self.settings = settings
        self.searcher: Searcher | None = source if isinstance(source, Searcher) else None
        self._load = None if isinstance(source, Searcher) else source
        self.load_error: MedsearchError | None = None
        threads = settings.search_threads or available_cores()
        self.encode_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="medsearch-encode")
        self.search_pool = ThreadPoolExecutor(threads, thread_name_prefix="medsearch-search",
                                              initializer=faiss.omp_set_num_threads, initargs=(1,))
        # Writes (chunking, encoding, building a generation) and loading the generation they commit
        # run here: never on the event loop, never taking a search thread.
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-write",
                                             initializer=faiss.omp_set_num_threads, initargs=(1,))
        self.batcher: MicroBatcher | None = None
        self.ready = asyncio.Event()
        self._write_lock = asyncio.Lock()

    async def start(self, on_load_error: Callable[[MedsearchError], None] | None) -> None:
        if self.searcher is not None:
            await self._finish_loading()
            return

        async def load() -> None:
            try:
                self.searcher = await asyncio.get_running_loop().run_in_executor(self.encode_pool, self._load)
                await self._finish_loading()
            except MedsearchError as err:
                self.load_error = err
                log.error("cannot serve: %s", err)
                if on_load_error:
                    on_load_error(err)

        self._loading = asyncio.create_task(load())

    async def _finish_loading(self) -> None:
        searcher = self.searcher
        if self.settings.warm_up:  # load every tier's index, the vector map and the model's first pass
            await asyncio.get_running_loop().run_in_executor(self.encode_pool, _warm_up, searcher)
        self.batcher = MicroBatcher(
            searcher.encoder.encode_queries, self.encode_pool, enabled=self.settings.batching,
            max_wait_ms=self.settings.batch_wait_ms, max_batch=self.settings.max_batch,
            workers=self.settings.workers, max_pending=self.settings.max_pending,
        )
        await self.batcher.start()
        self.ready.set()
        log.info("ready: %s (%d documents)", searcher.index.path.name, searcher.index.manifest["documents"])

    async def stop(self) -> None:
        loading = getattr(self, "_loading", None)
        if loading is not None and not loading.done():
            loading.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.encode_pool, self.search_pool, self.write_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    def loaded(self) -> Searcher:
        if self.load_error is not None:
            raise self.load_error
        if not self.ready.is_set():
            raise ServiceLoading()
        return self.searcher

    def check_request(self, texts: list[str], ids: list[str] | None, k: int, oversample: int | None,
                      filters: list[str]) -> None:
        """The service's bounds and text checks on one request, before anything is encoded."""
        limits = self.settings
        for i, text in enumerate(texts):
            if ids:
                check_text(ids[i], f"the id of query {i + 1}")  # before the id names the query below
            where = f"query {ids[i]}" if ids else "the query"
            check_text(text, where)
            if len(text) > limits.max_query_chars:
                raise BadInputError(f"{where} has {len(text)} characters; the limit is {limits.max_query_chars}")
        if len(filters) > limits.max_filters:
            raise BadInputError(f"{len(filters)} filters; the limit is {limits.max_filters}")
        for i, text in enumerate(filters, start=1):
            check_text(text, f"filter {i}")
            if len(text) > limits.max_filter_chars:
                raise BadInputError(f"filter {i} has {len(text)} characters; the limit is {limits.max_filter_chars}")
        if oversample is not None and k * oversample > limits.max_candidates:
            raise BadInputError(f"k x oversample asks for {k * oversample} candidates; the limit is {limits.max_candidates}")
        if len(texts) * k > limits.max_results:
            raise BadInputError(f"{len(texts)} queries x k={k} asks for {len(texts) * k} results; the limit is "
                                f"{limits.max_results} a request")

    async def search(self, texts: list[str], ids: list[str] | None, *, tier: str, k: int, dim: int | None,
                     oversample: int | None, filters: list[str] | None = None, mode: str = DEFAULT_MODE,
                     fusion: Fusion = FUSION, receive=None, one: bool = False) -> bytes:
        """Check, encode (in a shared pass), search and hydrate one request's queries; the JSON answer
        (a list of results, or the one result when `one`), encoded on the search thread: a large
        answer never holds the event loop. `receive`: the request's ASGI receive, watched so that a
        client that leaves is dropped before its pass."""
        searcher = self.loaded()
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        filters = list(filters or [])
        self.check_request(texts, ids, k, oversample, filters)
        searcher.check_queries(texts, ids)
        searcher.check(tier=tier, k=k, dim=dim, oversample=oversample, filters=filters, mode=mode,
                       fusion=fusion)  # before encoding anything
        vectors, encode_ms = (None, 0.0) if mode == "lexical" else await self._within(
            self.batcher.encode(texts), deadline, receive)
        def run() -> bytes:
            results = searcher.search_encoded(texts, vectors, encode_ms=encode_ms, query_ids=ids, tier=tier, k=k,
                                              dim=dim, oversample=oversample, filters=filters, mode=mode, fusion=fusion)
            answer = [result.to_json() for result in results]
            return json_bytes(answer[0] if one else answer)

        return await self._within(asyncio.get_running_loop().run_in_executor(self.search_pool, run), deadline, receive)

    async def _within(self, work, deadline: float, receive=None):
        """`work`'s result, unless the deadline passes first (ServiceBusy) or the client disconnects
        (ClientGone); either way `work` is cancelled (a query still waiting for the encoder leaves the
        queue; a search already running on its thread finishes there, unanswered)."""
        task = asyncio.ensure_future(work)
        watch = {task}
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        if gone is not None:
            watch.add(gone)
        try:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait(watch, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in watch:
                if not pending.done():
                    pending.cancel()
        if task in done:
            try:
                return task.result()
            except Overloaded as err:
                raise ServiceBusy(f"the service is at capacity ({err}); try again in a moment") from None
        if gone is not None and gone in done:
            raise ClientGone()
        raise ServiceBusy(f"the search took longer than the service's limit of {self.settings.request_timeout_s:g} s; "
                          "try again in a moment")

    async def document(self, doc_id: str) -> dict:
        searcher = self.loaded()
        check_text(doc_id, "the document id")

        def read() -> dict:
            with searcher.pinned() as index:
                return index.store.document(doc_id)

        return await asyncio.get_running_loop().run_in_executor(self.search_pool, read)

    async def write(self, operation: Callable[[], "WriteReport"]) -> dict:
        """Run one write (upsert or delete) on the write thread, one at a time, then load the new
        generation there too (searches go on with the old one until it is loaded); the next query sees it."""
        searcher = self.loaded()
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            report = await loop.run_in_executor(self.write_pool, operation)
            await loop.run_in_executor(self.write_pool, searcher.current)
        return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                "deleted": report.deleted, "compacted": report.compacted, "generation": report.generation,
                "documents": report.manifest.get("documents", 0)}


class ReadOnly(MedsearchError):
    def __init__(self):
        super().__init__("this service is read-only: start it with --writable to add or delete documents")


class ServiceLoading(MedsearchError):
    def __init__(self):
        super().__init__("the model and index are still loading; try again in a few seconds")


class ServiceBusy(MedsearchError):
    """Too many requests waiting, or one past its deadline: 503 with Retry-After."""


class ClientGone(MedsearchError):
    def __init__(self):
        super().__init__("the client closed the connection")


async def _disconnected(receive) -> None:
    """Return once the client has gone (the request body, if any, was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _warm_up(searcher: Searcher) -> None:
    for tier in TIERS:
        searcher.search(["warm-up query"], tier=tier, k=10)
    if "lexical" in searcher.index.manifest:
        searcher.search(["warm-up query"], mode="hybrid", k=10)


# ---- errors: one JSON shape for all of them ----

def _status(err: MedsearchError) -> int:
    if isinstance(err, (ServiceLoading, BackendUnavailableError, ServiceBusy)):
        return 503
    if isinstance(err, ClientGone):
        return 499  # nginx's "client closed request": nobody reads it
    if isinstance(err, ReadOnly):
        return 403
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, MismatchError):
        return 409
    return 400


# An absolute path in a message (index folders, model folders, files): only its last part is shown
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s/'"]+/)+([^\s/'";,)]+)""")


def public_message(message: str) -> str:
    """A message fit for any client: absolute paths cut to their last part, no process ids, and
    text that can be encoded (a lone surrogate echoed from a request is escaped)."""
    message = _ABSOLUTE_PATH.sub(r"\1", message)
    message = re.sub(r"\bpid \d+", "another process", message)
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def public_view(value):
    """A JSON value with `public_message` applied to every string (the /info view of a manifest)."""
    if isinstance(value, str):
        return public_message(value)
    if isinstance(value, dict):
        return {key: public_view(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_view(item) for item in value]
    return value


def json_bytes(value) -> bytes:
    """A JSON answer as Starlette's JSONResponse renders it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": public_message(message)}, status_code=status, headers=headers)


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
    app.state.service = service
    app.add_middleware(_GuardMiddleware, token=settings.token, max_body_bytes=settings.max_body_bytes,
                       hosts=settings.allowed_hosts)
    if settings.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

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
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal error (the server log has the details)")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/livez", tags=["probes"])
    async def livez():
        """The process is up (the model may still be loading)."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": ErrorOut}})
    async def readyz():
        """Ready once the model and index are loaded and warm: 200, else 503."""
        if service.load_error is not None:
            return error(503, f"cannot serve: {service.load_error}")
        if not service.ready.is_set():
            return error(503, "loading the model and index")
        manifest = service.searcher.index.manifest
        return {"status": "ready", "index": service.searcher.index.path.name, "documents": manifest["documents"],
                "model": public_message(manifest["model"]["name"])}

    @app.get("/search", response_model=SearchResponse, response_model_exclude_none=True, tags=["search"])
    async def search_get(
        request: Request,
        q: str = Query(..., description="The query text."),
        tier: Tier = DEFAULT_TIER,
        k: int = Query(10, ge=1, le=MAX_K, description="Documents to return."),
        dim: int | None = Query(None, description="Search this stored prefix dim instead of the tier's."),
        oversample: int | None = Query(DEFAULT_OVERSAMPLE, ge=1, le=MAX_OVERSAMPLE, description="fast tier: candidates = k x oversample [default: the count the index measured for its recall target]."),
        filter: list[str] = Query([], description="field=value, field!=value, field>=number or field<=number; repeat to AND them."),  # noqa: A002
        mode: Mode = Query(DEFAULT_MODE, description=MODE_HELP),
        fusion: Method = Query(FUSION.method, description="hybrid: reciprocal rank fusion or a convex combination of normalised scores."),
        rrf_k: int = Query(FUSION.rrf_k, ge=0, le=10_000, description="hybrid rrf: each list adds 1 / (rrf_k + rank)."),
        dense_weight: float = Query(FUSION.weight, ge=0, le=1, description="hybrid convex: the dense scores' weight."),
    ):
        """One query: the same JSON as `medsearch query --json`."""
        answer = await service.search([q], None, tier=tier, k=k, dim=dim, oversample=oversample, filters=filter,
                                      mode=mode, fusion=Fusion(fusion, rrf_k, dense_weight, FUSION.depth),
                                      receive=request.receive, one=True)
        return Response(answer, media_type="application/json")

    @app.post("/search", response_model=list[SearchResponse], tags=["search"])
    async def search_post(request: SearchRequest, http: Request):
        """A batch of queries, encoded together: one object per query, in order (as `medsearch query --queries F --json`)."""
        if len(request.queries) > settings.max_queries:
            raise BadInputError(f"{len(request.queries)} queries in one request; the limit is {settings.max_queries}")
        ids = [str(q.id) if q.id is not None else str(i) for i, q in enumerate(request.queries, start=1)]
        texts = [q.text for q in request.queries]
        answer = await service.search(texts, ids, tier=request.tier, k=request.k, dim=request.dim,
                                       oversample=request.oversample, filters=request.filters, mode=request.mode,
                                       fusion=Fusion(request.fusion, request.rrf_k, request.dense_weight, FUSION.depth),
                                       receive=http.receive)
        return Response(answer, media_type="application/json")

    @app.get("/documents/{doc_id:path}", response_model=DocumentOut, tags=["documents"])
    async def document(doc_id: str):
        """The whole document: title, text, url, source, metadata."""
        return JSONResponse(await service.document(doc_id))

    @app.post("/documents", response_model=WriteOut, tags=["documents"], responses={403: {"model": ErrorOut}})
    async def add_documents(request: DocumentsIn):
        """Add or replace documents by id (`--writable` only): unchanged ones cost nothing, changed ones
        are re-encoded. Searches see the write as soon as this returns."""
        from medsearch.corpus import documents_from_records
        from medsearch.updates import upsert

        if not settings.writable:
            raise ReadOnly()
        if len(request.documents) > settings.max_documents:
            raise BadInputError(f"{len(request.documents)} documents in one request; the limit is {settings.max_documents}")
        documents = documents_from_records(request.documents)
        searcher = service.loaded()
        return JSONResponse(await service.write(lambda: upsert(searcher.index.path, documents, searcher.encoder)))

    @app.delete("/documents/{doc_id:path}", response_model=WriteOut, tags=["documents"], responses={403: {"model": ErrorOut}})
    async def delete_document(doc_id: str):
        """Delete a document from every tier (`--writable` only)."""
        from medsearch.updates import delete

        if not settings.writable:
            raise ReadOnly()
        check_text(doc_id, "the document id")
        searcher = service.loaded()
        return JSONResponse(await service.write(lambda: delete(searcher.index.path, [doc_id])))

    @app.get("/info", tags=["index"])
    async def info():
        """The index's manifest (model, dims, tiers, index types, counts) and its files' sizes."""
        searcher = service.loaded()

        def read() -> dict:
            with searcher.pinned() as index:
                return {**index.manifest, "live_chunks": index.chunks - index.manifest["dead_chunks"],
                        "generation": index.generation, "files": index.files()}

        return public_view(await asyncio.get_running_loop().run_in_executor(service.search_pool, read))

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


def configure_threads(torch_threads: int | None = None, encode_workers: int = 1) -> int:
    """Torch's intra-op threads for the encoder (default: the machine's cores); faiss gets one
    OpenMP thread per search thread (set in each search thread); a short GIL switch interval.
    Process-wide: `serve` calls it, tests and embedders of `create_app` need not. Returns torch's count."""
    import torch

    threads = torch_threads or max(1, available_cores() // encode_workers)
    torch.set_num_threads(threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return threads


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
      past either the connection is dropped.
    uvicorn closes idle keep-alive connections itself."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    too_large = json_bytes({"error": f"request line and headers over {max_head_bytes} bytes"})
    head_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(too_large)).encode() + b"\r\n\r\n" + too_large)

    max_request_bytes = max_head_bytes + 8 * max_body_bytes

    class BoundedProtocol(HttpToolsProtocol):
        _deadline = None
        _write_deadline = None
        _unsent = 0  # bytes waiting to be sent when the write deadline was armed
        _head = 0  # bytes of the request head received so far; None once the headers are complete
        _raw = 0  # bytes of the request received so far, head and body

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
            super().on_headers_complete()

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
          device: str | None = None, runtime: str | None = None, settings: ServerSettings | None = None, torch_threads: int | None = None,
          log_level: str = "info") -> None:
    """Run the service until SIGINT/SIGTERM (in-flight requests finish first). Checks the settings
    and the index before listening; the model loads in the background (/readyz says when)."""
    import dataclasses

    import uvicorn

    from medsearch.index import open_index

    settings = settings or ServerSettings()
    settings.validate()  # a writable service without a token fails here
    open_index(index_dir)  # a missing or foreign index fails here, before the port opens
    settings = dataclasses.replace(settings, allowed_hosts=allowed_hosts(settings, host))
    if not settings.token and not is_loopback(host):
        log.warning("serving %s without a token: anyone who can reach it can search it (give a token file)", host)
    configure_threads(torch_threads, settings.workers)
    failure: list[MedsearchError] = []
    server: uvicorn.Server | None = None

    def stop_on_error(err: MedsearchError) -> None:
        failure.append(err)
        server.should_exit = True

    app = create_app(partial(Searcher.open, index_dir, model=model, device=device, runtime=runtime), settings, on_load_error=stop_on_error)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                            access_log=log_level == "debug",
                            http=read_timeout_protocol(settings.read_timeout_s, max_body_bytes=settings.max_body_bytes),
                            limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (it has logged why)
        raise BadInputError(f"cannot listen on {host}:{port} (port in use, or not an address of this machine)") from None
    if failure:
        raise failure[0]


__all__ = ["ServerSettings", "configure_threads", "create_app", "serve"]
