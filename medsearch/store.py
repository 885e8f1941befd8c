"""The SQLite document store (`docs.db`): documents, their chunks (row = FAISS id) and FTS5 over chunks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlite_utils

from medsearch.chunking import Chunk
from medsearch.corpus import Document


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


class DocStore:
    """Read side: turn chunk rows (FAISS ids) into documents with the matching chunk."""

    def __init__(self, path: Path):
        self.db = sqlite_utils.Database(path)

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
        words = re.findall(r"\w+", query or "")
        if words:
            match = " OR ".join(f'"{w}"' for w in words)
            sql = (
                "SELECT rowid, snippet(chunks_fts, 0, '', '', ' … ', 40) AS fragment FROM chunks_fts "
                f"WHERE chunks_fts MATCH ? AND rowid IN ({marks})"
            )
            for r in self.db.query(sql, [match, *rows]):
                found[r["rowid"]]["highlight"] = r["fragment"]
        return found

    def doc_ids(self) -> list[str]:
        """Document ids in ordinal order (`chunk_doc.npy` holds ordinals)."""
        return [r["id"] for r in self.db.query("SELECT id FROM documents ORDER BY ordinal")]

    def close(self) -> None:
        self.db.close()
