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

import bisect
import functools
import re
import threading
import unicodedata

import numpy as np

from medsearch.documents.base import Layout
from medsearch.index.lexical import TOKEN_PATTERN, Analysis
from medsearch.retrieval.options import DEFAULT_QUOTE_SENTENCES

# A sentence ends at . ! ? (or their CJK forms, with closing quotes or brackets) followed by a
# space, or at a line end. Written here rather than taken from a sentence splitter package: a quote
# only needs a span the reader sees as one sentence, and this costs microseconds a chunk.
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)\]]*(?=\s)|\n")
_TOKEN = re.compile(TOKEN_PATTERN)
_WORD_REST = r"[\w\u0900-\u0DFF]*"
PREFIX = 3  # a word is analysed when it starts like a query term (its first letters, accents aside)
# One letter for one letter, accents dropped (Latin-1 and Latin Extended-A/B): lengths, and so
# offsets, are kept, unlike NFD folding
_FOLD = {c: unicodedata.normalize("NFD", chr(c))[0] for c in range(0xC0, 0x250)
         if unicodedata.normalize("NFD", chr(c))[0] != chr(c) and unicodedata.normalize("NFD", chr(c))[0].isascii()}
SENTENCES_PER_HIT = 8  # sentences of one hit the encoder compares with the query (hits without shared terms)
MAX_SENTENCE_CHARS = 400
MAX_CACHED_WORDS = 200_000  # a thread's analysed words, forgotten past it
_local = threading.local()


def sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans (document offsets) of the sentences of text[start:end], whitespace trimmed."""
    spans, a = [], start
    for match in _SENTENCE_END.finditer(text, start, end):
        _add_sentence(spans, text, a, match.end())
        a = match.end()
    _add_sentence(spans, text, a, end)
    return spans


def _add_sentence(spans: list, text: str, a: int, b: int) -> None:
    piece = text[a:b]
    stripped = piece.strip()
    if stripped and _TOKEN.search(stripped):
        first = a + len(piece) - len(piece.lstrip())
        spans.append((first, first + len(stripped)))


def _thread_cache(*key) -> dict:
    """This thread's dict for `key`: stemmers (PyStemmer's are not documented as thread-safe) and
    analysed words, per analysis and language."""
    caches = getattr(_local, "caches", None)
    if caches is None:
        caches = _local.caches = {}
    return caches.setdefault(key, {})


def _stemmers(analysis: Analysis) -> dict:
    return _thread_cache("stemmers", analysis)


def query_terms(analysis: Analysis, query: str) -> set[str]:
    return set(analysis.query_terms(query, _stemmers(analysis)))


def term_spans(analysis: Analysis, terms: set[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of the words of text[start:end] whose analysed form is one of `terms`. Only the words
    that begin like a term (its first PREFIX letters, case and accents aside) are analysed: a stem
    begins as its words do."""
    if not terms:
        return []
    # ASCII text is lower-cased for a case-sensitive search (35% faster than (?i); same length, so
    # the same offsets); other text is folded letter for letter and searched ignoring case
    plain = text.isascii()
    folded = text.lower() if plain else text.translate(_FOLD)
    candidates = list(_prefix_pattern(frozenset(terms), not plain).finditer(folded, start, end))
    if not candidates:
        return []
    code = analysis.language_of(text[start:end])
    stems = _stems(analysis, code)
    words = [text[m.start():m.end()].lower() for m in candidates]
    unknown = [w for w in dict.fromkeys(words) if w not in stems]
    if unknown:  # each distinct word analysed once per thread
        stemmers = _stemmers(analysis)
        if code not in stemmers:
            stemmers[code] = analysis.stemmer(code)
        normal = [unicodedata.normalize("NFKC", w) for w in unknown]
        if len(stems) > MAX_CACHED_WORDS:
            stems.clear()
        stems.update(zip(unknown, stemmers[code].stemWords(normal) if stemmers[code] is not None else normal))
    return [(m.start(), m.end()) for m, word in zip(candidates, words) if stems[word] in terms]


@functools.lru_cache(maxsize=256)
def _prefix_pattern(terms: frozenset[str], ignore_case: bool) -> re.Pattern:
    """The words that begin like one of `terms` (their first PREFIX letters, lower case, or any case
    with `ignore_case`): made once per query, not once per hit."""
    prefixes = sorted({re.escape(term[:PREFIX].lower()) for term in terms}, key=len, reverse=True)
    return re.compile(rf"{'(?i)' if ignore_case else ''}(?<![\w\u0900-\u0DFF])(?:{'|'.join(prefixes)}){_WORD_REST}")


def _stems(analysis: Analysis, code: str | None) -> dict:
    """This thread's word -> analysed form, for `analysis` in language `code`."""
    return _thread_cache("stems", analysis, code)


def best_sentence(spans: list[tuple[int, int]], highlights: list[tuple[int, int]], text: str) -> tuple[int, int] | None:
    """The sentence with the most distinct query terms, then the most terms (ties: the earlier);
    None when no sentence holds one."""
    starts = [a for a, _ in spans]
    found: dict[int, list[str]] = {}
    for a, b in highlights:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < spans[i][1]:
            found.setdefault(i, []).append(text[a:b].lower())
    if not found:
        return None
    best = max(found, key=lambda i: (len(set(found[i])), len(found[i]), -i))
    return spans[best]


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
        # in passes of SENTENCES_PER_HIT: the encoder is shared, and a query waiting for it gets a turn between them
        vectors = np.concatenate([encoder.encode_passages(texts[i:i + SENTENCES_PER_HIT])
                                  for i in range(0, len(texts), SENTENCES_PER_HIT)])
        similarity = vectors[:, : len(query_vector)] @ query_vector
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
