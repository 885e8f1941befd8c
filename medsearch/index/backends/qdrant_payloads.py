"""What a Qdrant point carries beside its vectors: the chunk's row in the document store as its payload, plus the
numbers a `>=` / `<=` filter compares, read as SQLite's filters read them (filters.filter_sql)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

from medsearch.index.store import DocStore

_NUMERIC_TEXT = re.compile(r"^[0-9.eE+-]+$")
_NUMERIC_PREFIX = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def store_payloads(docs_db: Path, first_row: int = 0) -> list[dict]:
    """The point payloads of a document store's chunks from `first_row` on, in row order."""
    store = DocStore(docs_db)
    try:
        return payloads(store.chunk_records(first_row))
    finally:
        store.close()


def payloads(rows: Iterable[dict]) -> list[dict]:
    """Point payloads from the document store's rows (row, position, text, doc, id, title, source, url, metadata)."""
    out = []
    for r in rows:
        numbers = {key: n for key, value in r["metadata"].items() if (n := _as_number(value)) is not None}
        numbers.update({key: n for key in ("id", "title", "source", "url") if (n := _as_number(r[key])) is not None})
        out.append({**r, "numbers": numbers})
    return out


def _as_number(value) -> float | None:
    """The number a filter's >= / <= compares, as filters.filter_sql reads a value: a JSON number, or
    text of digits, '.', 'e', '+' and '-' that parses as one; never a boolean."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMERIC_TEXT.match(value):  # CAST(... AS REAL): the longest numeric prefix
        head = _NUMERIC_PREFIX.match(value)
        number = float(head.group(0)) if head else 0.0
        return number if math.isfinite(number) else None  # JSON payloads hold finite numbers only
    return None
