"""The SQLite document store (`docs.db`): documents, their chunks (row = FAISS id) and FTS5 over chunks."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from medsearch.chunking import Chunk
from medsearch.corpus import Document
from medsearch.errors import NotFoundError


def write_store(path: Path, documents: list[Document], chunks: list[Chunk]) -> None:
    db = sqlite_utils.Database(path)
    db["documents"].insert_all(
        (
            {
                "ordinal": i,
                "id": d.id,
                "title": d.title,
                "text": d.text,
                "source": d.source,
                "url": d.url,
                "metadata": json.dumps(d.metadata, ensure_ascii=False),
                "content_hash": d.content_hash,
            }
            for i, d in enumerate(documents)
        ),
        pk="ordinal",
        batch_size=2000,
    )
    db["documents"].create_index(["id"], unique=True)
    db["chunks"].insert_all(
        (
            {"row": row, "doc": c.doc, "position": c.position, "start": c.start, "end": c.end, "text": c.text}
            for row, c in enumerate(chunks)
        ),
        pk="row",
        foreign_keys=[("doc", "documents", "ordinal")],
        batch_size=2000,
    )
    db["chunks"].enable_fts(["text"], tokenize="porter")
    db.close()


# Words left out of the snippet's FTS5 match: they are in nearly every chunk, so matching them costs
# time (half of hydration's, measured on the bundled questions) and pulls the fragment off the subject.
STOPWORDS = frozenset(
    "a an and are as at be but by can could do does for from had has have how i i'm if in into is it its me my "
    "no not of on or our should so than that the their them then there these they this to was we were what when "
    "where which who why will with would you your".split()
)


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
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() may close it from another thread
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            with self._lock:
                self._connections.append(connection)
            db = self._local.db = sqlite_utils.Database(connection)
        return db

    def hydrate(self, rows: list[int], query: str | None = None) -> dict[int, dict]:
        """Document fields and chunk text for each chunk row; with `query`, also `highlight`: FTS5's
        best fragment of the chunk for the query's words (None where no word matches)."""
        if not rows:
            return {}
        rows = [int(x) for x in rows]
        marks = ",".join("?" * len(rows))
        sql = (
            "SELECT c.row, c.text AS chunk, c.position, d.id, d.title, d.url, d.source, d.metadata "
            f"FROM chunks c JOIN documents d ON d.ordinal = c.doc WHERE c.row IN ({marks})"
        )
        found = {}
        for r in self.db.query(sql, rows):
            r["metadata"] = json.loads(r["metadata"] or "{}")
            r["highlight"] = None
            found[r.pop("row")] = r
        words = [w for w in re.findall(r"\w+", query or "") if w.lower() not in STOPWORDS]
        if words:
            match = " OR ".join(f'"{w}"' for w in words)
            sql = (
                "SELECT rowid, snippet(chunks_fts, 0, '', '', ' … ', 40) AS fragment FROM chunks_fts "
                f"WHERE chunks_fts MATCH ? AND rowid IN ({marks})"
            )
            for r in self.db.query(sql, [match, *rows]):
                found[r["rowid"]]["highlight"] = r["fragment"]
        return found

    def document(self, doc_id: str) -> dict:
        """The whole document: id, title, text, url, source, metadata."""
        rows = list(self.db.query(
            "SELECT id, title, text, url, source, metadata FROM documents WHERE id = ?", [doc_id]
        ))
        if not rows:
            raise NotFoundError(f"no document with id '{doc_id}'")
        document = rows[0]
        document["metadata"] = json.loads(document["metadata"] or "{}")
        return document

    def doc_ids(self) -> list[str]:
        """Document ids in ordinal order (`chunk_doc.npy` holds ordinals)."""
        return [r["id"] for r in self.db.query("SELECT id FROM documents ORDER BY ordinal")]

    def close(self) -> None:
        """Close every thread's connection (call once no thread uses the store any more)."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
