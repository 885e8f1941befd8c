import pytest
from conftest import LONG_TEXT

from medsearch.documents.corpus import Document
from medsearch.encoding.chunking import token_spans
from medsearch.encoding.encoder import Encoder
from medsearch.errors import MedsearchError


@pytest.mark.parametrize(
    "n, window, overlap, expected",
    [
        (5, 10, 2, [(0, 5)]),
        (10, 10, 2, [(0, 10)]),
        (11, 10, 2, [(0, 10), (8, 11)]),
        (20, 8, 0, [(0, 8), (8, 16), (16, 20)]),
        (18, 8, 4, [(0, 8), (4, 12), (8, 16), (12, 18)]),
    ],
)
def test_token_spans(n, window, overlap, expected):
    assert token_spans([(i, i + 1) for i in range(n)], window, overlap) == expected


@pytest.mark.parametrize("overlap", [-1, 8, 9])
def test_token_spans_rejects_bad_overlap(overlap):
    with pytest.raises(MedsearchError, match=r"chunk overlap must be between 0 and the window size - 1 \(7\)"):
        token_spans([(0, 1)] * 20, 8, overlap)


def test_short_document_is_one_chunk(minilm):
    doc = Document(id="a", title="Gout", text="Uric acid crystals inflame a joint.")
    (chunk,) = minilm.chunk([doc])
    assert (chunk.doc, chunk.position, chunk.start, chunk.end, chunk.text) == (0, 0, 0, len(doc.text), doc.text)
    assert chunk.passage("Gout") == "Gout\n" + doc.text


def test_long_document_chunks_fit_the_window_overlap_and_cover_the_text(minilm):
    docs = [Document(id="s", text="short one"), Document(id="long", title="Heart failure", text=LONG_TEXT)]
    chunks = minilm.chunk(docs, overlap=20)
    long_chunks = [c for c in chunks if c.doc == 1]
    assert chunks[0].doc == 0
    assert len(long_chunks) >= 3
    assert [c.position for c in long_chunks] == list(range(len(long_chunks)))
    assert long_chunks[0].start == 0
    assert long_chunks[-1].end == len(LONG_TEXT)
    for before, after in zip(long_chunks, long_chunks[1:]):
        assert after.start < before.end  # overlapping spans
    for c in long_chunks:
        assert c.text == LONG_TEXT[c.start : c.end]
        tokens = minilm.model.tokenizer(c.passage("Heart failure"))["input_ids"]  # transformers' tokenizer, special tokens included
        assert len(tokens) <= minilm.max_tokens
    assert "two kilograms in three days" in long_chunks[-1].text


def test_slow_tokenizer_is_refused():
    from types import SimpleNamespace

    slow = SimpleNamespace(tokenizer=object(), prompts={}, max_seq_length=128)  # a tokenizer without a Rust backend
    with pytest.raises(MedsearchError, match="needs a fast"):
        Encoder("slow", model=slow).chunk([Document(id="a", text="x")])
