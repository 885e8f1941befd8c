"""The SQLite document store (layout.DOCS): documents, their chunks (row = FAISS id) and FTS5 over chunks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from medsearch.documents.corpus import Document
from medsearch.encoding.chunking import Chunk, passage
from medsearch.errors import NotFoundError
from medsearch.validation import normal_id

if TYPE_CHECKING:  # writes use sqlite-utils; reads (a query's path) plain sqlite3, without its import
    import sqlite_utils


# Fields a filter can name besides metadata keys (filters.py); each has an SQLite index.
COLUMNS = ("id", "title", "source", "url")
MAX_INDEXED_KEYS = 64  # metadata keys that get an expression index (filters on others still work, slower)


def write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
    """A new document store: documents (ordinal = position in `documents`), chunks (row = position in
    `chunks`, `doc` = a document ordinal), FTS5 over chunk text kept in sync by triggers."""
    import sqlite_utils

    db = sqlite_utils.Database(path)
    db["documents"].insert_all(document_rows(documents, 0), pk="ordinal", batch_size=2000, columns={"layout": str})
    db["documents"].create_index(["id"], unique=True)
    for column in ("source", "url"):
        db["documents"].create_index([column])
    db["chunks"].insert_all(chunk_rows(chunks, 0), pk="row", foreign_keys=[("doc", "documents", "ordinal")], batch_size=2000)
    db["chunks"].create_index(["doc"])
    db["chunks"].enable_fts(["text"], tokenize="porter", create_triggers=True)
    index_metadata_keys(db)
    db.close()


@dataclass
class StoreChange:
    """What a write left in the next generation's document store."""

    first_ordinal: int  # the ordinal of the first document it inserted
    documents: int
    live_chunks: int
    corpus_fingerprint: str
    metadata_fields: list[str]


def write_change(path: Path, base: Path, remove: list[str], documents: list[Document], chunks: list[Chunk],
                 first_row: int) -> StoreChange:
    """The next generation's document store at `path`: a copy of `base` without the documents whose ids are
    in `remove` (and their chunks), with `documents` added after the last ordinal and their `chunks`
    (`doc` = position in `documents`) as rows first_row, first_row + 1, ... The tables, indexes and
    FTS triggers come with the copy, so plain sqlite3 inserts the rows (sqlite-utils' import alone
    would cost a small write a third of a second)."""
    shutil.copyfile(base, path)
    db = sqlite3.connect(path)
    try:
        with db:
            first_ordinal = db.execute("SELECT coalesce(max(ordinal), -1) + 1 FROM documents").fetchone()[0]
            if not has_layout(db):  # a document store from before layouts: the column joins it
                db.execute("ALTER TABLE documents ADD COLUMN layout TEXT")
            for start in range(0, len(remove), 500):
                batch = remove[start:start + 500]
                marks = ",".join("?" * len(batch))
                db.execute(f"DELETE FROM chunks WHERE doc IN (SELECT ordinal FROM documents WHERE id IN ({marks}))", batch)
                db.execute(f"DELETE FROM documents WHERE id IN ({marks})", batch)
            for table, rows in (("documents", document_rows(documents, first_ordinal)),
                                ("chunks", chunk_rows(chunks, first_row, first_ordinal))):
                rows = list(rows)
                if rows:
                    columns = ", ".join(f'"{c}"' for c in rows[0])
                    db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(rows[0]))})",
                                   [tuple(r.values()) for r in rows])
        index_metadata_keys(db)
        document_count, live_chunks = counts(db)
        fingerprint = corpus_fingerprint(db.execute("SELECT id, content_hash FROM documents ORDER BY ordinal"))
        return StoreChange(first_ordinal, document_count, live_chunks, fingerprint, metadata_keys(db))
    finally:
        db.close()


def corpus_fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """Hash of (document id, content hash) pairs in order."""
    digest = hashlib.sha256()
    for doc_id, content_hash in pairs:
        digest.update(f"{doc_id}\t{content_hash}\n".encode())
    return digest.hexdigest()[:16]


def document_rows(documents: list[Document], first_ordinal: int) -> Iterator[dict]:
    for i, d in enumerate(documents):
        yield {"ordinal": first_ordinal + i, "id": d.id, "title": d.title, "text": d.text, "source": d.source,
               "url": d.url, "metadata": json.dumps(d.metadata, ensure_ascii=False), "content_hash": d.content_hash,
               "layout": json.dumps(d.layout) if d.layout else None}


def has_layout(db: sqlite3.Connection) -> bool:
    """Whether a document store's documents have a `layout` column (pages and sections; from medsearch 0.1 with documents)."""
    return any(row[1] == "layout" for row in db.execute("PRAGMA table_info(documents)"))


def chunk_rows(chunks: list[Chunk], first_row: int, doc_offset: int = 0) -> Iterator[dict]:
    """Chunk rows first_row, first_row + 1, ...; `doc_offset` is added to each chunk's `doc`."""
    for i, c in enumerate(chunks):
        yield {"row": first_row + i, "doc": doc_offset + c.doc, "position": c.position, "start": c.start,
               "end": c.end, "text": c.text}


def counts(db: sqlite3.Connection) -> tuple[int, int]:
    """(documents, chunks) in a document store."""
    return (db.execute("SELECT count(*) FROM documents").fetchone()[0],
            db.execute("SELECT count(*) FROM chunks").fetchone()[0])


def metadata_keys(db: sqlite3.Connection) -> list[str]:
    """Every key that some document's metadata has."""
    return [r[0] for r in db.execute("SELECT DISTINCT j.key FROM documents d, json_each(d.metadata) j ORDER BY j.key")]


def index_metadata_keys(db: "sqlite3.Connection | sqlite_utils.Database") -> None:
    """Expression indexes per metadata key, on its value and on its JSON type, so a filter on it is
    evaluated from the indexes (filters.filter_sql: `flag=true` and a list's elements need the type)."""
    for key in metadata_keys(db)[:MAX_INDEXED_KEYS]:
        name = re.sub(r"\W", "_", key)
        db.execute(f'CREATE INDEX IF NOT EXISTS "meta_{name}" ON documents ({metadata_expression(key, "")})')
        db.execute(f'CREATE INDEX IF NOT EXISTS "metatype_{name}" ON documents ({metadata_expression(key, "", "json_type")})')


def metadata_expression(key: str, table: str = "d.", function: str = "json_extract") -> str:
    """SQL for a top-level metadata key's value (or, with `function`, its `json_type` or its
    `json_each` rows); the same text in the index and in filters, so SQLite uses the index. The key
    is quoted as a JSON path and as an SQL literal: any key is safe."""
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{function}({table}metadata, '{path.replace(chr(39), chr(39) * 2)}')"


class DocStore:
    """Read side: turn chunk rows (FAISS ids) into documents with the matching chunk.

    Read-only, and usable from any thread: each thread opens its own read-only connection
    (an sqlite3 connection refuses other threads), so a server's worker threads never share one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"document store not found: {self.path}")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection; rows read as sqlite3.Row (by name or position)."""
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() may close it from another thread
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            db.row_factory = sqlite3.Row
            with self._lock:
                self._connections.append(db)
            self._local.db = db
        return db

    @property
    def _layout(self) -> str:
        """The SQL for a document's layout: its column, or NULL in a document store from before layouts."""
        if not hasattr(self, "_layout_sql"):
            self._layout_sql = "d.layout" if has_layout(self.db) else "NULL"
        return self._layout_sql

    def query(self, sql: str, params: list | tuple = ()) -> Iterator[dict]:
        """Rows of `sql` as dicts."""
        return (dict(row) for row in self.db.execute(sql, params))

    def hydrate(self, rows: list[int]) -> dict[int, dict]:
        """Document fields and chunk text for each chunk row."""
        if not rows:
            return {}
        rows = [int(x) for x in rows]
        marks = ",".join("?" * len(rows))
        sql = (
            f'SELECT c.row, c.text AS chunk, c.position, c.start, c."end", d.id, d.title, d.url, d.source, d.metadata, '
            f"{self._layout} AS layout FROM chunks c JOIN documents d ON d.ordinal = c.doc WHERE c.row IN ({marks})"
        )
        found = {}
        for r in self.query(sql, rows):
            r["metadata"] = json.loads(r["metadata"] or "{}")
            r["layout"] = json.loads(r["layout"]) if r["layout"] else None
            found[r.pop("row")] = r
        return found

    def document(self, doc_id: str) -> dict:
        """The whole document: id, title, text, url, source, metadata. `doc_id` in any Unicode
        normalisation form: ids are stored in NFC (validation.normal_id)."""
        doc_id = normal_id(doc_id)
        rows = list(self.query(
            f"SELECT id, title, text, url, source, metadata, {self._layout} AS layout FROM documents d WHERE id = ?", [doc_id]
        ))
        if not rows:
            raise NotFoundError(f"no document with id '{doc_id}'")
        document = rows[0]
        document["metadata"] = json.loads(document["metadata"] or "{}")
        document["layout"] = json.loads(document["layout"]) if document["layout"] else None
        return document

    def chunk_rows(self) -> np.ndarray:
        """Rows of the live chunks (the others were replaced or deleted)."""
        return np.fromiter((r[0] for r in self.db.execute("SELECT row FROM chunks")), dtype=np.int64)

    def rows_where(self, where: str, params: list) -> np.ndarray:
        """Rows of the live chunks whose document matches an SQL condition on `d` (filters.py)."""
        sql = f"SELECT c.row FROM chunks c JOIN documents d ON d.ordinal = c.doc WHERE {where}"
        return np.fromiter((r[0] for r in self.db.execute(sql, params)), dtype=np.int64)

    def passages(self, rows: int, first_row: int = 0) -> list[str]:
        """Title + text of each live chunk by row (what BM25 indexes), "" for the dead rows (and for
        rows before `first_row`, which are not read)."""
        passages = [""] * rows
        for row, title, text in self.db.execute(
            "SELECT c.row, d.title, c.text FROM chunks c JOIN documents d ON d.ordinal = c.doc WHERE c.row >= ?", [first_row]
        ):
            passages[row] = passage(title, text)
        return passages

    def chunk_records(self, first_row: int = 0) -> list[dict]:
        """Each live chunk from `first_row` on with its document, in row order: row, position, text,
        doc (ordinal), id, title, source, url, metadata (a dict), content_hash. A vector backend's payloads."""
        sql = ("SELECT c.row, c.position, c.text, c.doc, d.id, d.title, d.source, d.url, d.metadata, d.content_hash "
               "FROM chunks c JOIN documents d ON d.ordinal = c.doc WHERE c.row >= ? ORDER BY c.row")
        records = list(self.query(sql, [first_row]))
        for r in records:
            r["metadata"] = json.loads(r["metadata"] or "{}")
        return records

    def hashes(self) -> dict[str, str]:
        """Document id -> content hash, for every document."""
        return {doc_id: content_hash for doc_id, content_hash in self.db.execute("SELECT id, content_hash FROM documents")}

    def counts(self) -> tuple[int, int]:
        """(documents, live chunks)."""
        return counts(self.db)

    def documents(self) -> Iterator[tuple[int, Document]]:
        """(ordinal, document) for every document, in ordinal order."""
        for r in self.query(f"SELECT ordinal, id, title, text, source, url, metadata, {self._layout} AS layout "
                            "FROM documents d ORDER BY ordinal"):
            yield r["ordinal"], Document(id=r["id"], text=r["text"], title=r["title"], url=r["url"],
                                         source=r["source"], metadata=json.loads(r["metadata"] or "{}"),
                                         layout=json.loads(r["layout"]) if r["layout"] else None)

    def chunks(self) -> Iterator[Chunk]:
        """Every live chunk in row order; `doc` is its document's ordinal."""
        for r in self.query('SELECT doc, position, start, "end", text FROM chunks ORDER BY row'):
            yield Chunk(doc=r["doc"], position=r["position"], start=r["start"], end=r["end"], text=r["text"])

    def doc_ids(self) -> list[str]:
        """Document id by ordinal (the chunk map, layout.CHUNK_DOC, holds ordinals; "" where a document was deleted)."""
        rows = self.db.execute("SELECT ordinal, id FROM documents").fetchall()
        ids = [""] * (max((o for o, _ in rows), default=-1) + 1)
        for ordinal, doc_id in rows:
            ids[ordinal] = doc_id
        return ids

    def close(self) -> None:
        """Close every thread's connection (call once no thread uses the store any more)."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
