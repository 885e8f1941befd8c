"""The Qdrant backend: an index's vectors in one Qdrant collection (qdrant-client: a server by URL,
or its local mode, the same API in-process over a folder), the index folder keeping the manifest,
the document store and BM25.

One point per chunk row, its id derived from the document id, its content hash and the chunk
position (uuid5). Named vectors: `d64`, `d128`, ... for every stored prefix dim (renormalised, as
the FAISS tiers hold them) and `full`, which has no HNSW graph: it is only scanned to re-score
candidates or for the exact deep tier. The payload is the chunk (row, position, text), its document
(ordinal `doc`, id, title, source, url, metadata, content hash) and `numbers`: every value among
those that reads as a number (booleans do not), so `field>=N` compares numbers as SQLite does for
the FAISS backend. Filters become Qdrant payload filters inside the search, matching what the SQL
filters match (filters.py's docstring: a list by any element, a boolean only for `true` / `false`);
chunk hits collapse to documents as in the FAISS backend (the best chunk of each; the search widens
until k documents), and the fast tier is one Query API call: a prefetch of the candidates on `d64`,
re-scored on `full`.

A generation of the index folder answers only with its own live rows: a writer adds points before
it commits, with rows past the generation's, and deletes the points of replaced and deleted
documents after it commits (dead rows in the new generation, skipped until then). The collection
then holds no dead rows, so there is nothing to compact.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np

from medsearch.errors import (
    BackendUnavailableError,
    BadInputError,
    MedsearchError,
    MissingExtraError,
)
from medsearch.index import layout
from medsearch.index.backends.base import Ranked, collapse, prefix
from medsearch.index.backends.funnel import calibrate
from medsearch.index.backends.qdrant_payloads import store_payloads
from medsearch.index.filters import BOOLEANS, Filter, filter_number
from medsearch.index.manifest import Manifest
from medsearch.index.store import COLUMNS

FULL = "full"
POINT_NAMESPACE = uuid.UUID("5b4e1d2e-6a43-4a8e-9b76-2f0a6f1c8d11")  # fixed: point ids never change
UPSERT_BATCH = 256
# The documents whose old points a generation's write deletes after its switch (manifest key)
PENDING_DELETE = "qdrant_pending_delete"
# A number as SQLite's filter reads a text value (filters.filter_sql: only these characters)


def vector_name(dim: int, full_dim: int) -> str:
    return FULL if dim == full_dim else f"d{dim}"


def point_id(doc_id: str, position: int, content_hash: str) -> str:
    """The chunk's point id: the same document id, version (content hash) and chunk position always
    give the same id, and a changed document's new chunks never overwrite the points of the version
    a committed generation still answers with (they are deleted after the switch)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\x1f{content_hash}\x1f{position}"))


def settings(collection: str, url: str | None = None, path: str | Path | None = None, shards: int | None = None,
             replicas: int | None = None) -> dict:
    """The manifest's `backend` entry for a Qdrant index; each build writes a collection of its own,
    `collection_name` plus a suffix (QdrantBackend.build), so a rebuild never touches the one in use."""
    if (url is None) == (path is None):
        raise BadInputError("the qdrant backend needs one location: a server URL or a local-mode path")
    if not collection or not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", collection):
        raise BadInputError(f"collection name '{collection}': use letters, digits, '_', '-' and '.'")
    if url is not None and not _is_http_url(url):
        raise BadInputError(f"Qdrant server '{url}' is not an http(s) URL (e.g. http://qdrant:6333)")
    for name, value in (("shards", shards), ("replicas", replicas)):
        if value is not None and value < 1:
            raise BadInputError(f"{name} must be at least 1; got {value}")
    _import()  # no extra: say so before any encoding
    where = {"url": url.rstrip("/")} if url else {"path": str(Path(path).resolve())}
    return {"name": "qdrant", "collection_name": collection, **where,
            **({"shards": shards} if shards else {}), **({"replicas": replicas} if replicas else {})}


def _is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def settings_for_index(index_dir: str | Path, url: str | None = None, path: str | Path | None = None,
                       collection: str | None = None, shards: int | None = None, replicas: int | None = None,
                       current: Manifest | None = None) -> dict:
    """The `backend` entry for building the index at `index_dir` in Qdrant, at a server `url` or in a
    local-mode folder `path` (one of them). The collection is named `collection` when given; else
    the name the index already uses, when `current` (its manifest's `backend`, None for a new index)
    is a collection at this same location, so a rebuild replaces the index's own collection; else
    the index folder's name."""
    if collection is None:
        current = current or {}
        same_place = current.get("name") == "qdrant" and (
            (url and current.get("url") == url.rstrip("/")) or (path and current.get("path") == str(Path(path).resolve())))
        collection = (current.get("collection_name") if same_place else None) or Path(index_dir).resolve().name or "medsearch"
    return settings(collection, url=url, path=path, shards=shards, replicas=replicas)


def check_location(settings: dict) -> None:
    """Fail now (before a corpus is encoded) when a backend entry's location cannot be used."""
    QdrantBackend(None, Manifest(backend={**settings, "collection": ""}, full_dim=0, index_types={})).check_reachable()


def _import():
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise MissingExtraError("the qdrant backend needs the 'qdrant' extra: pip install 'medsearch[qdrant]'",
                                "qdrant") from None
    return QdrantClient, models


# One client per location and process: local mode locks its folder, so every index (and every
# generation of one) in this process shares the client, and its lock: local mode computes in
# Python, one call at a time (a server client needs none). `close_clients` lets another process in.
_clients: dict[tuple, tuple[object, contextlib.AbstractContextManager]] = {}
_clients_lock = threading.Lock()


def connection(backend: dict) -> tuple[object, contextlib.AbstractContextManager]:
    """(client, the lock its calls take) for a backend's location, opened on first use."""
    QdrantClient, _ = _import()
    key = ("url", backend["url"]) if backend.get("url") else ("path", backend["path"])
    with _clients_lock:
        if key not in _clients:
            try:
                if key[0] == "url":
                    client = QdrantClient(url=key[1], api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=60,
                                          check_compatibility=False)
                    _clients[key] = (client, contextlib.nullcontext())
                else:
                    Path(key[1]).mkdir(parents=True, exist_ok=True)
                    _clients[key] = (QdrantClient(path=key[1]), threading.Lock())
            except RuntimeError as err:  # local mode: "Storage folder ... is already accessed by another instance"
                raise BackendUnavailableError(
                    f"the Qdrant local storage {key[1]} is open in another process (local mode serves one process "
                    f"at a time; run a Qdrant server for more): {err}") from None
        return _clients[key]


atexit.register(lambda: close_clients())  # before the interpreter tears down what a client's close needs


def client_for(backend: dict):
    return connection(backend)[0]


def close_clients() -> None:
    """Close every client this process opened (a local-mode folder is free for another process)."""
    with _clients_lock:
        for client, _ in _clients.values():
            client.close()
        _clients.clear()


class QdrantBackend:
    """The vectors of one index generation in its Qdrant collection (backends/base.py's
    VectorBackend). A write keeps the collection: its new points have rows past the generation's,
    and the old points of replaced and deleted documents go after its switch (`committed`)."""

    name = "qdrant"
    keeps_dead_rows = False  # dead rows' points are deleted after each switch: nothing to compact
    filters_natively = True  # payload filters, inside the query
    in_folder = False

    @classmethod
    def describe_settings(cls, settings: dict) -> str:
        where = f"server {settings['url']}" if settings.get("url") else f"local mode {settings['path']}"
        layout = ", ".join(f"{key} {settings[key]}" for key in ("shards", "replicas") if settings.get(key))
        return f"qdrant collection '{settings['collection']}' at {where}" + (f" ({layout})" if layout else "")

    def __init__(self, folder: Path | None, manifest: Manifest):
        self.folder = folder
        self.manifest = manifest
        self.settings = manifest.backend
        self.collection = self.settings["collection"]
        self.full_dim = manifest.full_dim
        self.dims = manifest.dims
        _, self.models = _import()
        self.local = "path" in self.settings

    @property
    def location(self) -> str:
        return self.settings.get("url") or self.settings["path"]

    @property
    def client(self):
        return client_for(self.settings)

    def _call(self, method: str, *args, **kwargs):
        try:
            client, lock = connection(self.settings)
            with lock:
                return getattr(client, method)(*args, **kwargs)
        except (BackendUnavailableError, BadInputError):
            raise
        except Exception as err:  # noqa: BLE001 (the client raises httpx, grpc and its own errors)
            if type(err).__name__ in ("ConnectError", "ResponseHandlingException", "ConnectTimeout", "ReadTimeout"):
                raise BackendUnavailableError(f"cannot reach Qdrant at {self.location}: {err}") from None
            if type(err).__name__ == "UnexpectedResponse":  # 401/403 (API key), 4xx/5xx from the server
                raise BackendUnavailableError(f"Qdrant at {self.location} refused {method}: {err}") from None
            if "not found" in str(err).lower() and self.collection in str(err):
                raise BackendUnavailableError(
                    f"collection '{self.collection}' is missing at {self.location} (deleted outside medsearch?)") from None
            raise

    # ---- the lifecycle ----

    @classmethod
    def build(cls, folder: Path, vectors: np.ndarray, manifest: Manifest, *, settings: dict,
              stored: np.ndarray | None = None, target_recall: float,
              progress: bool = False) -> "QdrantBackend":
        """A new collection holding every chunk of the generation in `folder` (its document store gives the
        payloads), named `collection_name` plus a suffix, so a rebuild never touches the one in use;
        and the fast tier's calibration (the prefix stage, measured through Qdrant)."""
        manifest["index_types"] = {d: "qdrant" for d in manifest["index_types"]}
        manifest["backend"] = {**settings, "collection": f"{settings['collection_name']}-{uuid.uuid4().hex[:8]}"}
        written = cls(folder, manifest)
        written.create()
        try:
            points = store_payloads(folder / layout.DOCS)
            if len(points) != len(vectors):
                raise BadInputError(f"the qdrant backend needs a document store: {len(vectors)} vectors, {len(points)} chunks")
            written.upsert(vectors, points, progress=progress)
            written.index_fields(manifest.metadata_fields)
            dims = manifest.tier_dims
            if dims["fast"] != written.full_dim:
                manifest["fast"] = calibrate(vectors, deep=lambda q, c: written.rows(q, written.full_dim, c),
                                             stages={"prefix": lambda q, c: written.rows(q, dims["fast"], c)},
                                             read=lambda rows: np.asarray(vectors[rows], dtype=np.float32), target=target_recall)
        except BaseException:
            written.drop()
            raise
        return written

    def append(self, folder: Path, vectors: np.ndarray, manifest: Manifest, *, removed: list[str],
               progress: bool = False) -> "QdrantBackend":
        """New points before the switch (rows past this generation's: unseen until then); the old
        ones of `removed` after it."""
        self._start_write(manifest, removed)
        self.upsert(vectors, store_payloads(folder / layout.DOCS, first_row=self.manifest.chunks), progress=progress)
        self.index_fields(sorted(set(manifest.metadata_fields) - set(self.manifest.metadata_fields)))
        return QdrantBackend(folder, manifest)

    def carry_over(self, folder: Path, manifest: Manifest, *, removed: list[str]) -> "QdrantBackend":
        self._start_write(manifest, removed)
        return QdrantBackend(folder, manifest)

    def _start_write(self, manifest: Manifest, removed: list[str]) -> None:
        """Before a write: what the write of this generation could not delete after its switch goes
        now, and so do the points a write that died before its switch left (rows past this
        generation's: the next write numbers its rows from there again). The new generation records
        what is due after its own switch, so that a failed delete is retried."""
        self.committed()
        self.delete_rows_from(self.manifest.chunks)
        manifest.pop(PENDING_DELETE, None)
        if removed:
            manifest[PENDING_DELETE] = {"ids": list(removed), "below_row": self.manifest.chunks}

    def calibrate(self, live: np.ndarray | None, target: float) -> dict | None:
        """The build's calibration stays (docs/guides/scale-out.md): writes do not measure again."""
        return self.manifest.get("fast")

    def committed(self) -> None:
        """The replaced and deleted versions' points go (dead rows of this generation, skipped until
        then); idempotent, so a write or a compaction after a failed one runs it again."""
        pending = self.manifest.get(PENDING_DELETE)
        if pending:
            self.delete_documents(pending["ids"], below_row=pending["below_row"])

    def replaced_by(self, manifest: Manifest) -> None:
        """A rebuild's generation is current: this generation's collection goes, unless it is the
        new one's too (another index's collection is never touched)."""
        if manifest.backend.get("collection") != self.collection:
            with contextlib.suppress(MedsearchError):
                self.drop()

    def abandon(self, current: Manifest | None) -> None:
        """A build that did not become current: its new collection goes."""
        if current is None or current.backend.get("collection") != self.collection:
            self.drop()

    def outdated(self) -> bool:
        return False

    def read_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise BadInputError("a Qdrant index keeps its vectors in its collection: rebuild it to rewrite them")

    def load(self) -> None:
        self.count()  # fails now, not at the first query, when it is unreachable

    def close(self) -> None:
        """Nothing: the client is shared by every generation of the location (`close_clients`)."""

    def verify(self, skip: set[str] = frozenset()) -> list[str]:
        """The collection holds one point per live chunk row of the generation (rows past it are a
        writer's, not yet committed)."""
        m = self.models
        try:
            found = self._call("count", self.collection, exact=True, count_filter=m.Filter(must=[
                m.FieldCondition(key="row", range=m.Range(lt=self.manifest.chunks))])).count
        except MedsearchError as err:
            return [f"collection '{self.collection}': {err}"]
        expected = self.manifest.live_chunks
        if found != expected:
            pending = " (a write's cleanup has not finished: medsearch compact runs it again)" \
                if found > expected and self.manifest.get(PENDING_DELETE) else ""
            return [f"collection '{self.collection}': {found} points for the generation's rows; the manifest says "
                    f"{expected} live chunks{pending}"]
        return []

    # ---- writes ----

    def create(self) -> None:
        """A new, empty collection with a named vector per stored dim (refused if it exists)."""
        m = self.models
        if self._call("collection_exists", self.collection):
            raise BadInputError(f"collection '{self.collection}' already exists at {self.location}")
        vectors = {
            vector_name(dim, self.full_dim): m.VectorParams(
                size=dim, distance=m.Distance.COSINE,
                **({"hnsw_config": m.HnswConfigDiff(m=0)} if dim == self.full_dim else {}))  # re-scoring only: no graph
            for dim in self.dims
        }
        self._call("create_collection", self.collection, vectors_config=vectors,
                   shard_number=self.settings.get("shards"), replication_factor=self.settings.get("replicas"))
        if not self.local:  # local mode has no payload indexes (it scans)
            for key, schema in (("row", m.PayloadSchemaType.INTEGER), ("doc", m.PayloadSchemaType.INTEGER),
                                ("id", m.PayloadSchemaType.KEYWORD), ("source", m.PayloadSchemaType.KEYWORD),
                                ("url", m.PayloadSchemaType.KEYWORD)):
                self._call("create_payload_index", self.collection, key, field_schema=schema)

    def index_fields(self, fields: list[str]) -> None:
        """Payload indexes on metadata fields, so filters on them are indexed (server only)."""
        if self.local:
            return
        for key in fields:
            self._call("create_payload_index", self.collection, f"metadata.{key}",
                       field_schema=self.models.PayloadSchemaType.KEYWORD)

    def drop(self) -> None:
        if self._call("collection_exists", self.collection):
            self._call("delete_collection", self.collection)

    def upsert(self, vectors: np.ndarray, points: list[dict], progress: bool = False) -> None:
        """One point per chunk: `vectors` (full dim, normalised) and the payloads of the same rows."""
        from tqdm.auto import tqdm

        m = self.models
        bar = tqdm(total=len(points), desc="Qdrant upsert", unit="chunk", disable=not progress)
        for start in range(0, len(points), UPSERT_BATCH):
            batch = np.asarray(vectors[start:start + UPSERT_BATCH], dtype=np.float32)
            named = {vector_name(dim, self.full_dim): prefix(batch, dim) for dim in self.dims}
            structs = [
                m.PointStruct(id=point_id(p["id"], p["position"], p["content_hash"]), payload=p,
                              vector={name: values[i].tolist() for name, values in named.items()})
                for i, p in enumerate(points[start:start + UPSERT_BATCH])
            ]
            self._call("upsert", self.collection, points=structs, wait=True)
            bar.update(len(structs))
        bar.close()

    def delete_documents(self, ids: list[str], below_row: int) -> None:
        """Delete the points of these documents' rows below `below_row`: their versions before a
        write, after its switch (the new generation already skips their rows as dead)."""
        m = self.models
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            self._call("delete", self.collection, wait=True, points_selector=m.FilterSelector(filter=m.Filter(must=[
                m.FieldCondition(key="id", match=m.MatchAny(any=batch)),
                m.FieldCondition(key="row", range=m.Range(lt=below_row)),
            ])))

    def delete_rows_from(self, first_row: int) -> None:
        """Delete the points of rows from `first_row` on: what a write that died before its switch
        left (the next write numbers its rows from there again)."""
        m = self.models
        self._call("delete", self.collection, wait=True, points_selector=m.FilterSelector(filter=m.Filter(must=[
            m.FieldCondition(key="row", range=m.Range(gte=first_row))])))

    def check_reachable(self) -> None:
        """Fail now (before a corpus is encoded) when the location cannot be used."""
        self._call("get_collections")

    def count(self) -> int:
        return self._call("count", self.collection, exact=True).count

    # ---- searches ----

    def query_filter(self, filters: list[Filter], columns: tuple[str, ...]):
        """The Qdrant filter for parsed `filters` (fields already checked by filters.filter_sql): the
        same matches as the SQL one; None for no filters. Qdrant matches a list when any element
        does, and keeps booleans apart from numbers (a Range or an integer match never matches one)."""
        if not filters:
            return None
        m = self.models
        must, must_not = [], []
        for f in filters:
            key = f.field if f.field in columns else f"metadata.{f.field}"
            number = filter_number(f.value)
            if f.op in ("=", "!="):
                equal = [m.FieldCondition(key=key, match=m.MatchValue(value=f.value))]  # text
                if number is not None and f.field not in columns:  # a JSON number equal to it
                    equal.append(m.FieldCondition(key=key, range=m.Range(gte=number, lte=number)))
                if f.value in BOOLEANS and f.field not in columns:  # a JSON boolean
                    equal.append(m.FieldCondition(key=key, match=m.MatchValue(value=f.value == "true")))
                (must if f.op == "=" else must_not).append(m.Filter(should=equal))
            else:
                bound = m.Range(gte=number) if f.op == ">=" else m.Range(lte=number)
                must.append(m.FieldCondition(key=f"numbers.{f.field}", range=bound))
        return m.Filter(must=must or None, must_not=must_not or None)

    def rows(self, queries: np.ndarray, dim: int, n: int) -> np.ndarray:
        """The n nearest chunk rows per query in one stored dim (-1 padded), over every point: the
        calibration's stages, on a collection that its build alone has written so far."""
        m = self.models
        requests = [m.QueryRequest(query=q.tolist(), using=vector_name(dim, self.full_dim), limit=n,
                                   with_payload=["row"]) for q in prefix(queries, dim)]
        out = np.full((len(queries), n), -1, dtype=np.int64)
        for i, response in enumerate(self._call("query_batch_points", self.collection, requests=requests)):
            found = [p.payload["row"] for p in response.points]
            out[i, : len(found)] = found
        return out

    def search(self, queries: np.ndarray, *, dim: int, rerank: bool, k: int, candidates: int,
               allowed: np.ndarray | None, filters: list[Filter], chunk_doc: np.ndarray) -> tuple[Ranked, dict[str, float]]:
        """With `rerank` (the fast tier) each search is ONE query: `candidates` chunks prefetched on
        the prefix vector, re-scored on `full`; `filters` are payload filters in both. Rows this
        generation does not know (a writer's points before its switch) are skipped, as are rows not
        `allowed` (dead in it); when fewer than k documents remain, the search widens (doubling,
        until every matching point has been seen)."""
        query_filter = self.query_filter(filters, COLUMNS)
        m = self.models
        started = time.perf_counter()
        using = vector_name(dim, self.full_dim)
        small, full = prefix(queries, dim), np.asarray(queries, dtype=np.float32)
        results = []
        for q_small, q_full in zip(small, full):
            n = max(1, min(candidates, self.manifest.live_chunks))
            while True:
                if rerank:
                    prefetch = m.Prefetch(query=q_small.tolist(), using=using, limit=n, filter=query_filter)
                    found = self._call("query_points", self.collection, prefetch=prefetch, query=q_full.tolist(),
                                       using=FULL, limit=n, query_filter=query_filter, with_payload=["row"]).points
                else:
                    found = self._call("query_points", self.collection, query=q_small.tolist(), using=using, limit=n,
                                       query_filter=query_filter, with_payload=["row"]).points
                rows = np.array([p.payload["row"] for p in found], dtype=np.int64)
                scores = np.array([p.score for p in found], dtype=np.float32)
                known = rows < len(chunk_doc)
                if allowed is not None:  # a document replaced or deleted by a write whose cleanup has not run
                    known[known] = allowed[rows[known]]
                hits = collapse(rows[known], scores[known], chunk_doc, k)
                if len(hits) == k or len(found) < n:  # k documents, or every matching point seen
                    break
                n *= 2
            results.append(hits)
        return results, {"search": (time.perf_counter() - started) * 1000, "rerank": 0.0}
