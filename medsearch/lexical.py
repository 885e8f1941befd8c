"""Lexical retrieval over the index's chunks: BM25 (bm25s) on each chunk's title + text.

Built in the same pass as the dense tiers and kept beside them in the generation folder
(`lexical/`, bm25s's own files, memory-mapped at load); row i of the BM25 matrix is chunk row i,
so the live and filter masks of the dense search apply unchanged.

Why bm25s and not the FTS5 table the store already keeps (measured with the same chunks, MedQuAD
dev split, 1,459 questions against 15,820 documents / 27,082 chunks, 2 cores; bench/lexical.py):
bm25s with English stop words and Snowball stemming reaches NDCG@10 0.608 at 0.9 ms a query (p50);
FTS5's bm25 over chunk text 0.541 at 8.6 ms (its OR query scores every chunk that shares a word).
On the bundled questions bm25s 0.897, FTS5 0.887; stemming lifts bm25s there from 0.809.

Living index: a write that adds text rebuilds the BM25 matrix from the new docs.db (2.3 s for 27k
chunks); a delete keeps it (hard link) and the deleted rows are masked out of every search, their
words still counting in the term statistics until the next add or compaction (as in Lucene).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from medsearch.generations import link_file

LEXICAL_DIR = "lexical"
STOPWORDS = "en"
STEMMER = "english"  # Snowball (PyStemmer)


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer(STEMMER)


def _tokenize(texts: list[str], stemmer, return_ids: bool):
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=stemmer, return_ids=return_ids, show_progress=False)


def settings() -> dict:
    """What the manifest records about the lexical index."""
    import bm25s

    return {"library": f"bm25s {bm25s.__version__}", "stopwords": STOPWORDS, "stemmer": STEMMER,
            "text": "title + chunk", "dir": LEXICAL_DIR}


def write_lexical(folder: Path, passages: list[str]) -> None:
    """BM25 over `passages` (one per chunk row; "" for a dead row) saved in `folder/lexical/`."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_tokenize(passages, _stemmer(), return_ids=True), show_progress=False)
    retriever.save(folder / LEXICAL_DIR, show_progress=False)


def write_from_store(folder: Path, rows: int) -> None:
    """The lexical index of a generation folder, from its docs.db (dead rows: empty passages)."""
    from medsearch.store import DocStore

    store = DocStore(folder / "docs.db")
    try:
        write_lexical(folder, store.passages(rows))
    finally:
        store.close()


def carry_over(base: Path, folder: Path) -> None:
    """The lexical index of generation `base`, unchanged, in the generation `folder` (hard links):
    a delete-only write, whose deleted rows are masked out of every search."""
    if (base / LEXICAL_DIR).is_dir():
        (folder / LEXICAL_DIR).mkdir()
        for path in (base / LEXICAL_DIR).iterdir():
            link_file(path, folder / LEXICAL_DIR / path.name)


class Lexical:
    """A loaded lexical index: BM25 scores of every chunk row for a query."""

    def __init__(self, folder: Path):
        import bm25s

        path = Path(folder) / LEXICAL_DIR
        self.retriever = bm25s.BM25.load(path, mmap=True, show_progress=False)
        self.rows = self.retriever.scores["num_docs"]  # one per chunk row, dead rows included
        self.vocab = self.retriever.vocab_dict
        self._local = threading.local()

    @property
    def stemmer(self):
        """This thread's Snowball stemmer: PyStemmer's objects are not documented as thread-safe (a
        service's search threads each get their own; the BM25 arrays are only read)."""
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = _stemmer()
        return stemmer

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of each chunk row (0 where no query word occurs)."""
        tokens = [t for t in _tokenize([query], self.stemmer, return_ids=False)[0] if t in self.vocab]
        if not tokens:
            return np.zeros(self.rows, dtype=np.float32)
        return self.retriever.get_scores(tokens)
