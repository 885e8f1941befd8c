"""The service's settings (importable without FastAPI: the CLI reads its defaults)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from medsearch.errors import BadInputError
from medsearch.index.manifest import MAX_CANDIDATES


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


LOG_FORMATS = ("text", "json")


@dataclass
class ServerSettings:
    """What `medsearch serve` can set; the defaults are the measured ones (bench/serve_load.py)."""

    token: str | None = None  # bearer token; None: no authentication
    cors_origin: str | None = None  # one origin allowed to call the API from a browser; None: CORS off
    batching: bool = True  # encode concurrent queries together
    batch_wait_ms: float = 1.0  # how long a query waits for others to share its encoder pass
    max_batch: int = 16  # texts per encoder pass (small enough that two workers share a load evenly)
    encode_workers: int | None = None  # encoder passes at once, each on cores // workers threads; None: 2 (1 on one core; serve() gives OpenVINO runtimes 1)
    max_query_chars: int = 1000  # longer queries get a 400 (MiniLM reads 256 tokens, ~1,000 chars)
    max_queries: int = 64  # queries in one POST /search
    max_body_bytes: int = 1_000_000  # larger request bodies get a 413
    writable: bool = False  # POST /documents and DELETE /documents/{id}
    max_documents: int = 1000  # documents in one POST /documents
    search_threads: int | None = None  # threads for search + hydration; None: the machine's cores
    warm_up: bool = True  # run one query per tier before reporting ready
    # Bounds on what one request may ask for (400 past them): filters (SQLite's expression depth
    # fails past ~1,000 ANDed conditions) and fast-tier candidates (k x oversample).
    max_filters: int = 64
    max_filter_chars: int = 500
    max_candidates: int = MAX_CANDIDATES
    max_results: int = 10_000  # queries x k in one request (each hit is ~0.7 KB of JSON)
    # (query, document) pairs one request may have a cross-encoder score (queries x rerank): ~50
    # queries at the default 20; a MiniLM-L6 cross-encoder scores ~60 pairs/s a core on OpenVINO
    max_rerank_pairs: int = 1000
    # sentences one request may have the encoder read for quotes (queries x quote_sentences): a few
    # seconds of a 2-core machine's encoder, so that a costly lane's queue ends within the timeout
    max_quote_sentences: int = 256
    # Lanes (service.Lane): a request that re-ranks runs on rerank_workers threads of its own (they
    # mostly wait for the cross-encoder's turn), with at most max_rerank_pending more admitted
    # waiting; one past costly_pairs pairs (queries x rerank) or costly_results results (queries x
    # k) runs on costly_workers threads, with max_costly_pending waiting. Each lane also admits no
    # more re-ranking than the cross-encoder, at its measured speed, gets through in half the
    # request timeout. Past any bound: 503 + Retry-After, before anything is encoded. Plain searches
    # and document reads never wait behind them, and the cross-encoder takes turns in passes of 32
    # pairs, so ordinary re-ranking never waits behind a costly request's whole pass.
    rerank_workers: int = 4
    max_rerank_pending: int = 16
    costly_workers: int = 1
    max_costly_pending: int = 2
    costly_pairs: int = 100
    costly_results: int = 200
    costly_quotes: int = 64  # ... or past this many sentences encoded for quotes (queries x quote_sentences)
    # Load: queries waiting for the encoder, all requests together (a request that would take them
    # past it gets a 503 + Retry-After; one of more queries than that is taken when none wait), the
    # longest a search may wait and run, connections at once (a JSON 503 past it), and how long a
    # client may take to send a whole request (headers and body) or keep an idle connection open.
    max_pending: int = 512  # as when it counted requests: one-query requests (bench/serve_load.py) see no change
    request_timeout_s: float = 30.0
    max_connections: int = 1000
    read_timeout_s: float = 20.0
    keep_alive_s: float = 5.0
    # Host header allow-list (DNS rebinding: a page elsewhere resolving its name to this server);
    # None: loopback names when bound to loopback, any host otherwise. "*" allows any.
    allowed_hosts: tuple[str, ...] | None = None
    # Request logs (logger medsearch.access, one line a request: access.py): `text` (key=value pairs) or
    # `json`; the query text only with log_queries (queries can be personal health information).
    log_format: str = "text"
    log_queries: bool = False
    # Metrics alone, without a token, on 127.0.0.1:metrics_port (`serve` only); None: /metrics only
    metrics_port: int | None = None
    # POST /snapshot writes snapshots into this folder (a writable service: token and --writable);
    # None: the service takes none
    snapshot_dir: str | None = None
    # ... keeping the newest snapshot_keep of the index's snapshots there, refused (500, logged) past
    # snapshot_max_bytes of them: a client cannot fill the disk
    snapshot_keep: int = 5
    snapshot_max_bytes: int = 10_000_000_000
    snapshot_key: bytes | None = None  # signs them (snapshot.read_key); None: unsigned
    # sentences a search may encode to quote hits that share no term with the query, when it names
    # no quote_sentences (citations.py): encoder time all requests share, so off unless set
    quote_sentences: int = 0

    def validate(self) -> None:
        for name in ("max_batch", "max_documents", "max_query_chars", "max_queries", "max_body_bytes", "max_filters",
                     "max_filter_chars", "max_candidates", "max_results", "max_rerank_pairs", "max_quote_sentences", "max_pending",
                     "rerank_workers", "costly_workers", "costly_pairs", "costly_results", "costly_quotes", "snapshot_keep",
                     "snapshot_max_bytes",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("request_timeout_s", "read_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise BadInputError(f"{name} must be above 0; got {getattr(self, name)}")
        for name in ("max_rerank_pending", "max_costly_pending"):
            if getattr(self, name) < 0:
                raise BadInputError(f"{name} must be at least 0; got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise BadInputError(f"batch_wait_ms must be at least 0; got {self.batch_wait_ms}")
        for name in ("search_threads", "encode_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.token is not None and not self.token.strip():
            raise BadInputError("the token is empty")
        if self.snapshot_dir is not None and not os.path.isdir(self.snapshot_dir):
            raise BadInputError(f"snapshot folder {self.snapshot_dir} does not exist: create it first")
        if self.log_format not in LOG_FORMATS:
            raise BadInputError(f"unknown log format '{self.log_format}' (use {' or '.join(LOG_FORMATS)})")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise BadInputError(f"metrics_port must be a port number from 1 to 65535; got {self.metrics_port}")
        if self.writable and not self.token:
            raise BadInputError("a writable service needs a token: anyone who can reach it could change the index")
        if self.snapshot_dir is not None and not self.writable:
            raise BadInputError("a snapshot folder needs --writable (and so a token): POST /snapshot writes to this "
                                "machine's disk")

    @property
    def workers(self) -> int:
        """Encoder passes in flight at once. Two single-threaded passes beat one two-threaded pass on
        2 cores (+15-20% requests/s at 32 clients, a few ms more for a lone query: bench/serve_load.py)."""
        return self.encode_workers or min(2, available_cores())


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether a listen address only takes connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: ServerSettings, bind: str) -> tuple[str, ...]:
    """The Host header names the service answers: as set, else loopback names on a loopback bind
    (what a browser sends for http://localhost:PORT or http://127.0.0.1:PORT), else any ("*")."""
    if settings.allowed_hosts:
        return tuple(settings.allowed_hosts)
    return (*LOOPBACK_HOSTS, bind) if is_loopback(bind) else ("*",)
