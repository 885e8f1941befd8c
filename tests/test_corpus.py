
import pytest

from medsearch.corpus import read_corpus, read_queries
from medsearch.errors import MedsearchError

from conftest import write_jsonl


def test_jsonl_fields_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "a", "title": "T", "text": " body ", "url": "u", "source": "s", "focus": "x", "n": 1},
        {"id": 7, "text": "second"},
        {"text": "no id"},
    ])
    docs = read_corpus(path)
    assert [d.id for d in docs] == ["a", "7", "c.jsonl:3"]
    assert (docs[0].title, docs[0].text, docs[0].url, docs[0].source) == ("T", "body", "u", "s")
    assert docs[0].metadata == {"focus": "x", "n": 1}
    assert docs[1].source == "c.jsonl"


def test_csv_txt_md_in_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.csv").write_text("id,title,text,extra\nc1,Gout,Uric acid crystals in joints,1\n", encoding="utf-8")
    (tmp_path / "sub" / "note.md").write_text("intro\n# Shingles\nA painful rash.\n", encoding="utf-8")
    (tmp_path / "plain.txt").write_text("Sunburn is skin damage from UV light.\n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("never read", encoding="utf-8")
    (tmp_path / "ignored.pdf").write_bytes(b"%PDF")
    docs = {d.id: d for d in read_corpus(tmp_path)}
    assert set(docs) == {"c1", "sub/note.md", "plain.txt"}
    assert docs["c1"].metadata == {"extra": "1"}
    assert docs["c1"].title == "Gout"
    assert docs["sub/note.md"].title == "Shingles"
    assert docs["plain.txt"].title == "plain"
    assert docs["plain.txt"].text.startswith("Sunburn")


def test_beir_folder_reads_only_corpus_jsonl(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "doc"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a query, not a document"}])
    (tmp_path / "README.md").write_text("# Not a document\n", encoding="utf-8")
    assert [d.id for d in read_corpus(tmp_path)] == ["d1"]


def test_bundled_corpus_is_valid():
    from conftest import BUNDLED

    docs = read_corpus(BUNDLED)
    assert len(docs) >= 150
    ids, texts = read_queries(BUNDLED / "queries.jsonl")
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids), "query ids are unique"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', r"c\.jsonl:2: malformed JSON"),
        ('{"id": "a", "title": "no text"}\n', r"c\.jsonl:1: missing or empty 'text' field"),
        ('{"id": "a", "text": "   "}\n', r"c\.jsonl:1: missing or empty 'text'"),
        ('{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n', r"c\.jsonl:3: duplicate document id 'a' \(first seen at c\.jsonl:1\)"),
        ('["a", "list"]\n', r"c\.jsonl:1: expected a JSON object, got list"),
        ("\n\n", r"no documents found in .*: the corpus is empty"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MedsearchError, match=message):
        read_corpus(path)


def test_wrong_encoding_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(MedsearchError, match=r"c\.jsonl:2: not valid UTF-8"):
        read_corpus(path)


def test_duplicate_ids_across_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}])
    (tmp_path / "b.csv").write_text("id,text\nx,two\n", encoding="utf-8")
    with pytest.raises(MedsearchError, match=r"b\.csv:2: duplicate document id 'x' \(first seen at a\.jsonl:1\)"):
        read_corpus(tmp_path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", r"corpus path not found"),
        (lambda p: p, r"no corpus files \(\.jsonl, \.csv, \.txt, \.md\) in"),
        (lambda p: (p / "x.pdf").write_bytes(b"%PDF") and p / "x.pdf", r"unsupported file type '\.pdf'"),
        (lambda p: (p / "x.csv").write_text("id,body\n1,hi\n") and p / "x.csv", r"x\.csv:1: CSV header needs a 'text' column"),
        (lambda p: (p / "x.csv").write_text("id,text\n1,hi,extra\n") and p / "x.csv", r"x\.csv:2: more fields than the header"),
        (lambda p: (p / "e.txt").write_text("  \n") and p / "e.txt", r"e\.txt: empty file"),
    ],
)
def test_bad_corpus_paths(tmp_path, setup, message):
    with pytest.raises(MedsearchError, match=message):
        read_corpus(setup(tmp_path))


def test_read_queries_jsonl_and_text(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "a"}, {"query_id": "q2", "query": "b"}, {"text": "c"}])
    assert read_queries(tmp_path / "q.jsonl") == (["q1", "q2", "q.jsonl:3"], ["a", "b", "c"])
    (tmp_path / "q.txt").write_text("first\n\nsecond\n", encoding="utf-8")
    assert read_queries(tmp_path / "q.txt") == (["1", "3"], ["first", "second"])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"_id": "q1", "text": ""}\n', r"q\.jsonl:1: missing or empty 'text'"),
        ('{"_id": "q1", "text": "ok"}\nnot json\n', r"q\.jsonl:2: malformed JSON"),
        ("\n", r"no queries in the file"),
    ],
)
def test_read_queries_errors(tmp_path, content, message):
    (tmp_path / "q.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(MedsearchError, match=message):
        read_queries(tmp_path / "q.jsonl")
    with pytest.raises(MedsearchError, match="queries file not found"):
        read_queries(tmp_path / "nope.jsonl")
