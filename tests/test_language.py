"""Search that knows its language: detection, BM25 analysed per language (stemmer, stop words, accent
folding), an index's languages in its manifest and `info`, mixed corpora analysed per chunk and per
query, the default model that follows the corpus's language, and bad input in one line."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import write_jsonl
from test_cli import assert_one_line_error, run

from medsearch.errors import BadInputError
from medsearch.index import language
from medsearch.index.build import build_index
from medsearch.index.folder import open_index
from medsearch.index.lexical import Analysis, choose_analysis
from medsearch.index.writes import choose_model, upsert
from medsearch.retrieval.search import Searcher

FRENCH = [
    {"id": "diabete", "title": "Le diabète de type 2", "text": "Le diabète de type 2 élève le taux de sucre dans le sang ; la soif et les envies fréquentes d'uriner en sont des signes précoces."},
    {"id": "grossesse", "title": "Café et grossesse", "text": "Pendant la grossesse, les femmes enceintes devraient limiter la caféine à 200 mg par jour, soit environ deux tasses de café."},
    {"id": "asthme", "title": "L'asthme", "text": "L'asthme rétrécit les bronches et provoque une respiration sifflante ; les inhalateurs soulagent et préviennent les crises."},
    {"id": "tension", "title": "L'hypertension artérielle", "text": "L'hypertension donne rarement des symptômes ; on la découvre en mesurant la tension artérielle."},
]
ENGLISH = [
    {"id": "obesity", "title": "Obesity", "text": "Obesity raises the risk of type 2 diabetes, heart disease and sleep apnoea; losing some weight helps."},
    {"id": "flu", "title": "Influenza", "text": "Influenza causes fever, cough, sore throat and muscle aches; a yearly vaccine lowers the risk of pregnancies going badly."},
    {"id": "gout", "title": "Gout", "text": "Gout is inflammation of a joint caused by uric acid crystals, often in the big toe, with sudden severe pain."},
]


@pytest.fixture(scope="module")
def french_index(tmp_path_factory, minilm):
    path = tmp_path_factory.mktemp("fr") / "index"
    build_index(write_jsonl(path.parent / "fr.jsonl", FRENCH), path, minilm)
    return path


def test_detection_tells_the_languages_and_declines_short_text():
    assert language.detect("Quels sont les premiers signes du diabète de type 2 chez l'adulte ?") == "fr"
    assert language.detect("¿Cuáles son los primeros síntomas de la diabetes tipo 2 en adultos?") == "es"
    assert language.detect("What are the early signs of type 2 diabetes in adults?") == "en"
    assert language.detect("HbA1c 6.8 %") is None  # too few letters to tell
    assert language.detect("diabetes", among=("fr", "es")) in ("fr", "es")  # restricted: always one of them


def test_corpus_languages_keep_those_with_a_share():
    texts = [d["text"] for d in FRENCH] * 10 + [ENGLISH[0]["text"]]  # one English document in 41: under 5%
    assert language.corpus_languages(texts) == ["fr"]
    assert language.corpus_languages(texts + [ENGLISH[1]["text"]] * 3) == ["fr", "en"]
    assert language.corpus_languages(["12/80", "3 mg", ""]) == []


def test_unknown_language_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(BadInputError, match="unknown language 'xx'"):
        language.check("xx")
    corpus = write_jsonl(tmp_path / "fr.jsonl", FRENCH)
    result = run("index", corpus, "--index", tmp_path / "index", "--language", "xx", "-q")
    assert_one_line_error(result, "unknown language 'xx' (use auto, none or one of en, fr, es")
    assert not (tmp_path / "index").exists()


def test_french_analysis_stems_drops_stop_words_and_folds_accents():
    french = Analysis(("fr",), True)
    assert french.tokenize(["Le diabète des femmes enceintes"]) == french.tokenize(["diabete femme enceinte"])
    unfolded = Analysis(("fr",), False)
    # without folding, a query typed without accents misses the accented stems (what folding is for)
    assert unfolded.tokenize(["médecin"]) != unfolded.tokenize(["medecin"])
    assert french.tokenize(["fie\u0301vre art\u00e9rielle"]) == french.tokenize(["fièvre artérielle"])  # combining accents
    assert french.tokenize(["la ﬁèvre"]) == french.tokenize(["la fièvre"])  # a ligature
    assert french.tokenize(["médecin"]) == french.tokenize(["medecin"])
    assert "le" not in french.tokenize(["le la les"])[0]
    english = Analysis(("en",), False)
    assert english.tokenize(["les femmes enceintes"])[0] != french.tokenize(["les femmes enceintes"])[0]


def test_a_french_corpus_gets_french_analysis_in_its_manifest_and_info(french_index):
    index = open_index(french_index)
    assert index.manifest["lexical"]["languages"] == ["fr"] and index.manifest["lexical"]["stemmers"] == {"fr": "french"}
    assert index.manifest.describe()["lexical"]["fold_accents"] is True
    result = run("info", "--index", french_index)
    assert "fr (french stemmer, stop words); accents folded" in result.output


def test_a_query_without_accents_finds_the_accented_document(french_index):
    searcher = Searcher.open(french_index, load_model=False)
    hits = searcher.search(["diabete type 2 soif"], mode="lexical", k=2)[0].hits
    assert hits[0].id == "diabete"
    assert searcher.search(["femme enceinte cafe"], mode="lexical", k=1)[0].hits[0].id == "grossesse"


def test_a_mixed_corpus_analyses_each_chunk_and_each_query_in_its_language(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "mixed.jsonl", FRENCH + ENGLISH + [{**d, "id": d["id"] + "-2"} for d in ENGLISH] + [
        {"id": "pregnancy", "title": "Caffeine in pregnancy", "text": "Pregnant women should keep caffeine under 200 mg a day, about two cups of coffee."}])
    build_index(corpus, tmp_path / "index", minilm)
    index = open_index(tmp_path / "index")
    assert set(index.manifest["lexical"]["languages"]) == {"fr", "en"}
    vocab = index.lexical.vocab
    assert "enceint" in vocab and "pregnant" in vocab  # French stems for French chunks, English for English ones
    assert "les" not in vocab and "the" not in vocab  # each language's stop words
    searcher = Searcher.open(tmp_path / "index", load_model=False)
    assert searcher.search(["les femmes enceintes et le café"], mode="lexical", k=1)[0].hits[0].id == "grossesse"
    assert searcher.search(["how much caffeine when pregnant"], mode="lexical", k=1)[0].hits[0].id == "pregnancy"
    # one word, whose language no detector tells: analysed in each of the index's languages
    assert searcher.search(["obesity"], mode="lexical", k=1)[0].hits[0].id == "obesity"
    assert searcher.search(["grossesses"], mode="lexical", k=1)[0].hits[0].id == "grossesse"

    # each search thread keeps its own stemmers: concurrent queries score as one thread does
    queries = ["les femmes enceintes et le café", "how much caffeine when pregnant", "asthme inhalateur", "gout toe pain"] * 8
    expected = [index.lexical.scores(q) for q in queries]
    got, errors = [None] * len(queries), []

    def worker(rows):
        try:
            for i in rows:
                got[i] = index.lexical.scores(queries[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(range(t, len(queries), 4),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_an_add_analyses_new_documents_as_the_index_does(french_index, tmp_path, minilm):
    import shutil

    path = tmp_path / "index"
    shutil.copytree(french_index, path, symlinks=True)
    upsert(path, [*_documents([{"id": "goutte", "title": "La goutte", "text": "La goutte enflamme une articulation, souvent le gros orteil, à cause de cristaux d'acide urique."}])], minilm)
    index = open_index(path)
    assert index.manifest["lexical"]["languages"] == ["fr"]
    assert "articul" in index.lexical.vocab  # the French stem
    assert Searcher.open(path, load_model=False).search(["acide urique orteil"], mode="lexical", k=1)[0].hits[0].id == "goutte"


def _documents(records):
    from medsearch.documents.corpus import Document

    return [Document(id=r["id"], title=r["title"], text=r["text"]) for r in records]


def test_neutral_analysis_when_no_language_can_be_told(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "codes.jsonl", [{"id": f"r{i}", "title": f"R{i}", "text": f"{i} mg / {i * 3} ml"} for i in range(6)])
    result = run("index", corpus, "--index", tmp_path / "index", "--model", "default", "-q")
    assert result.exit_code == 0, result.output
    assert "Lexical: language-neutral (no stemmer, no stop words); accents folded (no language could be told from the corpus)" in result.output
    assert choose_analysis("none", ["Le diabète"]).languages == ()


def test_old_manifests_read_as_english_without_folding():
    assert Analysis.from_manifest({"library": "bm25s 0.3", "stopwords": "en", "stemmer": "english"}) == Analysis(("en",), False)
    assert Analysis.from_manifest(None) == Analysis(("en",), False)


def test_the_default_model_follows_the_corpus_language(tmp_path, french_index):
    french = write_jsonl(tmp_path / "fr.jsonl", FRENCH)
    english = write_jsonl(tmp_path / "en.jsonl", ENGLISH)
    assert choose_model("auto", french, tmp_path / "new") == "multilingual-e5-small"
    assert choose_model("auto", english, tmp_path / "new") == "default"
    assert choose_model("auto", english, tmp_path / "new", language="es") == "multilingual-e5-small"
    assert choose_model("auto", french, french_index) == "default"  # an existing index keeps its own model
    assert choose_model("models/mine", french, tmp_path / "new") == "models/mine"


def test_an_explicit_other_language_rebuilds_the_lexical_index(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "fr.jsonl", FRENCH)
    assert run("index", corpus, "--index", tmp_path / "index", "--model", "default", "-q").exit_code == 0
    result = run("index", corpus, "--index", tmp_path / "index", "--language", "es", "-q")
    assert result.exit_code == 0, result.output
    assert open_index(tmp_path / "index").manifest["lexical"]["languages"] == ["es"]


def test_compaction_keeps_the_analysis(french_index, tmp_path):
    import shutil

    from medsearch.index.writes import compact

    path = tmp_path / "index"
    shutil.copytree(french_index, path, symlinks=True)
    compact(path)
    lexical = open_index(path).manifest["lexical"]
    assert lexical["languages"] == ["fr"] and lexical["fold_accents"] is True
    assert Searcher.open(path, load_model=False).search(["diabete soif"], mode="lexical", k=1)[0].hits[0].id == "diabete"


def test_auto_keeps_an_index_analysis_and_a_new_language_encodes_nothing(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "fr.jsonl", FRENCH)
    index = tmp_path / "index"
    assert run("index", corpus, "--index", index, "--model", "default", "--language", "none", "-q").exit_code == 0
    result = run("index", corpus, "--index", index, "--rebuild", "-q")  # auto: the index's own analysis
    assert result.exit_code == 0, result.output
    assert open_index(index).manifest["lexical"]["languages"] == []
    assert "no language could be told" not in result.output
    before = open_index(index).manifest
    result = run("index", corpus, "--index", index, "--language", "es", "-q")
    assert result.exit_code == 0 and "Indexed" not in result.output, result.output  # BM25 made again, nothing encoded
    after = open_index(index).manifest
    assert after["lexical"]["languages"] == ["es"] and after["encode_seconds"] == before["encode_seconds"]
    assert after["model"] == before["model"]


def test_languages_without_segmentation_are_not_offered():
    for code in ("zh", "ja", "ko", "hi"):
        with pytest.raises(BadInputError, match=f"unknown language '{code}'"):
            language.check(code)


def test_a_corpus_without_words_indexes_and_finds_nothing(tmp_path, minilm):
    corpus = write_jsonl(tmp_path / "emoji.jsonl", [{"id": f"e{i}", "title": "", "text": "🤒😷 💊 " * (i + 1)} for i in range(3)])
    result = run("index", corpus, "--index", tmp_path / "index", "--model", "default", "-q")
    assert result.exit_code == 0, result.output
    assert Searcher.open(tmp_path / "index", load_model=False).search(["fever"], mode="lexical")[0].hits == []


def test_a_manifest_naming_an_unknown_language_is_one_line(french_index, tmp_path):
    import json
    import shutil

    path = tmp_path / "index"
    shutil.copytree(french_index, path, symlinks=True)
    manifest_path = next(path.glob("gen-*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["lexical"]["languages"] = ["fr", "ja"]
    manifest_path.write_text(json.dumps(manifest))
    result = run("query", "diabete", "--index", path, "--mode", "lexical")
    assert_one_line_error(result, "lexical.languages.1: Input should be")
    assert "(got \"ja\")" in result.output
