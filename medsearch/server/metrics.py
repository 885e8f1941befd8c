"""The service's Prometheus metrics (prometheus-client), served at GET /metrics (behind the token)
and, with `medsearch serve --metrics-port N`, alone on 127.0.0.1:N without one.

Each app has its own `CollectorRegistry` (tests build many apps in one process). What is counted:
requests by route template, method and status, and their latency; queries searched by mode and
tier; each search stage's time per query (the keys of `timings_ms`: encode, search, rerank, lexical,
fuse, cross_encoder, hydrate); texts per encoder pass and requests waiting for one; requests in
each lane (re-rank, costly) and those a full lane refused; writes by kind
and outcome, and their time. Read at scrape time: the index's generation, counts and bytes on disk,
and the model, runtime, precision and backend that serve it.

Every label value comes from a short fixed set (a route template, never a raw path; a mode, a tier,
a stage): no query text, no document id, nothing a client chose, reaches a label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from medsearch.index.manifest import TIERS
from medsearch.retrieval.fusion import MODES
from medsearch.retrieval.hits import QueryResult
from medsearch.retrieval.search import Searcher
from medsearch.server.responses import public_message
from medsearch.version import __version__

OTHER = "other"  # the route label of a path that no route serves, and of an unusual method
METHODS = ("GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH")

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WRITE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metrics of one service, in their own registry. `searcher()` is the loaded searcher (None
    while loading), `pending()` the requests waiting for the encoder: both read at scrape time."""

    def __init__(self, searcher: Callable[[], Searcher | None], pending: Callable[[], int]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("medsearch_http_requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.request_seconds = Histogram("medsearch_http_request_duration_seconds",
                                         "Time from a request's arrival to the end of its answer, by route template.",
                                         ["route"], registry=registry)
        self.queries = Counter("medsearch_search_queries", "Queries searched (a POST /search counts each of its queries), "
                               "by mode and tier.", ["mode", "tier"], registry=registry)
        for mode in MODES:  # every series exists from the first scrape, at 0: a rate sees the first query
            for tier in TIERS:
                self.queries.labels(mode, tier)
        self.stage_seconds = Histogram("medsearch_search_stage_duration_seconds",
                                       "Each search stage's time per query (timings_ms; amortised over a batch): "
                                       "encode, search, rerank, lexical, fuse, cross_encoder, hydrate.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.batch_texts = Histogram("medsearch_encoder_batch_size", "Texts per encoder pass.",
                                     buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("medsearch_encoder_queue_depth", "Requests waiting for an encoder pass.",
                                 registry=registry)
        self.queue_depth.set_function(pending)
        self.lane_admitted = Gauge("medsearch_lane_requests", "Requests admitted to a lane (service.Lane: rerank, costly), "
                                   "running or waiting.", ["lane"], registry=registry)
        self.lane_refused = Counter("medsearch_lane_refused", "Requests a full lane refused with a 503, by lane.",
                                    ["lane"], registry=registry)
        self.writes = Counter("medsearch_writes", "Writes (POST /documents: upsert, DELETE /documents/ID: delete), "
                              "by kind and outcome (ok, error).", ["kind", "outcome"], registry=registry)
        self.write_seconds = Histogram("medsearch_write_duration_seconds",
                                       "Time of a write, loading the generation it commits included, by kind.",
                                       ["kind"], buckets=WRITE_BUCKETS, registry=registry)
        registry.register(_IndexCollector(searcher))

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (`route`: its template, or OTHER)."""
        method = method if method in METHODS else OTHER
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def searched(self, mode: str, tier: str, results: list[QueryResult], encoded: bool) -> None:
        """A request's queries, searched: counted, and each stage that ran (time above 0) observed
        once per query; `encoded`: whether the queries went through the encoder (not in lexical mode)."""
        self.queries.labels(mode, tier).inc(len(results))
        if not results:
            return
        for stage, ms in results[0].timings_ms.items():  # the same per-query figures for every query of a request
            if ms > 0 and (encoded or stage != "encode"):
                observed = self.stage_seconds.labels(stage)
                for _ in results:
                    observed.observe(ms / 1000)

    def wrote(self, kind: str, ok: bool, seconds: float) -> None:
        self.writes.labels(kind, "ok" if ok else "error").inc()
        self.write_seconds.labels(kind).observe(seconds)


class _IndexCollector:
    """The served index, read at each scrape: its generation, documents, chunks (live and dead),
    the bytes of its generation's files; and what serves it (medsearch_info). Nothing before the
    searcher has loaded."""

    def __init__(self, searcher: Callable[[], Searcher | None]):
        self.searcher = searcher

    def describe(self):
        return []  # the metrics exist once the index has loaded

    def collect(self):
        searcher = self.searcher()
        if searcher is None:
            return
        index = searcher.index  # the newest loaded generation (one attribute read: a write swaps it whole)
        manifest = index.manifest
        for name, help_text, value in (
            ("generation", "The generation of the index being served.", index.generation),
            ("documents", "Documents in the index.", manifest.documents),
            ("chunks", "Chunks in the index's vectors, dead ones included.", manifest.chunks),
            ("live_chunks", "Chunks that searches may return.", manifest.live_chunks),
            ("dead_chunks", "Chunks of deleted or replaced documents, excluded from searches until compacted.",
             manifest.dead_chunks),
        ):
            yield GaugeMetricFamily(f"medsearch_index_{name}", help_text, value=value)
        try:
            size = sum(index.files().values())
        except OSError:  # the generation was pruned between the read and the scrape: no figure this time
            size = None
        if size is not None:
            yield GaugeMetricFamily("medsearch_index_bytes", "Bytes on disk of the served generation's files.", value=size)
        encoder = searcher.encoder
        yield InfoMetricFamily("medsearch", "The model, runtime, precision and backend that serve, and medsearch's version.", value={
            "model": _model_name(manifest.model.get("name", "")),
            "runtime": encoder.runtime if encoder is not None else manifest.runtime,
            "precision": encoder.precision if encoder is not None else manifest.precision,
            "backend": index.backend_name,
            "version": __version__,
        })


def _model_name(name: str) -> str:
    """A model's name as a label: a hub name as it is, a local folder by its last part (no path)."""
    if name.startswith((".", "/", "~")) or Path(name).exists():
        return Path(name).name
    return public_message(name)


def start_metrics_server(registry: CollectorRegistry, port: int):
    """Serve `registry` alone on 127.0.0.1:`port` from a thread of its own (prometheus-client's HTTP
    server), for a scraper on the same host: no token there, and only this machine can connect.
    Returns the server: `shutdown()` then `server_close()` stop it."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
