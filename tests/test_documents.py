"""PDF, web pages and Word files in, cited passages out: the extractors on files made here
(documents_factory), the folder reader's skipped files, chunks that follow sections, and the
citation fields of a hit (page, section, highlight and quote offsets into the document's text)."""

import json
import logging
import subprocess
import sys
import zipfile

import documents_factory as factory
import pytest
from conftest import BUNDLED

from medsearch.documents import Layout, Limits, Unreadable, extract
from medsearch.documents.corpus import Document, load_corpus, read_corpus
from medsearch.encoding.chunking import chunk_documents
from medsearch.errors import BadInputError
from medsearch.index.lexical import Analysis
from medsearch.retrieval.citations import (
    best_sentence,
    cite,
    query_terms,
    sentences,
    term_spans,
)

ASTHMA_TITLE = "Using your asthma inhalers"
ASTHMA = [
    ("h1", "Reliever inhaler"),
    ("p", "The blue reliever inhaler opens the airways within minutes. Take one or two puffs when you feel "
          "wheezy or tight-chested, and tell your nurse if you need it more than three times a week."),
    ("h1", "Preventer inhaler"),
    ("p", "The brown preventer inhaler calms the inflammation inside the airways over weeks. Use it every "
          "morning and evening even when you feel well, and rinse your mouth with water afterwards to avoid "
          "a sore throat or oral thrush."),
    ("h1", "Looking after your spacer"),
    ("h2", "Cleaning the spacer"),
    ("p", "Wash the plastic spacer device once a month in warm soapy water, do not rinse it, and leave it "
          "to drip dry in the air so that static does not build up on its walls. Replace the spacer every "
          "twelve months."),
    ("table", [["Device", "Colour", "When"], ["Reliever", "Blue", "When needed"], ["Preventer", "Brown", "Twice a day"]]),
]
MEASLES_TITLE = "Measles: symptoms and the MMR vaccine"
MEASLES = [
    ("h1", "Symptoms of measles"),
    ("p", "Measles starts with cold-like symptoms, sore red eyes and a high temperature, followed a few days "
          "later by a blotchy red-brown rash that begins on the face and behind the ears before spreading."),
    ("h1", "The MMR vaccine"),
    ("p", "The MMR vaccine protects against measles, mumps and rubella. The first dose is given to babies at "
          "twelve months of age and the second dose at three years and four months, before starting school."),
    ("li", "two doses give lifelong protection in most people"),
    ("li", "adults who missed a dose can still be vaccinated"),
]
NAV = ["Zanzibar portal", "Quokka services", "Wombat directory"]
COOKIES = ["biscotti", "telemetry", "retargeting"]
FOOTER = ["Narwhal Trust", "Sitewide disclaimer"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("documents")
    return {
        "pdf": factory.make_pdf(folder / "leaflet.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE),
        "locked": factory.make_pdf(folder / "locked.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE, password="pw"),
        "scan": factory.make_image_pdf(folder / "scan.pdf", "Chickenpox spots crust over within five days"),
        "broken": factory.make_damaged_pdf(folder / "broken.pdf"),
        "html": factory.make_html(folder / "measles.html", MEASLES_TITLE, MEASLES, NAV, COOKIES, FOOTER),
        "divs": factory.make_html(folder / "measles-divs.html", MEASLES_TITLE, MEASLES, NAV, COOKIES, FOOTER, semantic=False),
        "docx": factory.make_docx(folder / "inhalers.docx", ASTHMA_TITLE, ASTHMA),
    }


def page_of(extracted, phrase):
    return extracted.layout.page_at(extracted.text.index(phrase))


# ---- extractors ----

def test_pdf_pages_headings_title_and_no_running_lines(files):
    pdf = extract(files["pdf"])
    assert pdf.title == factory.SAMPLE_TITLE
    assert len(pdf.layout.pages) == 3
    for fact in factory.SAMPLE_PAGE3_FACTS:
        assert page_of(pdf, fact["answer"]) == 3, fact
    assert page_of(pdf, "capsule-shaped tablet") == 1
    headings = [(level, text) for _, level, text in pdf.layout.sections]
    assert (1, "Dosage") in headings and (2, "Children") in headings
    at = pdf.text.index("Tablets are not suitable for children under 10")
    assert pdf.layout.section_at(at) == "Dosage > Children"
    # the running header (the title on every page) and "Page N of M" are not text of the document
    assert "Page 2 of 3" not in pdf.text
    assert pdf.text.count(factory.SAMPLE_TITLE) == 0
    assert "(cid:" not in pdf.text


@pytest.mark.parametrize("name, reason", [("locked", "encrypted"), ("scan", "no text layer"), ("broken", "damaged")])
def test_unreadable_pdfs_say_why(files, name, reason):
    with pytest.raises(Unreadable, match=reason):
        extract(files[name])


def test_limits_refuse_a_file_whole(files):
    with pytest.raises(Unreadable, match=r"3 pages, over the 2-page limit \(--max-pages\)"):
        extract(files["pdf"], Limits(max_pages=2))
    with pytest.raises(Unreadable, match=r"over the 0.001 MB limit \(--max-file-mb\)"):
        extract(files["pdf"], Limits(max_bytes=1000))


def test_docx_zip_bomb_is_refused_before_inflating(tmp_path):
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"<" + b"a" * 5_000_000 + b">")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(Unreadable, match="once unzipped, over"):
        extract(bomb, Limits(max_bytes=1_000_000))


@pytest.mark.parametrize("name", ["html", "divs"])
def test_web_page_keeps_main_content_only(files, name):
    page = extract(files[name])
    assert page.title == MEASLES_TITLE
    assert "second dose at three years and four months" in page.text
    assert "- adults who missed a dose can still be vaccinated" in page.text
    for word in NAV + COOKIES + FOOTER:
        assert word.lower() not in page.text.lower(), word
    at = page.text.index("second dose")
    assert page.layout.section_at(at) == "The MMR vaccine"  # the <h1> repeating the title is not a level above


def test_word_file_headings_tables_title(files):
    doc = extract(files["docx"])
    assert doc.title == ASTHMA_TITLE
    at = doc.text.index("Wash the plastic spacer")
    assert doc.layout.section_at(at) == "Looking after your spacer > Cleaning the spacer"
    assert "Preventer | Brown | Twice a day" in doc.text
    assert doc.layout.pages == []


def test_damaged_word_and_web_files(tmp_path):
    (tmp_path / "x.docx").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(Unreadable, match="damaged or not a Word file"):
        extract(tmp_path / "x.docx")
    (tmp_path / "nav.html").write_text("<html><body><nav><a href='/'>Home</a></nav></body></html>")
    with pytest.raises(Unreadable, match="no main text"):
        extract(tmp_path / "nav.html")


def test_without_the_extra_a_file_is_skipped_with_the_install_line(files, monkeypatch):
    for name in [m for m in sys.modules if m == "pdfminer" or m.startswith("pdfminer.")] + ["pdfminer"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if pdfminer.six were not installed
    monkeypatch.delitem(sys.modules, "medsearch.documents.pdf", raising=False)
    with pytest.raises(Unreadable, match=r"needs the documents extra .*pip install 'medsearch\[documents\]'"):
        extract(files["pdf"])


# ---- the folder reader ----

def test_folder_reads_documents_and_skips_unreadable_with_one_line_each(files, tmp_path, caplog):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for key in ("pdf", "locked", "scan", "broken", "html", "docx"):
        (folder / files[key].name).write_bytes(files[key].read_bytes())
    (folder / "photo.png").write_bytes(b"\x89PNG")
    (folder / "notes.md").write_text("# Notes\n\nIntro.\n\n## Fever\n\nDrink fluids.\n")
    with caplog.at_level(logging.WARNING, logger="medsearch"):
        corpus = load_corpus(folder)
    assert sorted(d.id for d in corpus.documents) == ["inhalers.docx", "leaflet.pdf", "measles.html", "notes.md"]
    assert dict(corpus.skipped).keys() == {"broken.pdf", "locked.pdf", "scan.pdf", "photo.png"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all(line.startswith("skipped ") for line in lines), lines
    assert corpus.skipped_summary().startswith("Skipped 4 files")
    notes = next(d for d in corpus.documents if d.id == "notes.md")
    assert Layout.from_json(notes.layout).section_at(notes.text.index("Drink")) == "Notes > Fever"
    with pytest.raises(BadInputError, match=r"broken\.pdf: damaged .*--strict"):
        load_corpus(folder, strict=True)


def test_beir_folder_reads_its_corpus_and_the_documents_beside_it(files, tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "README.md"):
        (folder / name).write_bytes((BUNDLED / name).read_bytes())
    (folder / "leaflet.pdf").write_bytes(files["pdf"].read_bytes())
    corpus = load_corpus(folder)
    assert len(corpus.documents) == 188 and corpus.skipped == []
    assert "leaflet.pdf" in {d.id for d in corpus.documents}  # and no query or README became a document
    assert len(read_corpus(BUNDLED)) == 187  # the bundled folder alone: its corpus.jsonl only


def test_a_layout_changes_the_content_hash():
    plain = Document("a", "Text.")
    assert plain.content_hash == Document("a", "Text.", layout=None).content_hash
    assert plain.content_hash != Document("a", "Text.", layout={"pages": [0], "sections": []}).content_hash


# ---- chunks follow sections ----

def test_chunks_do_not_cross_sections(minilm):
    sections, parts = [], []
    for n in range(4):
        heading = f"Section {n}"
        sections.append((sum(len(p) + 2 for p in parts), 1, heading))
        parts.append(f"{heading}\n\n" + " ".join(f"Sentence {n}.{i} about the topic of part {n}." for i in range(12)))
    text = "\n\n".join(parts)
    doc = Document("d", text, layout=Layout(sections=sections).to_json())
    chunks = chunk_documents([doc], minilm._chunk_tokenizer, 128)
    layout = Layout.from_json(doc.layout)
    for chunk in chunks:
        assert layout.section_at(chunk.start) == layout.section_at(chunk.end - 1), (chunk.start, chunk.end)
    assert {layout.section_at(c.start) for c in chunks} == {f"Section {n}" for n in range(4)}
    # without a layout, the same text is chunked across section boundaries
    plain = chunk_documents([Document("d", text)], minilm._chunk_tokenizer, 128)
    assert any(layout.section_at(c.start) != layout.section_at(c.end - 1) for c in plain)


def test_a_heading_alone_joins_its_first_subsection(minilm):
    text = "Dosage\n\nAdults\n\n" + "Take one or two tablets every four to six hours. " * 6
    layout = Layout(sections=[(0, 1, "Dosage"), (8, 2, "Adults")]).to_json()
    chunks = chunk_documents([Document("d", text, layout=layout)], minilm._chunk_tokenizer, 256)
    assert len(chunks) == 1 and chunks[0].start == 0


# ---- citations ----

def test_layout_paths_and_pages():
    layout = Layout(pages=[0, 100, 250], sections=[(0, 1, "A"), (50, 2, "B"), (120, 3, "C"), (200, 2, "D"), (300, 1, "E")])
    assert [layout.page_at(x) for x in (0, 99, 100, 249, 250, 10_000)] == [1, 1, 2, 2, 3, 3]
    assert layout.section_at(10) == "A"
    assert layout.section_at(130) == "A > B > C"
    assert layout.section_at(210) == "A > D"
    assert layout.section_at(310) == "E"
    assert Layout(sections=[(5, 1, "A")]).section_at(2) is None
    assert Layout().page_at(5) is None


def test_terms_match_as_bm25_does_and_offsets_are_the_texts():
    analysis = Analysis(("en",))
    text = "Children were vaccinated last spring. Vaccination rates fell. The weather was mild."
    spans = term_spans(analysis, query_terms(analysis, "vaccinating the children"), text, 0, len(text))
    assert [text[a:b] for a, b in spans] == ["Children", "vaccinated", "Vaccination"]
    french = Analysis(("fr",), fold_accents=True)
    text = "Les enfants vaccinés ont moins de fièvre."
    spans = term_spans(french, query_terms(french, "vaccination enfant fievre"), text, 0, len(text))
    assert [text[a:b] for a, b in spans] == ["enfants", "vaccinés", "fièvre"]


def test_sentences_and_the_best_one():
    text = "Wash it monthly. Do not rinse it!  Let it drip dry.\nReplace it yearly"
    spans = sentences(text, 0, len(text))
    assert [text[a:b] for a, b in spans] == ["Wash it monthly.", "Do not rinse it!", "Let it drip dry.", "Replace it yearly"]
    highlights = [(text.index("rinse"), text.index("rinse") + 5), (text.index("dry"), text.index("dry") + 3),
                  (text.index("drip"), text.index("drip") + 4)]
    assert text[slice(*best_sentence(spans, highlights, text))] == "Let it drip dry."
    assert best_sentence(spans, [], text) is None


class FixedEncoder:
    """Vectors chosen by the test: the quote by meaning must pick the sentence nearest the query."""

    def __init__(self, vectors):
        self.vectors, self.calls = vectors, []

    def encode_passages(self, texts):
        import numpy as np

        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype="float32")


def test_a_hit_without_shared_terms_is_quoted_by_meaning_within_the_budget():
    import numpy as np

    chunk = "The clinic opens at nine. Jabs can cause a mild fever for a day. Parking is free."
    found = {"chunk": chunk, "start": 1000, "end": 1000 + len(chunk), "source": "f.pdf", "url": "",
             "layout": {"pages": [0, 900], "sections": [[950, 1, "After the vaccine"]]}}
    vectors = {"The clinic opens at nine.": [1, 0], "Jabs can cause a mild fever for a day.": [0, 1], "Parking is free.": [0.6, 0.8]}
    encoder = FixedEncoder(vectors)
    cited, = cite([found], query_terms(Analysis(("en",)), "temperature after immunisation"), Analysis(("en",)),
                  encoder, np.array([0.0, 1.0]))
    assert cited["quote"]["text"] == "Jabs can cause a mild fever for a day."
    assert cited["quote"]["start"] == 1000 + chunk.index("Jabs")
    assert cited["citation"] == {"source": "f.pdf", "url": "", "page": 2, "section": "After the vaccine"}
    assert cited["span"] == [1000, 1000 + len(chunk)] and cited["highlights"] == []
    # a budget of 0: no encoding, the first sentence
    cited, = cite([found], set(), Analysis(("en",)), encoder, np.array([0.0, 1.0]), budget=0)
    assert cited["quote"]["text"] == "The clinic opens at nine." and len(encoder.calls) == 1


# ---- end to end: the issue's folder, the CLI as a user runs it ----

def medsearch(*args):
    return subprocess.run([sys.executable, "-m", "medsearch", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def documents_index(files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed") / "corpus"
    folder.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "README.md"):
        (folder / name).write_bytes((BUNDLED / name).read_bytes())
    for key in ("pdf", "locked", "scan", "broken", "html", "docx"):
        (folder / files[key].name).write_bytes(files[key].read_bytes())
    index = folder.parent / "index"
    result = medsearch("index", folder, "--index", index, "--quiet")
    return folder, index, result


def top(index, query, *options):
    result = medsearch("query", query, "--index", index, "--json", "--k", 5, *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["results"]


@pytest.mark.slow
def test_index_of_the_issues_folder(documents_index):
    folder, index, result = documents_index
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split(":")[0] for line in skipped) == ["skipped broken.pdf", "skipped locked.pdf", "skipped scan.pdf"]
    assert "Indexed 190 documents" in result.stdout
    assert "Skipped 3 files that gave no document" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("query, doc, page, section", [
    ("What is the antidote for a paracetamol overdose?", "leaflet.pdf", 3, "When to see a doctor"),
    ("how often should I wash the spacer of my inhaler", "inhalers.docx", None, "Looking after your spacer > Cleaning the spacer"),
    ("at what age is the second MMR jab given", "measles.html", None, "The MMR vaccine"),
])
def test_questions_find_their_document_with_its_citation(documents_index, query, doc, page, section):
    hit = top(documents_index[1], query)[0]
    assert hit["id"] == doc
    assert hit["citation"]["page"] == page and hit["citation"]["section"] == section
    assert hit["citation"]["source"] == doc
    from medsearch.index.folder import open_index

    stored = open_index(documents_index[1]).store.document(doc)["text"]  # what get_document returns
    assert stored[hit["quote"]["start"]:hit["quote"]["end"]] == hit["quote"]["text"]
    assert hit["highlights"] and all(hit["span"][0] <= a < b <= hit["span"][1] for a, b in hit["highlights"])


@pytest.mark.slow
def test_boilerplate_words_find_nothing_in_lexical_mode(documents_index):
    for word in NAV + COOKIES + FOOTER:
        assert all(hit["id"] != "measles.html" for hit in top(documents_index[1], word, "--mode", "lexical")), word


def test_an_index_from_before_layouts_answers_and_takes_documents(tmp_path, minilm, files):
    """A docs.db without the `layout` column (medsearch before documents): queries hydrate without
    it, and a write adds the column and a PDF's layout."""
    import sqlite3

    from conftest import SMALL_DOCS, write_jsonl

    from medsearch.index import checksums
    from medsearch.index.build import build_index
    from medsearch.index.folder import open_index
    from medsearch.index.writes import upsert
    from medsearch.retrieval.search import Searcher

    path = tmp_path / "idx"
    build_index(write_jsonl(tmp_path / "c" / "docs.jsonl", SMALL_DOCS), path, minilm)
    folder = open_index(path).folder
    with sqlite3.connect(folder / "docs.db") as db:
        db.execute("ALTER TABLE documents DROP COLUMN layout")
    checksums.record(folder)
    hit = Searcher(open_index(path), minilm).search(["burning when passing urine"], k=1)[0].hits[0]
    assert hit.id == "uti" and hit.citation["page"] is None and hit.quote is not None
    upsert(path, load_corpus(files["pdf"]).documents, minilm)
    hit = Searcher(open_index(path), minilm).search(["antidote for a paracetamol overdose"], k=1)[0].hits[0]
    assert hit.id == "leaflet.pdf" and hit.citation["page"] == 3


def test_a_pdf_outline_gives_the_sections(files, tmp_path):
    pdf = extract(factory.make_pdf(tmp_path / "bookmarked.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE, outline=True))
    fonts = extract(files["pdf"])
    assert [s[1:] for s in pdf.layout.sections] == [s[1:] for s in fonts.layout.sections]  # the same headings, both ways
    at = pdf.text.index("acetylcysteine")
    assert pdf.layout.page_at(at) == 3 and pdf.layout.section_at(at) == fonts.layout.section_at(fonts.text.index("acetylcysteine"))


def test_a_file_skipped_on_a_later_run_keeps_its_document_and_a_removed_one_goes(tmp_path, minilm, files):
    from medsearch.index.folder import open_index
    from medsearch.index.writes import sync

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "leaflet.pdf").write_bytes(files["pdf"].read_bytes())
    (folder / "inhalers.docx").write_bytes(files["docx"].read_bytes())
    index = tmp_path / "idx"
    sync(folder, index, minilm)
    (folder / "leaflet.pdf").write_bytes(files["broken"].read_bytes())  # damaged since: skipped, not gone
    report = sync(folder, index, minilm, documents=load_corpus(folder))
    assert set(open_index(index).store.hashes()) == {"leaflet.pdf", "inhalers.docx"}
    assert report.deleted == 0
    (folder / "leaflet.pdf").unlink()
    sync(folder, index, minilm)
    assert set(open_index(index).store.hashes()) == {"inhalers.docx"}


def test_the_service_quotes_by_meaning_when_asked(tmp_path, minilm):
    import urllib.parse

    from conftest import write_jsonl
    from servers import get, post, uvicorn_thread

    from medsearch.index.build import build_index
    from medsearch.index.folder import open_index
    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app

    text = ("The clinic opens at nine on weekdays. Jabs can cause a mild fever for a day or two. "
            "Parking is free behind the building.")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "clinic", "title": "Clinic", "text": text},
                                                {"id": "other", "title": "Other", "text": "Eat more vegetables."}])
    build_index(corpus, tmp_path / "idx", minilm)
    with uvicorn_thread(create_app(Searcher(open_index(tmp_path / "idx"), minilm))) as url:
        port = int(url.rsplit(":", 1)[1])
        query = {"q": "temperature after immunisation", "k": 1, "mode": "dense"}
        _, plain = get(port, "/search?" + urllib.parse.urlencode(query))
        _, asked = get(port, "/search?" + urllib.parse.urlencode({**query, "quote_sentences": 16}))
        status, refused = get(port, "/search?" + urllib.parse.urlencode({**query, "quote_sentences": 65}))
        too_many = post(port, "/search", {"queries": [{"text": "fever"}] * 5, "quote_sentences": 64})
    assert plain["results"][0]["highlights"] == []
    assert plain["results"][0]["quote"]["text"] == "The clinic opens at nine on weekdays."  # the service's default: 0
    assert asked["results"][0]["quote"]["text"] == "Jabs can cause a mild fever for a day or two."
    assert status in (400, 422) and "quote_sentences" in refused["error"]
    status, body = too_many
    assert status == 400 and "asks the encoder for up to 320 sentences; the limit is 256 a request" in body["error"]


def test_sections_cut_at_their_first_word_with_sentencepiece_offsets():
    """multilingual-e5's tokenizer gives a word's token the whitespace before it: the cut is still at
    the heading's first letter (a French index once cut 'Dos|age', the chunk starting 'age')."""
    from medsearch.encoding.encoder import Encoder

    e5 = Encoder("multilingual-e5-small")
    intro = "Le paracétamol soulage la douleur et fait baisser la fièvre chez l'adulte comme chez l'enfant. " * 3
    text = intro + "\n\nPosologie\n\n" + "Les adultes prennent un ou deux comprimés toutes les six heures. " * 3
    layout = Layout(sections=[(0, 1, "Présentation"), (text.index("Posologie"), 1, "Posologie")]).to_json()
    chunks = chunk_documents([Document("d", text, layout=layout)], e5._chunk_tokenizer, e5.max_tokens, e5.profile.passage_prefix)
    assert [c.text[:9] for c in chunks] == ["Le paracé", "Posologie"]
    assert chunks[1].start == text.index("Posologie")


def test_a_small_file_that_takes_too_long_or_too_much_memory_is_skipped_and_the_run_goes_on(tmp_path, files, caplog):
    from medsearch.documents.worker import Reader

    bomb = factory.make_text_bomb_pdf(tmp_path / "bomb.pdf", 400_000)
    assert bomb.stat().st_size < 10_000
    with Reader(Limits(max_seconds=1.5)) as reader:
        with pytest.raises(Unreadable, match=r"took longer than 1.5 s to read \(--max-file-seconds\)"):
            reader.read(bomb)
        assert reader.read(files["pdf"]).title == factory.SAMPLE_TITLE  # a new reader process, the same object
    with Reader(Limits(max_memory=64 * 2**20)) as reader:
        with pytest.raises(Unreadable, match=r"needs more than 0.0625 GB of memory|stopped before the end"):
            reader.read(bomb)
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "bomb.pdf").write_bytes(bomb.read_bytes())
    (folder / "leaflet.pdf").write_bytes(files["pdf"].read_bytes())
    with caplog.at_level(logging.WARNING, logger="medsearch"):
        corpus = load_corpus(folder, limits=Limits(max_seconds=1.5))
    assert [d.id for d in corpus.documents] == ["leaflet.pdf"] and [n for n, _ in corpus.skipped] == ["bomb.pdf"]


def test_file_names_that_cannot_be_ids_or_lines_are_skipped_and_escaped(tmp_path, files, caplog):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "ok.pdf").write_bytes(files["pdf"].read_bytes())
    (folder / " lead.pdf").write_bytes(files["pdf"].read_bytes())
    (folder / "new\nline.pdf").write_bytes(files["pdf"].read_bytes())
    (folder / "evil\nskipped fake.pdf: fine.xyz").write_bytes(b"x")
    (folder / "tab\there.md").write_text("# A note\n\nText.")  # a text file's name is its id too
    with caplog.at_level(logging.WARNING, logger="medsearch"):
        corpus = load_corpus(folder)
    assert [d.id for d in corpus.documents] == ["ok.pdf"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\n" not in line and "\t" not in line for line in lines), lines
    assert any(line.startswith("skipped tab\\there.md: its name cannot be a document id") for line in lines)
    assert any(line.startswith("skipped evil\\nskipped fake.pdf: fine.xyz: unsupported") for line in lines)
    assert any(line.startswith("skipped  lead.pdf: its name cannot be a document id") for line in lines)


def test_requests_that_encode_many_sentences_for_quotes_run_in_the_costly_lane(bundled_index, minilm):
    from medsearch.index.folder import open_index
    from medsearch.retrieval.options import SearchOptions
    from medsearch.retrieval.search import Searcher
    from medsearch.server.service import Service
    from medsearch.server.settings import ServerSettings

    service = Service(Searcher(open_index(bundled_index), minilm), ServerSettings())
    try:
        assert service.lane(8, SearchOptions(rerank=0)) is None  # the service's default: no quotes by meaning
        assert service.lane(4, SearchOptions(rerank=0, quote_sentences=16)) is None  # 64 sentences: still ordinary
        assert service.lane(5, SearchOptions(rerank=0, quote_sentences=16)) is service.costly_lane
        assert service.lane(1, SearchOptions(rerank=0, quote_sentences=64)) is None
        assert service.lane(2, SearchOptions(rerank=0, quote_sentences=64)) is service.costly_lane
    finally:
        for pool in (service.encode_pool, service.search_pool, service.rerank_lane.pool, service.costly_lane.pool, service.write_pool):
            pool.shutdown()


def test_a_long_heading_keeps_its_words_in_the_text(tmp_path):
    long = "Warning " * 60 + "call poison control immediately"
    doc = extract(factory.make_docx(tmp_path / "long.docx", "Long", [("h1", long), ("p", "Body.")]))
    assert "call poison control immediately" in doc.text
    assert len(doc.layout.sections[-1][2]) == 300  # the section's name is cut, not the text


def test_a_script_without_a_main_guard_reads_its_documents(tmp_path, files):
    """The worker is a fresh interpreter: a caller's script is not run again in it (multiprocessing's
    spawn did, and a script without `if __name__ == "__main__"` lost its PDFs)."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "leaflet.pdf").write_bytes(files["pdf"].read_bytes())
    script = tmp_path / "script.py"
    script.write_text("from medsearch.documents.corpus import load_corpus\n"
                      f"print([d.id for d in load_corpus({str(tmp_path / 'c')!r}).documents])\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "['leaflet.pdf']", result.stderr
    assert result.stderr == ""
