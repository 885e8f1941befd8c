"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright)."""

import os
import re
import shutil
import urllib.parse

import pytest
from conftest import write_jsonl
from servers import get, uvicorn_thread

from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.retrieval.search import Searcher
from medsearch.server.app import create_app
from medsearch.server.settings import ServerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package", pytrace=False)
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

DIABETES = "what are the early signs of type 2 diabetes"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(bundled_index, minilm):
    with uvicorn_thread(create_app(Searcher(open_index(bundled_index), minilm))) as url:
        yield url


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def api_titles(url, query, tier="fast", k=10):
    port = int(url.rsplit(":", 1)[1])
    status, body = get(port, "/search?" + urllib.parse.urlencode({"q": query, "tier": tier, "k": k}))
    assert status == 200
    return [h["title"] for h in body["results"]]


def test_a_shared_link_searches_on_load(server, page):
    expected = api_titles(server, DIABETES)
    page.goto(f"{server}/?q={urllib.parse.quote(DIABETES)}&tier=fast")
    titles = page.locator("#hits .title")
    expect(titles.first).to_have_text("Type 2 diabetes: early signs")
    assert titles.all_inner_texts() == expected
    expect(page.get_by_label("Search medical documents")).to_have_value(DIABETES)
    expect(page.locator("#timings")).to_contain_text("encode")
    expect(page.locator("#timings")).to_contain_text("rerank")
    assert "diabetes" in [m.lower() for m in page.locator("#hits mark").all_inner_texts()]
    assert page.title() == f"{DIABETES} · medsearch"


def test_typing_a_query_and_enter_changes_results_and_url(server, page):
    page.goto(f"{server}/?q={urllib.parse.quote(DIABETES)}")
    expect(page.locator("#hits .title").first).to_have_text("Type 2 diabetes: early signs")
    box = page.get_by_label("Search medical documents")
    box.fill("it burns when I pee and I need to go all the time")
    box.press("Enter")
    expected = api_titles(server, "it burns when I pee and I need to go all the time")
    expect(page.locator("#hits .title").first).to_have_text(expected[0])
    assert expected[0] != "Type 2 diabetes: early signs"
    assert "q=it+burns+when+I+pee" in page.url
    page.go_back()  # the previous search comes back from the URL
    expect(page.locator("#hits .title").first).to_have_text("Type 2 diabetes: early signs")


def test_compare_view_shows_fast_and_deep_with_their_overlap(server, page):
    page.goto(f"{server}/?q={urllib.parse.quote(DIABETES)}")
    page.get_by_label("Compare tiers (fast vs deep)").check()
    page.get_by_label("Search medical documents").press("Enter")
    expect(page.locator("#compare-view")).to_be_visible()
    fast, deep = api_titles(server, DIABETES, "fast"), api_titles(server, DIABETES, "deep")
    assert page.locator("#hits-fast .title").all_inner_texts() == fast
    assert page.locator("#hits-deep .title").all_inner_texts() == deep
    shared = len(set(fast) & set(deep))
    expect(page.locator("#overlap")).to_have_text(f"Overlap of the top 10: {shared} of 10 documents in both tiers.")
    assert "compare=1" in page.url
    expect(page.locator("#results")).to_be_hidden()


def test_filters_from_the_box_and_the_url(server, page):
    page.goto(f"{server}/?q=chest+pain")
    page.get_by_label("Filters").fill("topic=symptom; id!=doc-004")
    page.get_by_label("Search medical documents").press("Enter")
    expect(page.locator("#hits .meta")).to_contain_text(["topic: symptom"] * 10)  # waits for the filtered list
    assert not any("doc-004" in m for m in page.locator("#hits .meta").all_inner_texts())
    assert "filter=topic%3Dsymptom" in page.url
    assert "filter=id%21%3Ddoc-004" in page.url
    page.goto(f"{server}/?q=chest+pain&filter=colour%3Dred")
    expect(page.locator("#error")).to_contain_text("unknown filter field 'colour'")
    expect(page.get_by_label("Filters")).to_have_value("colour=red")


def test_hybrid_mode_from_the_menu_shows_which_lists_found_each_hit(server, page):
    query = "warfarin INR blood test"
    page.goto(f"{server}/?q={urllib.parse.quote(query)}")
    expect(page.locator("#hits .title").first).to_be_visible()
    page.get_by_label("Mode").select_option("hybrid")
    page.get_by_label("Search medical documents").press("Enter")
    expect(page.locator("#hits .found-by").first).to_contain_text("lexical #")
    port = int(server.rsplit(":", 1)[1])
    _, body = get(port, "/search?" + urllib.parse.urlencode({"q": query, "mode": "hybrid"}))
    assert page.locator("#hits .title").all_inner_texts() == [h["title"] for h in body["results"]]
    assert "mode=hybrid" in page.url
    expect(page.locator("#timings")).to_contain_text("hybrid, fast tier")
    page.reload()  # the mode comes back from the URL
    expect(page.get_by_label("Mode")).to_have_value("hybrid")


def test_document_view_and_keyboard(server, page):
    page.goto(f"{server}/?q={urllib.parse.quote(DIABETES)}")
    page.locator("#hits .title").first.click()
    expect(page.locator("#doc-title")).to_have_text("Type 2 diabetes: early signs")
    expect(page.locator("#doc-title")).to_be_focused()
    assert len(page.locator("#doc-text").inner_text()) > 200
    assert "doc=doc-020" in page.url
    page.locator("#back").click()
    expect(page.locator("#hits .title").first).to_have_text("Type 2 diabetes: early signs")
    page.locator("body").press("/")
    expect(page.get_by_label("Search medical documents")).to_be_focused()
    for label in ("Tier", "Results"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()


def test_every_text_is_escaped(tmp_path, minilm, browser):
    hostile = '<img src=x onerror="window.pwned=1">Asthma'
    corpus = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "x<b>1</b>", "title": hostile, "text": "<script>window.pwned=2</script> wheeze and inhalers",
         "source": "<i>src</i>", "url": "javascript:window.pwned=3"},
        {"id": "ok", "title": "Fever", "text": "A high temperature."},
    ])
    build_index(corpus, tmp_path / "idx", minilm)
    page = browser.new_page()
    try:
        with uvicorn_thread(create_app(Searcher(open_index(tmp_path / "idx"), minilm))) as url:
            page.goto(f"{url}/?q=wheeze+inhalers&k=2")
            expect(page.locator("#hits .title").first).to_have_text(hostile)
            assert page.locator("#hits img, #hits script, #hits b, #hits i").count() == 0
            assert page.locator("#hits a[href^='javascript']").count() == 0
            page.locator("#hits .title").first.click()
            expect(page.locator("#doc-text")).to_contain_text("<script>window.pwned=2</script>")
            assert page.evaluate("window.pwned") is None
    finally:
        page.close()


def test_token_prompt(bundled_index, minilm, browser):
    page = browser.new_page()
    app = create_app(Searcher(open_index(bundled_index), minilm), ServerSettings(token="s3cret"))
    try:
        with uvicorn_thread(app) as url:
            page.goto(f"{url}/?q=fever")
            expect(page.locator("#error")).to_contain_text("Access token needed")
            page.get_by_label("This service needs an access token").fill("s3cret")
            page.get_by_role("button", name="Use token").click()
            expect(page.locator("#hits .hit").first).to_be_visible()
            expect(page.locator("#error")).to_be_hidden()
    finally:
        page.close()


def test_the_tier_menu_says_what_each_tier_is_in_this_index(server, page):
    """Issue 18, finding 9: the menu said "fast: 64-dim candidates" when the build had chosen the
    binary stage. Now its labels come from /info: the stage and count this index measured."""
    port = int(server.rsplit(":", 1)[1])
    fast = get(port, "/info")[1]["fast"]
    page.goto(server)
    option = page.locator("#tier option[value=fast]")
    if fast["stage"] == "binary":
        expect(option).to_have_text(f"fast: {fast['candidates']} candidates from 384-bit sign codes, 384-dim re-rank")
    else:
        expect(option).to_have_text(f"fast: {fast['candidates']} candidates from 64-dim vectors, 384-dim re-rank")
    expect(page.locator("#tier option[value=light]")).to_have_text("light: 128-dim")
    expect(page.locator("#tier option[value=standard]")).to_have_text("standard: 384-dim")
    expect(page.locator("#tier option[value=deep]")).to_have_text("deep: 384-dim, exact")


@pytest.fixture(scope="module")
def reranking_server(bundled_index, minilm, cross_encoder):
    from medsearch.retrieval.rerank import load_reranker

    searcher = Searcher(open_index(bundled_index), minilm, load_reranker(cross_encoder, "cpu"))
    with uvicorn_thread(create_app(searcher)) as url:
        yield url


def test_the_rerank_toggle_is_there_only_with_a_reranker_and_turns_it_off(server, reranking_server, page):
    page.goto(f"{server}/?q=chest+pain")
    expect(page.locator("#hits .title").first).to_be_visible()
    expect(page.locator("#rerank-option")).to_be_hidden()
    page.goto(f"{reranking_server}/?q=chest+pain")
    toggle = page.get_by_label("Re-rank")
    expect(toggle).to_be_checked()  # the service re-ranks by default: the toggle says so
    expect(page.locator("#timings")).to_contain_text("top 20 re-ranked")
    expect(page.locator("#timings")).to_contain_text("cross_encoder")
    expect(page.locator("#hits .score").first).to_have_attribute("title", re.compile(r"^cross-encoder score \(first stage -?\d"))
    toggle.uncheck()
    page.get_by_label("Search medical documents").press("Enter")
    expect(page.locator("#timings")).not_to_contain_text("cross_encoder")
    assert "rerank=0" in page.url
    port = int(reranking_server.rsplit(":", 1)[1])
    _, body = get(port, "/search?" + urllib.parse.urlencode({"q": "chest pain", "rerank": 0}))
    assert page.locator("#hits .title").all_inner_texts() == [h["title"] for h in body["results"]]
    page.reload()  # the choice lives in the URL
    expect(page.get_by_label("Re-rank")).not_to_be_checked()


def test_words_typed_without_accents_are_marked_in_accented_snippets(tmp_path, browser, minilm):
    corpus = write_jsonl(tmp_path / "fr.jsonl", [
        {"id": "diabete", "title": "Le diabète de type 2", "text": "Le diabète de type 2 élève la glycémie ; une soif intense et des envies fréquentes d'uriner sont des signes précoces. Le médecin prescrit une prise de sang."},
        {"id": "asthme", "title": "L'asthme", "text": "L'asthme rétrécit les bronches ; les inhalateurs soulagent les crises."},
    ])
    build_index(corpus, tmp_path / "index", minilm)
    with uvicorn_thread(create_app(Searcher(open_index(tmp_path / "index"), minilm))) as url:
        page = browser.new_page()
        try:
            page.goto(f"{url}/?q={urllib.parse.quote('diabete medecin glycemie')}&mode=lexical")
            expect(page.locator("#hits .title").first).to_have_text("Le diabète de type 2")
            marks = [m.lower() for m in page.locator("#hits li").first.locator("mark").all_inner_texts()]
            assert {"diabète", "médecin", "glycémie"} <= set(marks), marks
            snippet = page.locator("#hits .snippet").first.inner_text()
            assert "diabète" in snippet and "médecin" in snippet  # the text itself is left as written
        finally:
            page.close()


def test_hits_cite_page_and_section_and_the_document_view_marks_the_quote(tmp_path, minilm, browser):
    import documents_factory as factory

    folder = tmp_path / "docs"
    folder.mkdir()
    factory.make_pdf(folder / "leaflet.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE)
    write_jsonl(folder / "more.jsonl", [{"id": "cold", "title": "Common cold", "text": "A runny nose and sneezing."}])
    build_index(folder, tmp_path / "idx", minilm)
    page = browser.new_page()
    try:
        with uvicorn_thread(create_app(Searcher(open_index(tmp_path / "idx"), minilm))) as url:
            port = int(url.rsplit(":", 1)[1])
            question = "what is the antidote for a paracetamol overdose"
            _, body = get(port, "/search?" + urllib.parse.urlencode({"q": question, "k": 2}))
            quote = body["results"][0]["quote"]
            page.goto(f"{url}/?q={urllib.parse.quote(question)}&k=2")
            expect(page.locator("#hits .meta").first).to_contain_text("leaflet.pdf · p. 3 · When to see a doctor")
            page.locator("#hits .title").first.click()
            assert f"at={quote['start']}-{quote['end']}" in page.url
            expect(page.locator("#doc-text mark#quote")).to_have_text(quote["text"])
            assert "acetylcysteine" in quote["text"]
            for at in ("999999-1000000", "50-10", "-1-5"):  # out of range, reversed, negative: the text, unmarked
                page.goto(f"{url}/?doc=leaflet.pdf&at={at}")
                expect(page.locator("#doc-title")).to_have_text(factory.SAMPLE_TITLE)
                assert page.locator("#doc-text mark").count() == 0
                assert "Paracetamol is a pain reliever" in page.locator("#doc-text").inner_text()
    finally:
        page.close()
