"""The service's state: the loaded searcher, its threads and its micro-batcher, shared by every
request. Handlers reach it through the `ServiceDep` dependency (`request.app.state.service`).

CPU work runs off the event loop: query encoding on one encoder thread (torch uses its own
intra-op threads there), concurrent queries encoded together by the micro-batcher; search and
hydration on a small pool of search threads, each running faiss with one OpenMP thread, so torch
and faiss never ask for more threads than the machine has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Callable

from fastapi import Depends, Request

from medsearch.errors import (
    BadInputError,
    MedsearchError,
    MismatchError,
    RerankerUnavailableError,
)
from medsearch.index.backends.faiss import limit_threads
from medsearch.index.folder import TIERS
from medsearch.index.writes import WriteReport
from medsearch.retrieval.options import ResolvedSearch, SearchOptions
from medsearch.retrieval.rerank import RerankStopped
from medsearch.retrieval.search import Searcher
from medsearch.server.batching import MicroBatcher, Overloaded
from medsearch.server.metrics import Metrics
from medsearch.server.models import RequestOptions
from medsearch.server.responses import json_bytes, public_message
from medsearch.server.settings import ServerSettings, available_cores
from medsearch.validation import check_text

log = logging.getLogger("medsearch.server")


class Service:
    """The loaded searcher, its threads and its batcher; `searcher` is None until loaded."""

    def __init__(self, source: Searcher | Callable[[], Searcher], settings: ServerSettings):
        self.settings = settings
        self.searcher: Searcher | None = source if isinstance(source, Searcher) else None
        self._load = None if isinstance(source, Searcher) else source
        if self.searcher is not None:
            self.searcher.quote_sentences = settings.quote_sentences
        self.load_error: MedsearchError | None = None
        threads = settings.search_threads or available_cores()
        self.encode_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="medsearch-encode")
        self.search_pool = ThreadPoolExecutor(threads, thread_name_prefix="medsearch-search",
                                              initializer=limit_threads, initargs=(1,))
        # Writes (chunking, encoding, building a generation) and loading the generation they commit
        # run here: never on the event loop, never taking a search thread.
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-write",
                                             initializer=limit_threads, initargs=(1,))
        self.batcher: MicroBatcher | None = None
        self.ready = asyncio.Event()
        self.metrics = Metrics(lambda: self.searcher if self.ready.is_set() else None,
                               lambda: self.batcher.pending if self.batcher is not None else 0)
        # Requests that re-rank, and those whose cost they choose past the ordinary (many pairs, many
        # results), run in lanes of their own, so that plain searches and document reads never queue
        # behind them, and ordinary re-ranking never behind a costly request (the cross-encoder takes
        # turns in passes of 32 pairs: rerank.py). Each lane admits a bounded number (running or
        # waiting), before anything is encoded; past it, 503 at once.
        budget = settings.request_timeout_s / 2  # re-ranking queued in a lane: what it may take, measured
        self.rerank_lane = Lane("rerank", settings.rerank_workers, settings.max_rerank_pending, budget, self.metrics)
        self.costly_lane = Lane("costly", settings.costly_workers, settings.max_costly_pending, budget, self.metrics)
        self._write_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()

    async def start(self, on_load_error: Callable[[MedsearchError], None] | None) -> None:
        if self.searcher is not None:
            await self._finish_loading()
            return

        async def load() -> None:
            try:
                searcher = await asyncio.get_running_loop().run_in_executor(self.encode_pool, self._load)
                searcher.quote_sentences = self.settings.quote_sentences
                self.searcher = searcher
                await self._finish_loading()
            except Exception as err:  # noqa: BLE001 (whatever stops the load is said, and answered, not swallowed)
                if not isinstance(err, MedsearchError):
                    log.error("cannot serve: loading failed", exc_info=err)
                    err = LoadFailed(f"the index could not be loaded ({type(err).__name__}: "
                                     f"{public_message(str(err).splitlines()[0] if str(err) else '')})")
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
            on_pass=self.metrics.batch_texts.observe,
        )
        await self.batcher.start()
        self.ready.set()
        log.info("ready: %s (%d documents)", searcher.index.path.name, searcher.index.manifest.documents)

    async def stop(self) -> None:
        loading = getattr(self, "_loading", None)
        if loading is not None and not loading.done():
            loading.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.encode_pool, self.search_pool, self.rerank_lane.pool, self.costly_lane.pool, self.write_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    def loaded(self) -> Searcher:
        if self.load_error is not None:  # 503 with its reason, whatever kind of error it was
            raise self.load_error if isinstance(self.load_error, LoadFailed) else LoadFailed(
                f"the service could not load its index: {self.load_error}")
        if not self.ready.is_set():
            raise ServiceLoading()
        return self.searcher

    def check_request(self, texts: list[str], ids: list[str] | None, filters: list[str], k: int,
                      oversample: int | None) -> None:
        """The service's bounds and text checks on one request, before its options are parsed and
        anything is encoded."""
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
        for i, text in enumerate(filters, start=1):  # their characters are checked when the options are made
            if len(text) > limits.max_filter_chars:
                raise BadInputError(f"filter {i} has {len(text)} characters; the limit is {limits.max_filter_chars}")
        if oversample is not None and k * oversample > limits.max_candidates:
            raise BadInputError(f"k x oversample asks for {k * oversample} candidates; the limit is {limits.max_candidates}")
        if len(texts) * k > limits.max_results:
            raise BadInputError(f"{len(texts)} queries x k={k} asks for {len(texts) * k} results; the limit is "
                                f"{limits.max_results} a request")

    async def search(self, texts: list[str], ids: list[str] | None, request: "RequestOptions", *, receive=None,
                     one: bool = False, fields: dict | None = None) -> bytes:
        """Check, encode (in a shared pass), search and hydrate one request's queries with the search
        options of `request` (the API's model: bounded here before they are parsed); the JSON answer
        (a list of results, or the one result when `one`), encoded on the search thread: a large
        answer never holds the event loop. `receive`: the request's ASGI receive, watched so that a
        client that leaves is dropped before its pass, and its re-ranking stopped between passes.
        `fields`: the request's access-log fields (access.py), given its queries' count and lengths,
        then its hits, generation, mode and tier; the text itself only with the setting `log_queries`."""
        fields = {} if fields is None else fields
        fields.update(queries=len(texts), query_chars=[len(text) for text in texts])
        searcher = self.loaded()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        self.check_request(texts, ids, request.filters, request.k, request.oversample)
        if self.settings.log_queries:  # once checked: text that encodes, within the length limit
            fields["query"] = list(texts)
        options = searcher.resolve(request.options())  # once: every step below reads this ResolvedSearch
        if len(texts) * options.rerank > self.settings.max_rerank_pairs:
            raise BadInputError(f"{len(texts)} queries x rerank={options.rerank} asks the cross-encoder to score "
                                f"{len(texts) * options.rerank} pairs; the limit is {self.settings.max_rerank_pairs} a request")
        quotes = len(texts) * searcher.quote_sentences_for(options)
        if quotes > self.settings.max_quote_sentences:
            raise BadInputError(f"{len(texts)} queries x quote_sentences asks the encoder for up to {quotes} sentences; "
                                f"the limit is {self.settings.max_quote_sentences} a request")
        searcher.check(options, queries=texts, query_ids=ids)  # the queries, then the options: before encoding anything
        lane, pairs = self.lane(len(texts), options), len(texts) * options.rerank
        if lane is not None:  # before encoding: a request the lane cannot take costs nothing
            lane.admit(pairs, self._seconds_per_pair(searcher) if pairs else None)
        # the search thread stops at the deadline, or when the client has gone, not only the answer
        stop_at = time.monotonic() + self.settings.request_timeout_s
        left = threading.Event()  # set when nobody waits for the answer any more
        tier = options.tier if options.dim is None else f"dim{options.dim}"  # a dim the index stores (checked)
        submitted = False
        try:
            vectors, encode_ms = (None, 0.0) if options.mode == "lexical" else await self._within(
                self.batcher.encode(texts), deadline, receive)

            def run() -> tuple[bytes, dict]:
                results = searcher.search_encoded(texts, vectors, options, encode_ms=encode_ms, query_ids=ids,
                                                  stop=lambda: left.is_set() or time.monotonic() > stop_at)
                self.metrics.searched(options.mode, tier, results, encoded=vectors is not None)
                answer = [result.to_json() for result in results]
                facts = {"hits": sum(len(result.hits) for result in results), "generation": results[0].generation,
                         "mode": options.mode, "tier": tier}
                return json_bytes(answer[0] if one else answer), facts

            work = lane.run(run, pairs) if lane is not None else loop.run_in_executor(self.search_pool, run)
            submitted = True
            answer, facts = await self._within(work, deadline, receive)
        finally:
            left.set()
            if lane is not None and not submitted:
                lane.release(pairs)
        fields.update(facts)  # here, on the event loop: the search thread never writes what the access log reads
        return answer

    @staticmethod
    def _seconds_per_pair(searcher: Searcher) -> float | None:
        """What a cross-encoder pair has cost lately (rerank.Reranker), None before it has run."""
        reranker = searcher.reranker_for(searcher.index, load=False)  # (never a model load on the event loop)
        return reranker.seconds_per_pair if reranker is not None else None

    def lane(self, queries: int, options: ResolvedSearch) -> "Lane | None":
        """Where a request runs: the costly lane past costly_pairs cross-encoder pairs, costly_results
        results or costly_quotes sentences encoded for quotes, the re-rank lane when it re-ranks, else
        the search threads (None)."""
        pairs, results = queries * options.rerank, queries * options.k
        quotes = queries * self.searcher.quote_sentences_for(options)
        if (pairs > self.settings.costly_pairs or results > self.settings.costly_results
                or quotes > self.settings.costly_quotes):
            return self.costly_lane
        return self.rerank_lane if pairs else None

    async def _within(self, work, deadline: float, receive=None):
        """`work`'s result, unless the deadline passes first (ServiceBusy) or the client disconnects
        (ClientGone); either way `work` is cancelled (a query still waiting for the encoder leaves the
        queue; a search already running on its thread stops at its next query or cross-encoder pass,
        once `search` has told it so)."""
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
            except RerankStopped:  # its deadline passed between two of the cross-encoder's passes
                pass
        elif gone is not None and gone in done:
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

    async def write(self, operation: Callable[[], "WriteReport"], kind: str = "other") -> dict:
        """Run one write (`kind`: upsert or delete) on the write thread, one at a time, then load the new
        generation there too (searches go on with the old one until it is loaded); the next query sees it.
        Counted and timed in the metrics by kind and outcome."""
        searcher = self.loaded()
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            started, ok = time.perf_counter(), False
            try:
                report = await loop.run_in_executor(self.write_pool, operation)
                await loop.run_in_executor(self.write_pool, searcher.current)
                ok = True
            finally:
                self.metrics.wrote(kind, ok, time.perf_counter() - started)
        return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                "deleted": report.deleted, "compacted": report.compacted, "generation": report.generation,
                "documents": report.manifest.get("documents", 0)}

    async def snapshot(self) -> dict:
        """Write a snapshot of the index's current generation into the snapshot folder (snapshot.py),
        on a thread of its own: searches and writes go on (the generation is pinned, not locked).
        One at a time: a second, while one runs, gets SnapshotRunning. What fails on the server's
        side (a damaged index, the folder gone, no right to write) is SnapshotFailed, and logged."""
        from medsearch.index.snapshot import snapshot

        searcher = self.loaded()
        if self.settings.snapshot_dir is None:  # (validate: a snapshot folder comes with --writable)
            raise NoSnapshots()
        if self._snapshot_lock.locked():
            raise SnapshotRunning()
        async with self._snapshot_lock:
            try:
                report = await asyncio.to_thread(snapshot, searcher.index.path, os.path.join(self.settings.snapshot_dir, ""),
                                                 keep=self.settings.snapshot_keep, max_bytes=self.settings.snapshot_max_bytes,
                                                 key=self.settings.snapshot_key)
            except (MedsearchError, OSError) as err:
                log.error("snapshot failed: %s", err)
                raise SnapshotFailed(f"the snapshot failed: {public_message(str(err))}") from None
        return report.to_json()


class Lane:
    """Threads for one kind of request, and what it admits at once: at most `workers + pending`
    requests (running or waiting), and cross-encoder pairs whose measured cost stays within
    `budget_s` (so that an admitted request is answered, not left to time out in the queue); past
    either, ServiceBusy at once (an empty lane takes any request). A request is counted from
    `admit` until its thread is done with it (or it leaves the queue unrun): not until its client
    stops waiting."""

    def __init__(self, name: str, workers: int, pending: int, budget_s: float, metrics: Metrics):
        self.name, self.limit, self.budget_s = name, workers + pending, budget_s
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"medsearch-{name}",
                                       initializer=limit_threads, initargs=(1,))
        self.admitted = 0
        self.pairs = 0  # cross-encoder pairs of the requests admitted
        self._lock = threading.Lock()
        metrics.lane_admitted.labels(name).set_function(lambda: self.admitted)
        self._refused = metrics.lane_refused.labels(name)

    def admit(self, pairs: int = 0, seconds_per_pair: float | None = None) -> None:
        with self._lock:
            full = self.admitted >= self.limit
            slow = (self.admitted and seconds_per_pair is not None
                    and (self.pairs + pairs) * seconds_per_pair > self.budget_s)
            if full or slow:
                self._refused.inc()
                why = (f"as many {self.name} requests as it takes ({self.limit})" if full else
                       f"~{(self.pairs + pairs) * seconds_per_pair:.0f} s of re-ranking queued, over its "
                       f"{self.budget_s:.0f} s budget")
                raise ServiceBusy(f"the service has {why}; try again in a moment"
                                  + (", or with rerank=0" if pairs else ", or ask for fewer results"))
            self.admitted += 1
            self.pairs += pairs

    def release(self, pairs: int = 0) -> None:
        with self._lock:
            self.admitted -= 1
            self.pairs -= pairs

    def run(self, work: Callable, pairs: int = 0):
        """`work` on the lane's threads (admitted before, with its `pairs`): an awaitable of its result."""
        future = self.pool.submit(work)
        future.add_done_callback(lambda _: self.release(pairs))
        return asyncio.wrap_future(future)


class ReadOnly(MedsearchError):
    def __init__(self):
        super().__init__("this service is read-only: start it with --writable to add or delete documents")


class NoSnapshots(ReadOnly):
    def __init__(self):
        MedsearchError.__init__(self, "this service takes no snapshots: start it with --writable and --snapshot-dir DIR")


class SnapshotFailed(MedsearchError):
    """The server could not write a snapshot (its log says why): 500."""


class SnapshotRunning(MismatchError):
    def __init__(self):
        super().__init__("a snapshot is being taken; try again when it has finished")


class LoadFailed(MedsearchError):
    """Loading the model or index failed with an error that is not medsearch's own: 503, with its reason."""


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
        searcher.search(["warm-up query"], tier=tier, k=10, rerank=0)
    if "lexical" in searcher.index.manifest:
        searcher.search(["warm-up query"], mode="hybrid", k=10, rerank=0)
    if searcher.resolve(SearchOptions()).rerank:  # the cross-encoder's first pass, where queries re-rank by default
        try:
            searcher.search(["warm-up query"], k=10)
        except RerankerUnavailableError:  # logged when the searcher opened: its queries get a 503, the rest are served
            pass


async def get_service(request: Request) -> Service:
    """The app's Service (a FastAPI dependency: `service: ServiceDep` in a handler's signature).
    Async: FastAPI runs a plain function dependency on its thread pool, a thread hop per request
    (about a tenth of the service's Python time under load, measured with py-spy)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
