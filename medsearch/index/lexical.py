"""Lexical retrieval over the index's chunks: BM25 (bm25s) on each chunk's title + text.

Built in the same pass as the dense tiers and kept beside them in the generation folder
(`lexical/`, bm25s's own files, memory-mapped at load); row i of the BM25 matrix is chunk row i,
so the live and filter masks of the dense search apply unchanged.

Why bm25s and not the FTS5 table the store already keeps (measured with the same chunks, MedQuAD
dev split, 1,459 questions against 15,820 documents / 27,082 chunks, 2 cores; bench/lexical.py):
bm25s with English stop words and Snowball stemming reaches NDCG@10 0.608 at 0.9 ms a query (p50);
FTS5's bm25 over chunk text 0.541 at 8.6 ms (its OR query scores every chunk that shares a word).
On the bundled questions bm25s 0.897, FTS5 0.887; stemming lifts bm25s there from 0.809.

Languages (language.py): each chunk is analysed in its index's language (Snowball stemmer and stop
words), or with several languages in its own, detected among them; a query in each of the index's
languages, the terms joined; text is NFKC-normalised and stems lose their diacritics. The analysis
is recorded in the manifest (`Analysis`), so queries and later writes analyse as the build did.

Living index: a write that adds text rebuilds the BM25 matrix, whose term statistics every chunk
shares, but tokenizes only its own chunks: each generation keeps its chunks' token ids
(`lexical/tokens.npz`), and the next one reuses them for the rows it keeps (tokenizing is half of a
rebuild: 1.3 of 2.5 s for 27k chunks). A delete keeps the matrix (hard link) and the deleted rows
are masked out of every search, their words still counting in the term statistics until the next
add or compaction (as in Lucene).
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsearch.index import language, layout
from medsearch.index.generations import link_file

# bm25s's own file that records the row count (read through bm25s.BM25.load only: `rows`); named
# here for `medsearch verify`, whose problem line for a matrix it cannot load names it
PARAMS_FILE = f"{layout.LEXICAL_DIR}/params.index.json"
FOLD_ACCENTS = True  # stems lose their diacritics (measured in bench/language.py)
# Words: runs of 2+ word characters, as bm25s's own pattern, and the combining marks of scripts that
# write vowels with them (Devanagari to Sinhala), which \w leaves out and would cut words at
TOKEN_PATTERN = r"(?u)[\w\u0900-\u0DFF]{2,}"


_last_query = threading.local()  # Analysis.query_terms's last (analysis, query) and terms, per thread


class _Folding:
    """A stemmer whose stems lose their diacritics (or, without a stemmer, words that do): a query
    typed without accents meets the documents' words."""

    def __init__(self, stemmer):
        self.stemmer = stemmer

    def stemWords(self, words):  # noqa: N802 - the PyStemmer method name bm25s calls
        return [language.fold(w) for w in (self.stemmer.stemWords(words) if self.stemmer else words)]


@dataclass(frozen=True)
class Analysis:
    """How an index's text becomes BM25 terms: its languages (each with its Snowball stemmer and stop
    words, language.ANALYSES; none: language-neutral) and whether stems lose their accents. With
    several languages, each chunk is analysed in its own (detected among them), a query in each."""

    languages: tuple[str, ...] = ("en",)
    fold_accents: bool = False
    detected: bool = field(default=False, compare=False)  # told from the corpus (index --language auto)

    @classmethod
    def from_manifest(cls, entry: dict | None, path: Path | None = None) -> "Analysis":
        """The analysis a manifest's `lexical` entry records (one from before languages: English);
        languages this version has no analysis for are an IndexFormatError (of the index at `path`)."""
        entry = entry or {}
        if "languages" not in entry:
            return cls(("en",), False)
        codes = entry["languages"]
        if not isinstance(codes, list) or not all(isinstance(c, str) and c in language.ANALYSES for c in codes):
            from medsearch.errors import IndexFormatError

            raise IndexFormatError(f"the index's lexical analysis names languages this medsearch has no analysis for "
                                   f"({codes!r})", path)
        return cls(tuple(codes), bool(entry.get("fold_accents", False)), bool(entry.get("detected", False)))

    def describe(self) -> dict:
        return {"languages": list(self.languages), "fold_accents": self.fold_accents, "detected": self.detected,
                "stemmers": {code: language.ANALYSES[code][0] for code in self.languages},
                "stopwords": {code: language.ANALYSES[code][1] for code in self.languages}}

    def language_of(self, text: str) -> str | None:
        """The language a passage is analysed in: the index's only one, or the likeliest of its languages."""
        if len(self.languages) < 2:
            return self.languages[0] if self.languages else None
        return language.detect(text, among=self.languages)

    def query_terms(self, query: str, stemmers: dict | None = None) -> list[str]:
        """A query's terms: analysed in the index's language, or with several in each of them, the
        terms joined (a short query's language cannot be told: bench/language.py). The thread's last
        query is remembered: its BM25 search and its hits' citations ask for the same terms."""
        if getattr(_last_query, "key", None) == (self, query):
            return list(_last_query.terms)
        if len(self.languages) < 2:
            terms = self.tokenize([query], stemmers)[0]
        else:
            joined = {}
            for code in self.languages:
                joined.update(dict.fromkeys(Analysis((code,), self.fold_accents).tokenize([query], stemmers)[0]))
            terms = list(joined)
        _last_query.key, _last_query.terms = (self, query), tuple(terms)
        return terms

    def stemmer(self, code: str | None):
        """A new stemmer for `code` (None: language-neutral), folding when the analysis does."""
        name = language.ANALYSES[code][0] if code else None
        stemmer = None
        if name:
            import Stemmer

            stemmer = Stemmer.Stemmer(name)
        return _Folding(stemmer) if self.fold_accents else stemmer

    def tokenize(self, texts: list[str], stemmers: dict | None = None) -> list[list[str]]:
        """The terms of each text, each analysed in its language; `stemmers` (language -> stemmer)
        keeps a caller's own stemmers (PyStemmer's are not documented as thread-safe)."""
        import bm25s

        stemmers = {} if stemmers is None else stemmers
        texts = [unicodedata.normalize("NFKC", text) for text in texts]  # é as one letter, ligatures as letters
        groups: dict[str | None, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(self.language_of(text), []).append(i)
        out: list[list[str]] = [[] for _ in texts]
        for code, rows in groups.items():
            if code not in stemmers:
                stemmers[code] = self.stemmer(code)
            stopwords = language.ANALYSES[code][1] if code else None
            tokens = bm25s.tokenize([texts[i] for i in rows], stopwords=stopwords, stemmer=stemmers[code],
                                    token_pattern=TOKEN_PATTERN, return_ids=False, show_progress=False)
            for i, terms in zip(rows, tokens):
                out[i] = terms
        return out


def choose_analysis(choice: "str | Analysis", texts: list[str]) -> Analysis:
    """The analysis for a corpus whose documents read `texts`: `choice` is an Analysis (kept), a
    language code, `none` (language-neutral) or `auto` (the corpus's languages,
    language.corpus_languages; neutral when none could be told or none has an analysis)."""
    if isinstance(choice, Analysis):
        return choice
    choice = language.check(choice)
    if choice == language.NEUTRAL:
        codes = []
    elif choice == language.AUTO:
        codes = [code for code in language.corpus_languages(texts) if code in language.ANALYSES]
    else:
        codes = [choice]
    return Analysis(tuple(codes), FOLD_ACCENTS, detected=choice == language.AUTO)


def settings(analysis: Analysis) -> dict:
    """What the manifest records about the lexical index."""
    import bm25s

    return {"library": f"bm25s {bm25s.__version__}", **analysis.describe(), "text": "title + chunk", "dir": layout.LEXICAL_DIR}


def write_lexical(folder: Path, passages: list[str], analysis: Analysis = Analysis()) -> None:
    """BM25 over `passages` (one per chunk row; "" for a dead row) saved in `folder/lexical/`."""
    _write(folder, [], {}, passages, 0, analysis)


def write_from_store(folder: Path, rows: int, analysis: Analysis, base: Path | None = None, first_new: int = 0) -> None:
    """The lexical index of a generation folder, from its document store (dead rows: empty passages). With
    `base`, the generation this one appends to (rows from `first_new` on are new): the rows it keeps
    reuse its token ids, and only the new rows are tokenized."""
    from medsearch.index.store import DocStore

    kept = None
    if base is not None and (base / layout.LEXICAL_DIR / layout.TOKENS).is_file():
        from medsearch.index import checksums

        checksums.check(base, f"{layout.LEXICAL_DIR}/{layout.TOKENS}")  # damage stops the write, as for the document store
        kept = _read_tokens(base / layout.LEXICAL_DIR / layout.TOKENS, first_new)
    store = DocStore(folder / layout.DOCS)
    try:
        if kept is None:
            _write(folder, [], {}, store.passages(rows), 0, analysis)
            return
        ids, vocab = kept
        live = np.zeros(rows, dtype=bool)
        live[store.chunk_rows()] = True
        ids = [row if live[i] else [] for i, row in enumerate(ids)]  # rows deleted since: no words
        _write(folder, ids, vocab, store.passages(rows, first_row=first_new), first_new, analysis)
    finally:
        store.close()


def _write(folder: Path, ids: list[list[int]], vocab: dict[str, int], passages: list[str], first: int,
           analysis: Analysis) -> None:
    """BM25 over rows whose token ids are `ids` (rows < `first`) followed by `passages[first:]`,
    tokenized here into the same vocabulary; saved with the token ids in `folder/lexical/`."""
    import bm25s

    for tokens in analysis.tokenize(passages[first:]):
        ids.append([vocab.setdefault(token, len(vocab)) for token in tokens])
    out = folder / layout.LEXICAL_DIR
    retriever = bm25s.BM25()
    # a corpus without a single word (emoji, numbers of one digit): one term no query can have
    terms = dict(vocab) or {"": 0}
    with np.errstate(divide="ignore", invalid="ignore"):
        retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=terms), show_progress=False)
    retriever.save(out, show_progress=False)
    offsets = np.cumsum([0] + [len(row) for row in ids], dtype=np.int64)
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int32, count=int(offsets[-1]))
    words = np.array(sorted(vocab, key=vocab.get), dtype=str) if vocab else np.array([], dtype="<U1")
    np.savez(out / layout.TOKENS, ids=flat, offsets=offsets, vocab=words)


def _read_tokens(path: Path, rows: int) -> tuple[list[list[int]], dict[str, int]] | None:
    """The token ids of rows 0..rows-1 and the vocabulary, as a generation saved them (None: it did
    not, not for that many rows, or not readably (a generation from before checksums): the caller
    tokenizes everything)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as saved:
            flat, offsets, words = saved["ids"], saved["offsets"], saved["vocab"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (len(offsets) != rows + 1 or offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(flat)
            or np.any(np.diff(offsets) < 0) or (len(flat) and (flat.min() < 0 or flat.max() >= len(words)))):
        return None
    ids = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(rows)]
    return ids, {str(word): i for i, word in enumerate(words)}


def carry_over(base: Path, folder: Path) -> None:
    """The lexical index of generation `base`, unchanged, in the generation `folder` (hard links):
    a delete-only write, whose deleted rows are masked out of every search."""
    if (base / layout.LEXICAL_DIR).is_dir():
        (folder / layout.LEXICAL_DIR).mkdir()
        for path in (base / layout.LEXICAL_DIR).iterdir():
            link_file(path, folder / layout.LEXICAL_DIR / path.name)


def rows(folder: Path) -> int:
    """The rows of a generation's BM25 matrix (one per chunk row, dead rows included), as bm25s
    loads it (memory-mapped, without its vocabulary)."""
    import bm25s

    retriever = bm25s.BM25.load(Path(folder) / layout.LEXICAL_DIR, mmap=True, load_vocab=False, show_progress=False)
    return int(retriever.scores["num_docs"])


def matrix_files(names) -> list[str]:
    """Of a generation's file names (relative paths), those of its BM25 matrix, which `rows` reads
    (the token ids beside it aside)."""
    return [name for name in names if name.startswith(f"{layout.LEXICAL_DIR}/") and name != f"{layout.LEXICAL_DIR}/{layout.TOKENS}"]


class Lexical:
    """A loaded lexical index: BM25 scores of every chunk row for a query."""

    def __init__(self, folder: Path, analysis: Analysis = Analysis()):
        import bm25s

        path = Path(folder) / layout.LEXICAL_DIR
        self.retriever = bm25s.BM25.load(path, mmap=True, show_progress=False)
        self.rows = self.retriever.scores["num_docs"]  # one per chunk row, dead rows included
        self.vocab = self.retriever.vocab_dict
        self.analysis = analysis
        self._local = threading.local()

    @property
    def stemmers(self) -> dict:
        """This thread's stemmers: PyStemmer's objects are not documented as thread-safe (a service's
        search threads each get their own; the BM25 arrays are only read)."""
        stemmers = getattr(self._local, "stemmers", None)
        if stemmers is None:
            stemmers = self._local.stemmers = {}
        return stemmers

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of each chunk row (0 where no query word occurs), the query analysed in its language."""
        tokens = [t for t in self.analysis.query_terms(query, self.stemmers) if t in self.vocab]
        if not tokens:
            return np.zeros(self.rows, dtype=np.float32)
        return self.retriever.get_scores(tokens)
