"""The document store's read side: read-only, usable from many threads at once, document lookup."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from medsearch.errors import NotFoundError
from medsearch.index.folder import open_index
from medsearch.index.store import DocStore


def test_read_only_and_usable_from_many_threads(bundled_index):
    store = DocStore(open_index(bundled_index).folder / "docs.db")
    rows = list(range(open_index(bundled_index).chunks))
    expected = {row: info["id"] for row, info in store.hydrate(rows).items()}

    def hydrate(offset):
        chosen = rows[offset::8]
        return {row: info["id"] for row, info in store.hydrate(chosen).items()}

    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            merged = {}
            for part in pool.map(hydrate, range(8)):
                merged.update(part)
            assert merged == expected
    assert len(store._connections) >= 2  # threads got their own connections
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("DELETE FROM documents")
    store.close()
    assert store.hydrate([0])[0]["id"] == expected[0]  # reopens after close


def test_document_lookup(bundled_index, tmp_path):
    store = DocStore(open_index(bundled_index).folder / "docs.db")
    doc = store.document("doc-020")
    assert doc["title"] == "Type 2 diabetes: early signs"
    assert doc["metadata"] == {"topic": "condition"}
    with pytest.raises(NotFoundError, match="no document with id 'nope'"):
        store.document("nope")
    with pytest.raises(NotFoundError, match="document store not found"):
        DocStore(tmp_path / "missing.db")
