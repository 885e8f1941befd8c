
import pytest
from conftest import write_jsonl

from medsearch.documents.corpus import Document, load_corpus, read_corpus, read_queries
from medsearch.errors import BadInputError, MedsearchError


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
        (lambda p: p, r"no corpus files \(\.jsonl, \.csv, \.txt, \.md, \.pdf, \.html, \.htm, \.docx\) in"),
        (lambda p: (p / "x.xlsx").write_bytes(b"PK") and p / "x.xlsx", r"unsupported file type '\.xlsx'"),
        # a document file alone that gives no document: skipped, and then the corpus is empty
        (lambda p: (p / "x.pdf").write_bytes(b"%PDF") and p / "x.pdf", r"the corpus is empty \(1 file skipped\)"),
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


# Issue 30: ids are taken exactly; the NFC and NFD spellings of an id are one document
NFC, NFD = "caf\u00e9", "cafe\u0301"


@pytest.mark.parametrize("raw_id, message", [
    ("pad ", r"c\.jsonl:2: document id 'pad ' has whitespace at its start or end; ids are taken exactly"),
    (" pad", r"c\.jsonl:2: document id ' pad' has whitespace at its start or end"),
    ("pad\n", r"c\.jsonl:2: document id 'pad\\n' has whitespace at its start or end"),
    ("   ", r"c\.jsonl:2: document id '   ' has whitespace"),
    ("a\tb", r"c\.jsonl:2: document id 'a\\tb' contains an invisible or control character \(U\+0009\)"),
    ("bell\x07", r"c\.jsonl:2: document id 'bell\\x07' contains an invisible or control character \(U\+0007\)"),
])
def test_ids_are_taken_exactly_and_bad_ones_refused(tmp_path, raw_id, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "pad", "text": "one"}, {"id": raw_id, "text": "two"}])
    with pytest.raises(BadInputError, match=message):
        read_corpus(path)


def test_ids_keep_inner_spaces_and_csv_ids_are_not_stripped(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a b", "text": "one"}, {"_id": "", "text": "no id: the line"}])
    assert [d.id for d in read_corpus(path)] == ["a b", "c.jsonl:2"]
    (tmp_path / "d.csv").write_text("id,text\npad ,body\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"d\.csv:2: document id 'pad ' has whitespace at its start or end"):
        read_corpus(tmp_path / "d.csv")


def test_a_bad_id_is_one_line_from_the_cli(tmp_path):
    from test_cli import assert_one_line_error, run

    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "pad ", "text": "one"}])
    assert_one_line_error(run("index", path, "--index", tmp_path / "idx"), "c.jsonl:1: document id 'pad ' has whitespace")
    assert not (tmp_path / "idx").exists()


def test_nfd_ids_are_normalised_with_one_warning(tmp_path, caplog):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": NFD, "text": "one"}, {"id": "ok", "text": "two"},
                                              {"id": NFD + "-2", "text": "three"}])
    with caplog.at_level("WARNING", logger="medsearch"):
        assert [d.id for d in read_corpus(path)] == [NFC, "ok", NFC + "-2"]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "medsearch"]
    assert warning == (f"{path}: 2 document ids were not in Unicode NFC form: normalised to it "
                       "(the NFC and NFD spellings of an id are one document)")
    assert NFD not in warning, "the notice counts ids, it does not print them"


def test_nfc_and_nfd_spellings_of_an_id_are_one_document(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": NFC, "text": "one"}, {"id": NFD, "text": "two"}])
    with pytest.raises(BadInputError, match=rf"c\.jsonl:2: duplicate document id '{NFC}' \(first seen at c\.jsonl:1\)"):
        read_corpus(path)


def test_file_name_ids_follow_the_same_rules(tmp_path, caplog):
    (tmp_path / f"{NFD}.txt").write_text("Coffee and the heart.\n", encoding="utf-8")  # macOS names files in NFD
    (tmp_path / "tea.md").write_text("# Tea\nTea and sleep.\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="medsearch"):
        assert sorted(d.id for d in read_corpus(tmp_path)) == [f"{NFC}.txt", "tea.md"]
    assert [r.getMessage() for r in caplog.records if r.name == "medsearch"][0].startswith(f"{tmp_path}: 1 document id was")
    (tmp_path / " lead.txt").write_text("x\n", encoding="utf-8")  # a file, not a record: skipped with its reason
    with pytest.raises(BadInputError, match=r" lead\.txt: its name cannot be a document id \(document id ' lead\.txt' has "
                                            r"whitespace at its start or end.*--strict"):
        load_corpus(tmp_path, strict=True)
    assert sorted(d.id for d in read_corpus(tmp_path)) == [f"{NFC}.txt", "tea.md"]


def test_documents_from_records_apply_the_same_rules(caplog):
    from medsearch.documents.corpus import documents_from_records

    with pytest.raises(BadInputError, match=r"document 2: document id 'x ' has whitespace at its start or end"):
        documents_from_records([{"id": "ok", "text": "t"}, {"id": "x ", "text": "t"}])
    with pytest.raises(BadInputError, match=r"document 1: document id '\\r' has whitespace"):
        documents_from_records([{"id": "\r", "text": "t"}])
    with caplog.at_level("WARNING", logger="medsearch"):
        assert [d.id for d in documents_from_records([{"id": NFD, "text": "t"}])] == [NFC]
    assert "documents: 1 document id was not in Unicode NFC form" in caplog.text
    with pytest.raises(BadInputError, match=rf"document 2: duplicate document id '{NFC}'"):
        documents_from_records([{"id": NFC, "text": "t"}, {"id": NFD, "text": "u"}])


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u202e", "\u2028"])
def test_an_id_with_an_invisible_character_is_refused(invisible):
    """A hostile review: '\\ufeffd1', '\\u200bd1' and 'd1' were three documents that print alike."""
    from medsearch.validation import check_id

    with pytest.raises(BadInputError, match="invisible or control character"):
        check_id(f"d{invisible}1", "docs.jsonl:3")
    assert check_id("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "docs.jsonl:4"), "a Persian joiner is writing, not a trick"


def test_one_id_spelled_twice_in_one_library_upsert_is_a_duplicate(tmp_path, small_corpus, minilm):
    from medsearch.index.build import build_index
    from medsearch.index.writes import upsert

    build_index(small_corpus, tmp_path / "idx", minilm)
    twice = [Document(id="caf\u00e9", text="one spelling"), Document(id="cafe\u0301", text="the other spelling")]
    with pytest.raises(BadInputError, match="duplicate document id"):
        upsert(tmp_path / "idx", twice, minilm)
