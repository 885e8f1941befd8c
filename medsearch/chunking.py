"""Split documents longer than the encoder's window into overlapping, token-bounded chunks.

A chunk is a character span of the document text; the text the encoder sees is the document
title, a newline and the span, so the title's tokens come out of each chunk's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsearch.corpus import Document
from medsearch.errors import MedsearchError

MIN_WINDOW = 16


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
        for position, (i, j) in enumerate(token_spans(offsets, window, doc_overlap)):
            start, end = (offsets[i][0], offsets[j - 1][1]) if offsets else (0, len(doc.text))
            chunks.append(Chunk(ordinal, position, start, end, doc.text[start:end]))
    return chunks
