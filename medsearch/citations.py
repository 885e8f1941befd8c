"""Where a hit comes from and what in it answers: its citation (source, URL, page, section path),
the chunk's span in the document's text, the query's terms in the chunk (highlights) and the
chunk's sentence that best answers the query (quote). Offsets are characters of the document's
text as `get_document` / GET /documents/{id} return it, so a program can quote exactly.

Terms match as BM25 matches them: each word analysed in the index's language (lexical.Analysis:
stemmer, stop words, folding), so "vaccinated" highlights "vaccination". The quote is the
sentence with the most of the query's terms, or for a hit that shares none with the query (a
dense hit found by meaning), the sentence closest to the query in the encoder's space.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import numpy as np

from medsearch.documents.base import Layout
from medsearch.lexical import TOKEN_PATTERN, Analysis
from medsearch.options import DEFAULT_QUOTE_SENTENCES

# A sentence: text up to a sentence end (. ! ? and their CJK forms, with closing quotes or brackets)
# followed by a space, or up to a line end. Written here rather than taken from a sentence splitter
# package: a quote only needs a span the reader sees as one sentence, and this one costs microseconds.
_SENTENCE = re.compile(r"\S(?:.*?)(?:[.!?。！？]+[\"'”’)\]]*(?=\s)|(?=\n)|$)", re.S)
_TOKEN = re.compile(TOKEN_PATTERN)
SENTENCES_PER_HIT = 8  # sentences of one hit the encoder compares with the query (hits without shared terms)
MAX_SENTENCE_CHARS = 400
_local = threading.local()


def sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans (document offsets) of the sentences of text[start:end], whitespace trimmed."""
    spans = []
    for match in _SENTENCE.finditer(text, start, end):
        a, b = match.start(), match.end()
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a and _TOKEN.search(text, a, b):
            spans.append((a, b))
    return spans


def _stemmers(analysis: Analysis) -> dict:
    """This thread's stemmers for `analysis` (PyStemmer's are not documented as thread-safe)."""
    cache = getattr(_local, "stemmers", None)
    if cache is None:
        cache = _local.stemmers = {}
    return cache.setdefault(analysis, {})


def query_terms(analysis: Analysis, query: str) -> set[str]:
    return set(analysis.query_terms(query, _stemmers(analysis)))


def term_spans(analysis: Analysis, terms: set[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of the words of text[start:end] whose analysed form is one of `terms`."""
    if not terms:
        return []
    matches = list(_TOKEN.finditer(text, start, end))
    if not matches:
        return []
    words = [unicodedata.normalize("NFKC", m.group()).lower() for m in matches]
    code = analysis.language_of(text[start:end])
    stemmers = _stemmers(analysis)
    if code not in stemmers:
        stemmers[code] = analysis.stemmer(code)
    stemmer = stemmers[code]
    stems = stemmer.stemWords(words) if stemmer is not None else words
    return [(m.start(), m.end()) for m, stem in zip(matches, stems) if stem in terms]


def best_sentence(spans: list[tuple[int, int]], highlights: list[tuple[int, int]], text: str) -> tuple[int, int] | None:
    """The sentence with the most distinct query terms (ties: the earlier); None when none has one."""
    if not spans or not highlights:
        return None

    def score(span):
        inside = [text[a:b].lower() for a, b in highlights if span[0] <= a < span[1]]
        return len(set(inside)), len(inside)

    best = max(range(len(spans)), key=lambda i: (score(spans[i]), -i))
    return spans[best] if score(spans[best])[0] else None


def cite(hits: list[dict], terms: set[str], analysis: Analysis, encoder=None,
         query_vector: np.ndarray | None = None, budget: int = DEFAULT_QUOTE_SENTENCES) -> list[dict]:
    """The citation fields of hydrated chunks (store.DocStore.hydrate's rows, whose text is the
    document's text from `start` to `end`): citation, span, highlights, quote. A chunk without the
    query's terms is quoted by meaning when an encoder and the query's vector are given: its
    sentences are encoded (all such chunks' in one pass, `budget` sentences at most, in rank order)
    and the nearest the query is the quote; otherwise its first sentence."""
    out, by_meaning = [], []
    for found in hits:
        chunk = found["chunk"]
        highlights = term_spans(analysis, terms, chunk, 0, len(chunk))
        spans = sentences(chunk, 0, len(chunk))
        quote = best_sentence(spans, highlights, chunk)
        if quote is None and len(spans) > 1 and encoder is not None and query_vector is not None and budget > 1:
            by_meaning.append((len(out), spans[:min(SENTENCES_PER_HIT, budget)]))
            budget -= len(by_meaning[-1][1])
        out.append([found, highlights, quote or (spans[0] if spans else None)])
    if by_meaning:
        texts = [out[i][0]["chunk"][a:b][:MAX_SENTENCE_CHARS] for i, spans in by_meaning for a, b in spans]
        similarity = encoder.encode_passages(texts)[:, : len(query_vector)] @ query_vector
        first = 0
        for i, spans in by_meaning:
            out[i][2] = spans[int(np.argmax(similarity[first:first + len(spans)]))]
            first += len(spans)
    return [_fields(found, highlights, quote) for found, highlights, quote in out]


def _fields(found: dict, highlights: list[tuple[int, int]], quote: tuple[int, int] | None) -> dict:
    shift, chunk = found["start"], found["chunk"]
    layout = Layout.from_json(found.get("layout"))
    at = shift + (quote[0] if quote else 0)
    return {
        "citation": {"source": found["source"], "url": found["url"], "page": layout.page_at(at),
                     "section": layout.section_at(at)},
        "span": [shift, found["end"]],
        "highlights": [[a + shift, b + shift] for a, b in highlights],
        "quote": {"start": quote[0] + shift, "end": quote[1] + shift, "text": chunk[quote[0]:quote[1]]} if quote else None,
    }
