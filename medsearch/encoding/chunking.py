"""Split documents longer than the encoder's window into overlapping, token-bounded chunks.

A chunk is a character span of the document text; the text the encoder sees is the document
title, a newline and the span, so the title's tokens come out of each chunk's budget. A document
with sections (its layout: Markdown, PDF, web page and Word headings) is chunked section by
section, so a chunk holds one section (a section too short to stand alone, e.g. a heading
followed by its first subsection, joins the next one).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from medsearch.documents.corpus import Document
from medsearch.errors import MedsearchError

MIN_WINDOW = 16
MIN_SECTION_TOKENS = 32  # a shorter section joins the next one


@dataclass
class Chunk:
    doc: int  # ordinal of the document in the corpus
    position: int  # 0, 1, ... within the document
    start: int  # character span of the chunk in the document text
    end: int
    text: str

    def passage(self, title: str) -> str:
        return passage(title, self.text)


def passage(title: str, text: str) -> str:
    """The text a model reads for a chunk: its document's title, a newline and the chunk (the
    encoder's passages, BM25's, and the re-ranker's)."""
    return f"{title}\n{text}" if title else text


def token_spans(offsets: list[tuple[int, int]], window: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges [i, j) of at most `window` tokens, each starting `window - overlap` after the last."""
    if window < 1 or not 0 <= overlap < window:
        raise MedsearchError(f"chunk overlap must be between 0 and the window size - 1 ({window - 1}); got {overlap}")
    n = len(offsets)
    if n <= window:
        return [(0, n)]
    step = window - overlap
    spans = []
    for start in range(0, n, step):
        end = min(start + window, n)
        spans.append((start, end))
        if end == n:
            break
    return spans


def chunk_documents(
    documents: list[Document], tokenizer, max_tokens: int, prefix: str = "", overlap: int | None = None
) -> list[Chunk]:
    """Chunks for every document, in corpus order. `tokenizer` is a `tokenizers.Tokenizer` without
    truncation or padding (Encoder.chunk's); `max_tokens` counts special tokens too."""
    special = tokenizer.num_special_tokens_to_add(is_pair=False)
    offset_lists = [e.offsets for e in tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)]
    header_lengths = [
        len(e.ids)
        for e in tokenizer.encode_batch([f"{prefix}{d.title}\n" if d.title else prefix for d in documents], add_special_tokens=False)
    ]
    chunks: list[Chunk] = []
    for ordinal, (doc, offsets, header) in enumerate(zip(documents, offset_lists, header_lengths)):
        window = max(MIN_WINDOW, max_tokens - special - header)
        doc_overlap = window // 8 if overlap is None else min(overlap, window - 1)
        spans = [(a + i, a + j, first) for a, b, first in section_groups(offsets, doc.layout, min(MIN_SECTION_TOKENS, window // 4))
                 for i, j in token_spans(offsets[a:b], window, doc_overlap)]
        for position, (i, j, first) in enumerate(spans):
            # (a section's first token may start on the whitespace before it: SentencePiece's offsets do)
            start, end = (max(offsets[i][0], first), offsets[j - 1][1]) if offsets else (0, len(doc.text))
            chunks.append(Chunk(ordinal, position, start, end, doc.text[start:end]))
    return chunks


def section_groups(offsets: list[tuple[int, int]], layout: dict | None, min_tokens: int) -> list[tuple[int, int, int]]:
    """Token ranges [a, b) of the document's sections, each with the character where it may start
    (one range for a document without sections); a range shorter than `min_tokens` joins the next.
    A section's first token is the first that ends past its start."""
    starts = sorted({s[0] for s in (layout or {}).get("sections") or []} - {0})
    if not starts or not offsets:
        return [(0, len(offsets), 0)]
    ends = [end for _, end in offsets]
    cuts = {}
    for start in starts:
        cut = bisect.bisect_right(ends, start)
        if 0 < cut < len(offsets):
            cuts.setdefault(cut, start)
    bounds = [0, *sorted(cuts), len(offsets)]
    groups, begin = [], 0
    for end in bounds[1:]:
        if end > begin and (end - begin >= min_tokens or end == len(offsets)):
            groups.append((begin, end, cuts.get(begin, 0)))
            begin = end
    if begin < len(offsets):
        groups.append((begin, len(offsets), cuts.get(begin, 0)))
    return groups
