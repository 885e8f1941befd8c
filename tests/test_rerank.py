"""The re-ranking stage (rerank.py): a cross-encoder re-scores a query's top N; an index records
its re-ranker and default N (`medsearch index --reranker`); `medsearch train-reranker` makes one;
`medsearch eval --reranker` reports rows with and without it."""

import json

import pytest
from click.testing import CliRunner

from medsearch.cli import cli
from medsearch.errors import BadInputError
from medsearch.retrieval.options import SearchOptions


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, minilm):
    from conftest import SMALL_DOCS, write_jsonl

    from medsearch.index.build import build_index

    corpus = write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", SMALL_DOCS)
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(corpus, path, minilm)
    return path


def _passage(index, doc_id: str, position: int) -> str:
    """What the stage pairs with the query: the document's title and its best chunk."""
    (record,) = [r for r in index.store.chunk_records() if r["id"] == doc_id and r["position"] == position]
    return f"{record['title']}\n{record['text']}" if record["title"] else record["text"]


def test_rerank_orders_the_top_n_by_the_cross_encoders_scores(small_index, minilm, cross_encoder):
    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher

    plain = Searcher(open_index(small_index), minilm)
    reranking = Searcher(open_index(small_index), minilm, load_reranker(cross_encoder, "cpu"))
    query = "what should I do about a high fever and a cough"
    before = plain.search([query], k=8, mode="dense")[0].hits
    after = reranking.search([query], k=3, rerank=8, mode="dense")[0]
    scores = reranking.reranker.scores(query, [_passage(plain.index, h.id, h.chunk) for h in before])
    direct = {h.id: float(s) for h, s in zip(before, scores)}
    best = sorted(direct, key=lambda doc: -direct[doc])[:3]
    assert [h.id for h in after.hits] == best, "the top 3 of the 8 by the cross-encoder's own scores"
    assert [h.score for h in after.hits] == pytest.approx([direct[d] for d in best], abs=1e-5)
    assert [h.found_by["cross_encoder"] for h in after.hits] == [1, 2, 3]
    assert "cross_encoder" in after.timings_ms
    off = reranking.search([query], k=3, rerank=0, mode="dense")[0]
    assert [h.id for h in off.hits] == [h.id for h in before[:3]], "rerank 0: off"
    default = reranking.search([query], k=3, mode="dense")[0]
    assert "cross_encoder" in default.timings_ms, "a searcher with a re-ranker re-ranks by default"


def test_rerank_without_a_cross_encoder_is_bad_input(small_index, minilm):
    from medsearch.index.folder import open_index
    from medsearch.retrieval.search import Searcher

    with pytest.raises(BadInputError, match="re-ranking needs a cross-encoder"):
        Searcher(open_index(small_index), minilm).search(["fever"], rerank=5)
    with pytest.raises(BadInputError, match="rerank must be 0"):
        SearchOptions(rerank=-1)


def test_the_cli_query_reranks_with_a_given_cross_encoder(small_index, cross_encoder):

    result = CliRunner().invoke(cli, ["query", "fever and cough", "--index", str(small_index), "--reranker", cross_encoder,
                                      "--rerank", "5", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [h["found_by"]["cross_encoder"] for h in out["results"]] == [1, 2]
    missing = CliRunner().invoke(cli, ["query", "fever", "--index", str(small_index), "--reranker", "/nonexistent/ce"])
    assert missing.exit_code == 1, missing.output
    assert "cannot load the re-ranker" in missing.output


# ---- an index's own re-ranker ----

@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from conftest import SMALL_DOCS, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", SMALL_DOCS)


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _index(path, corpus, *flags):
    return _run("index", corpus, "--index", path, "--runtime", "torch", "-q", *flags)


def _query(path, text, *flags):
    result = _run("query", text, "--index", path, "--json", *flags)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_an_index_records_its_reranker_and_queries_use_it_without_flags(tmp_path, corpus_file, cross_encoder):
    from pathlib import Path

    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker

    path = tmp_path / "index"
    result = _index(path, corpus_file, "--reranker", cross_encoder, "--rerank", "4")
    assert result.exit_code == 0, result.output
    assert "re-ranks the top 4 by default" in result.output
    index = open_index(path)
    assert index.manifest.reranker == {"model": str(Path(cross_encoder).resolve()), "rerank": 4}
    query = "fever and cough in winter"
    plain = _query(path, query, "--rerank", "0", "-k", "4")["results"]
    assert all("cross_encoder" not in h["found_by"] for h in plain), "--rerank 0: off"
    out = _query(path, query, "-k", "2")
    assert "cross_encoder" in out["timings_ms"], "the index's re-ranker runs with no flag"
    scores = load_reranker(cross_encoder, "cpu").scores(query, [_passage(index, h["id"], 0) for h in plain])
    best = [plain[i]["id"] for i in sorted(range(4), key=lambda i: -scores[i])[:2]]
    assert [h["id"] for h in out["results"]] == best, "the best 2 of the index's default top 4, by the cross-encoder"
    info = _run("info", "--index", path)
    assert "re-ranks the top 4 by default" in info.output


def test_a_rerankers_own_dev_verdict_is_the_index_default(tmp_path, corpus_file, cross_encoder):
    import shutil

    from medsearch.index.folder import open_index

    lost = tmp_path / "lost-on-dev"
    shutil.copytree(cross_encoder, lost)
    (lost / "medsearch_reranker.json").write_text(json.dumps({"default_rerank": 0, "dev": {"hybrid": 0.8, "reranked": 0.7}}))
    path = tmp_path / "index"
    assert _index(path, corpus_file, "--reranker", lost).exit_code == 0
    assert open_index(path).manifest.reranker["rerank"] == 0
    assert "cross_encoder" not in _query(path, "fever")["timings_ms"], "a re-ranker that lost on dev is off by default"
    asked = _query(path, "fever", "--rerank", "3", "-k", "3")
    assert [h["found_by"].get("cross_encoder") for h in asked["results"]] == [1, 2, 3], "and there when asked"


def test_the_reranker_survives_writes_and_compaction_until_removed(tmp_path, corpus_file, cross_encoder):
    from conftest import write_jsonl

    from medsearch.index.folder import open_index

    path = tmp_path / "index"
    assert _index(path, corpus_file, "--reranker", cross_encoder).exit_code == 0
    entry = open_index(path).manifest.reranker
    assert entry["rerank"] == 20, "a cross-encoder without a dev verdict re-ranks 20 by default"
    generation = open_index(path).generation
    assert _index(path, corpus_file, "--reranker", cross_encoder).exit_code == 0
    assert open_index(path).generation == generation, "the same settings again write nothing"
    extra = write_jsonl(tmp_path / "more.jsonl", [{"id": "gout", "title": "Gout", "text": "Gout inflames a joint."}])
    for args in (("add", extra), ("delete", "gout"), ("compact",)):
        assert _run(*args, "--index", path, *(("--runtime", "torch") if args[0] == "add" else ())).exit_code == 0
        assert open_index(path).manifest.reranker == entry, f"{args[0]} kept the re-ranker"
    assert _index(path, corpus_file, "--reranker", "none").exit_code == 0
    assert open_index(path).manifest.reranker is None
    gone = _run("query", "fever", "--index", path, "--rerank", "2")
    assert gone.exit_code == 1 and "re-ranking needs a cross-encoder" in gone.output


def test_index_refuses_a_reranker_that_is_not_a_model_before_encoding(tmp_path, corpus_file):
    path = tmp_path / "index"
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = _index(path, corpus_file, "--reranker", empty)
    assert result.exit_code == 1 and "not a model folder" in result.output, result.output
    assert not path.exists(), "nothing written"
    alone = _index(path, corpus_file, "--rerank", "5")
    assert alone.exit_code == 2 and "--rerank goes with --reranker" in alone.output


# ---- evaluation and training ----

@pytest.fixture(scope="module")
def medquad_like(tmp_path_factory):
    """A folder as `medsearch data medquad` writes one: corpus, queries with train and dev splits,
    qrels, and a train pairs sample."""
    from conftest import SMALL_DOCS, write_jsonl

    folder = tmp_path_factory.mktemp("medquad")
    docs = SMALL_DOCS + [
        {"id": "gout", "title": "Gout", "text": "Gout is a painful arthritis of the big toe caused by uric acid crystals."},
        {"id": "shingles", "title": "Shingles", "text": "Shingles is a painful blistering rash from the chickenpox virus."},
        {"id": "eczema", "title": "Eczema", "text": "Eczema makes skin dry, itchy and red; moisturisers and steroid creams help."},
    ]
    write_jsonl(folder / "corpus.jsonl", docs)
    questions = [(d["id"], f"What is {d['title']} ?", "train" if i % 2 else "dev") for i, d in enumerate(docs)]
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q-{doc}", "text": text, "split": split} for doc, text, split in questions])
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q-{doc}\t{doc}\t1\n" for doc, _, _ in questions))
    by_id = {d["id"]: d for d in docs}
    write_jsonl(folder / "train_pairs_4.jsonl", [{"anchor": text, "positive": by_id[doc]["text"]}
                                                for doc, text, split in questions if split == "train"])
    return folder


def test_eval_reports_each_mode_with_and_without_reranking(medquad_like, cross_encoder, tmp_path):
    from medsearch.training.evaluation import evaluate_models

    report = evaluate_models(medquad_like, ["default"], split=None, cache=tmp_path, runtimes=("torch",),
                             reranker=cross_encoder, rerank=3)
    rows = {r["row"]: r for r in report.rows}
    for name in ("fast", "lexical", "hybrid", "hybrid-fast"):
        assert f"{name}+rerank" in rows, f"no re-ranked {name} row"
        assert rows[f"{name}+rerank"]["recall@100"] == rows[name]["recall@100"], "re-ranking the top 3 keeps the top 100"
    assert any(rows[f"{n}+rerank"]["ndcg@10"] != rows[n]["ndcg@10"] for n in ("fast", "lexical", "hybrid")), \
        "a cross-encoder with its own (random) scores reorders some query's top 3"
    assert "+rr" in report.to_text()
    sampled = evaluate_models(medquad_like, ["default"], split=None, cache=tmp_path, runtimes=("torch",), modes=("lexical",),
                              sample=3)
    assert sampled.queries == 3


def test_train_reranker_trains_evaluates_and_records_its_verdict(medquad_like, tmp_path):
    from sentence_transformers import CrossEncoder

    from medsearch.training.reranker import RerankerSettings, train_reranker

    out = tmp_path / "rr"
    settings = RerankerSettings(sample="4", negatives=2, max_steps=2, batch_size=4, rerank=3, dev_queries=0, runtime="torch")
    lines = []
    record = train_reranker(medquad_like, out, settings, progress=False, log=lines.append, cache=tmp_path / "cache")
    assert json.loads((out / "medsearch_reranker.json").read_text()) == record
    assert record["training"]["steps"] == 2 and record["training"]["rows"] > 0
    dev = record["dev"]
    dev_split = [q for q in map(json.loads, (medquad_like / "queries.jsonl").read_text().splitlines()) if q["split"] == "dev"]
    assert dev["queries"] == len(dev_split) and dev["rerank"] == 3
    assert record["default_rerank"] == (3 if dev["reranked"] > dev["hybrid"] else 0)
    assert not out.with_name("rr.work").exists(), "the work folder is removed once the re-ranker is in place"
    assert CrossEncoder(str(out)).predict([("fever", "Influenza causes fever")]).shape == (1,)
    again = tmp_path / "again"
    with pytest.raises(BadInputError, match="already exists"):
        train_reranker(medquad_like, out, settings, progress=False, log=lines.append)
    for bad, message in ((RerankerSettings(loss="pairwise"), "unknown loss"), (RerankerSettings(sample="99"), "not found"),
                         (RerankerSettings(negatives=0), "at least 1")):
        with pytest.raises(BadInputError, match=message):
            train_reranker(medquad_like, again, bad, progress=False, log=lines.append)
        assert not again.exists() and not again.with_name("again.work").exists(), "nothing written"


# ---- concurrent queries share the cross-encoder's passes ----

def _queued_together(reranker, calls) -> None:
    """Run each call on its own thread while the model is busy, so that all of them queue before
    any is scored; return when all are done."""
    import threading

    with reranker._turn:  # the model is busy: every call queues behind it
        threads = [threading.Thread(target=call) for call in calls]
        for t in threads:
            t.start()
        while len(reranker._queued) < len(calls):
            threading.Event().wait(0.01)
    for t in threads:
        t.join()


def test_concurrent_queries_share_model_calls_and_keep_their_own_scores(cross_encoder):

    import numpy as np

    from medsearch.retrieval.rerank import Reranker

    reranker = Reranker(cross_encoder, "cpu")
    queries = [f"question {i} about fever, cough and {word}" for i, word in enumerate(
        ["rash", "sleep", "pain", "diet", "asthma", "insulin", "migraine", "gout"])]
    passages = [f"{title} and what helps" for title in ("Influenza", "Asthma", "Migraine", "Gout", "Eczema")]
    alone = [reranker.scores(q, passages[: 2 + i % 4]) for i, q in enumerate(queries)]
    calls = reranker.calls
    results, errors = {}, []

    def ask(i: int) -> None:
        try:
            results[i] = reranker.scores(queries[i], passages[: 2 + i % 4])
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    _queued_together(reranker, [lambda i=i: ask(i) for i in range(len(queries))])
    assert not errors
    assert reranker.calls - calls == 1, "eight queued queries, one model call"
    for i in range(len(queries)):
        np.testing.assert_allclose(results[i], alone[i], atol=1e-5, err_msg=f"query {i} got another's scores")


def test_a_query_that_breaks_the_model_fails_alone(cross_encoder):

    from medsearch.retrieval.rerank import Reranker

    reranker = Reranker(cross_encoder, "cpu")
    outcome = {}

    def ask(name: str, passages) -> None:
        try:
            outcome[name] = reranker.scores("fever", passages)
        except Exception as err:  # noqa: BLE001
            outcome[name] = err

    _queued_together(reranker, [lambda: ask("good", ["Influenza causes fever"]),
                                lambda: ask("bad", [None]),  # not text: the tokenizer refuses it
                                lambda: ask("also good", ["Gout inflames a joint", "Asthma"])])
    assert isinstance(outcome["bad"], Exception)
    assert outcome["good"].shape == (1,) and outcome["also good"].shape == (2,), "the others are answered"


def test_the_service_reranks_concurrent_requests_as_it_does_one_at_a_time(small_index, minilm, cross_encoder):
    import urllib.parse
    from concurrent.futures import ThreadPoolExecutor

    from servers import get, uvicorn_thread

    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app

    searcher = Searcher(open_index(small_index), minilm, load_reranker(cross_encoder, "cpu"))
    queries = ["fever and cough", "wheeze at night", "sugar and thirst", "headache with light", "blood pressure pills",
               "tired and pale", "burning when I pee", "swollen ankles and breathless"]
    with uvicorn_thread(create_app(searcher)) as url:
        port = int(url.rsplit(":", 1)[1])

        def ask(query: str):
            status, body = get(port, "/search?" + urllib.parse.urlencode({"q": query, "k": 3, "rerank": 6}))
            assert status == 200, body
            return [(h["id"], h["score"]) for h in body["results"]]

        one_by_one = [ask(q) for q in queries]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, queries * 3))
        status, info = get(port, "/info")
    for got, alone in zip(together, one_by_one * 3):  # scores shared passes may round apart in the last digits
        assert [doc for doc, _ in got] == [doc for doc, _ in alone]
        assert [score for _, score in got] == pytest.approx([score for _, score in alone], abs=1e-4)
    assert info["reranker"]["rerank"] == 20 and info["default_rerank"] == 20


def test_every_caller_gets_its_own_scores_when_the_queue_outgrows_one_call(cross_encoder, monkeypatch):

    import numpy as np

    import medsearch.retrieval.rerank as rerank_module
    from medsearch.retrieval.rerank import Reranker

    monkeypatch.setattr(rerank_module, "MAX_PAIRS", 4)  # a shared call takes at most 4 pairs: 8 callers of 3 need 8 calls
    reranker = Reranker(cross_encoder, "cpu")
    queries = [f"question {i} about cough" for i in range(8)]
    passages = ["Influenza causes fever", "Asthma narrows the airways", "Gout inflames a joint"]
    alone = [reranker.scores(q, passages) for q in queries]
    results = {}

    def ask(i: int) -> None:
        results[i] = reranker.scores(queries[i], passages)

    _queued_together(reranker, [lambda i=i: ask(i) for i in range(len(queries))])
    for i in range(len(queries)):
        assert results[i] is not None, f"caller {i} got no scores"
        np.testing.assert_allclose(results[i], alone[i], atol=1e-5)
    assert not reranker._queued, "nothing left behind in the queue"


def test_what_is_not_a_cross_encoder_is_refused_before_anything_is_written(tmp_path, corpus_file, cross_encoder):
    import shutil

    from medsearch.encoding.loading import default_model_path

    path = tmp_path / "index"
    bi_encoder = _index(path, corpus_file, "--reranker", default_model_path())
    assert bi_encoder.exit_code == 1 and "is not a cross-encoder" in bi_encoder.output, bi_encoder.output
    for content, message in (("{not json", "unreadable"), ("[1, 2]", "default_rerank must be"),
                             ('{"default_rerank": -5}', "default_rerank must be"),
                             ('{"default_rerank": 100000}', "default_rerank must be")):
        folder = tmp_path / "bad-record"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(cross_encoder, folder)
        (folder / "medsearch_reranker.json").write_text(content)
        result = _index(path, corpus_file, "--reranker", folder)
        assert result.exit_code == 1 and message in result.output, (content, result.output)
        assert "Traceback" not in result.output
    too_many = _index(path, corpus_file, "--reranker", cross_encoder, "--rerank", "5000")
    assert too_many.exit_code == 2
    assert not path.exists(), "nothing written"


def test_an_index_whose_reranker_is_gone_still_answers_what_does_not_rerank(tmp_path, corpus_file, cross_encoder):
    import shutil
    import urllib.parse

    from servers import get, uvicorn_thread

    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app

    moved = tmp_path / "will-move"
    shutil.copytree(cross_encoder, moved)
    path = tmp_path / "index"
    assert _index(path, corpus_file, "--reranker", moved, "--rerank", "3").exit_code == 0
    shutil.rmtree(moved)
    assert _query(path, "fever", "--rerank", "0", "--runtime", "torch")["results"], "--rerank 0 needs no re-ranker"
    failed = _run("query", "fever", "--index", path, "--runtime", "torch")
    assert failed.exit_code == 1 and "the index's re-ranker cannot be loaded" in failed.output
    assert "--reranker" in failed.output, "the hint names the flag that fixes it"
    with uvicorn_thread(create_app(Searcher.open(path, runtime="torch"))) as url:  # the service starts
        port = int(url.rsplit(":", 1)[1])
        status, body = get(port, "/search?" + urllib.parse.urlencode({"q": "fever"}))
        assert status == 503 and "re-ranker cannot be loaded" in body["error"]
        status, body = get(port, "/search?" + urllib.parse.urlencode({"q": "fever", "rerank": 0}))
        assert status == 200 and body["results"]


def test_the_service_bounds_the_pairs_one_request_has_scored(small_index, minilm, cross_encoder):
    from servers import post, uvicorn_thread

    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app
    from medsearch.server.settings import ServerSettings

    searcher = Searcher(open_index(small_index), minilm, load_reranker(cross_encoder, "cpu"))
    with uvicorn_thread(create_app(searcher, ServerSettings(max_rerank_pairs=50))) as url:
        port = int(url.rsplit(":", 1)[1])
        status, body = post(port, "/search", {"queries": [{"text": "fever"}] * 3, "rerank": 20})
        assert status == 400 and "the limit is 50" in body["error"]
        status, body = post(port, "/search", {"queries": [{"text": "fever"}] * 2, "rerank": 20})
        assert status == 200, body
        status, body = post(port, "/search", {"queries": [{"text": "fever"}] * 3})  # 3 x the default 20: over the bound too
        assert status == 400


def test_an_interrupted_runs_unreadable_record_starts_the_work_again(tmp_path):
    from medsearch.training.reranker import _keep_matching_work

    work = tmp_path / "rr.work"
    work.mkdir()
    (work / "negatives").mkdir()
    (work / "settings.json").write_text("{cut sho")
    lines = []
    _keep_matching_work(work, {"loss": "bce"}, lines.append)
    assert not (work / "negatives").exists() and "starting again" in lines[0]
    assert json.loads((work / "settings.json").read_text()) == {"loss": "bce"}
    (work / "negatives").mkdir()
    _keep_matching_work(work, {"loss": "bce"}, lines.append)
    assert (work / "negatives").exists(), "the same settings keep the work"


def test_a_rerank_flood_neither_starves_plain_searches_nor_outlives_its_clients(bundled_index, minilm, cross_encoder):
    """Issue 30: clients that ask for the most re-ranking a request may (5 queries x rerank 200) and
    hang up after 0.5 s. Before, each such request held a search thread for ~25 s of cross-encoder
    time, unstoppable, and a plain search waited behind them (29.99 s, then 503s)."""
    import http.client
    import socket
    import threading
    import time

    from servers import get, post, uvicorn_thread

    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app

    searcher = Searcher(open_index(bundled_index), minilm, load_reranker(cross_encoder, "cpu"))
    heavy = json.dumps({"queries": [{"text": f"fever and cough {i}"} for i in range(5)], "rerank": 200})
    with uvicorn_thread(create_app(searcher)) as url:
        port = int(url.rsplit(":", 1)[1])
        stop_at = time.monotonic() + 6
        outcomes = []

        def flood() -> None:
            while time.monotonic() < stop_at:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
                try:
                    connection.request("POST", "/search", body=heavy, headers={"Content-Type": "application/json"})
                    outcomes.append(connection.getresponse().status)
                except (TimeoutError, socket.timeout):
                    outcomes.append("hung up")
                finally:
                    connection.close()

        flooders = [threading.Thread(target=flood) for _ in range(3)]
        for thread in flooders:
            thread.start()
        plain = []
        time.sleep(0.5)
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status, _ = get(port, "/search?q=fever&rerank=0", timeout=30)
            plain.append((status, time.monotonic() - started))
            time.sleep(0.3)
        for thread in flooders:
            thread.join()
        time.sleep(1.0)  # abandoned re-ranking stops between the cross-encoder's passes (~0.2 s each here)
        started = time.monotonic()
        status, body = post(port, "/search", {"queries": [{"text": "fever"}], "rerank": 5}, timeout=30)
        after = time.monotonic() - started
        import httpx

        metrics = httpx.get(f"{url}/metrics").text
    refused = [line for line in metrics.splitlines() if line.startswith('medsearch_lane_refused_total{lane="costly"}')]
    assert refused and float(refused[0].split()[-1]) >= 1, "the refusals are counted"
    assert 'medsearch_lane_requests{lane="costly"} 0.0' in metrics, "every admitted request was let go"
    assert plain and all(status == 200 for status, _ in plain), plain
    assert max(seconds for _, seconds in plain) < 3.0, plain
    assert "hung up" in outcomes and 503 in outcomes, "the lane admits a few and refuses the rest at once"
    assert status == 200 and after < 5.0, (status, after, "the lane is free once its clients have gone")


def test_a_stopped_query_leaves_the_cross_encoders_queue_between_passes(cross_encoder):
    from medsearch.retrieval.rerank import BATCH_SIZE, Reranker, RerankStopped

    reranker = Reranker(cross_encoder, "cpu")
    passages = [f"passage {i} about fevers and coughs" for i in range(5 * BATCH_SIZE)]

    def stop() -> bool:
        return reranker.calls >= 2  # two passes, then the client has gone

    with pytest.raises(RerankStopped):
        reranker.scores("fever", passages, stop)
    assert reranker.calls == 2, "no pass after the stop"
    assert len(reranker.scores("fever", passages[:3])) == 3 and not reranker._queued, "the model serves the next query"


def test_a_partly_reranked_list_is_in_the_order_of_its_scores(small_index, minilm, cross_encoder):
    """Issue 30: rerank < k put the cross-encoder's scores (one scale) above first-stage scores (another):
    a client that sorted or merged by score reordered the list."""
    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher

    searcher = Searcher(open_index(small_index), minilm, load_reranker(cross_encoder, "cpu"))
    first = searcher.search(["fever and cough"], k=6, rerank=0, mode="dense")[0].to_json()["results"]
    result = searcher.search(["fever and cough"], k=6, rerank=2, mode="dense")[0].to_json()["results"]
    scores = [hit["score"] for hit in result]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores), scores
    assert [hit["rerank_score"] is not None for hit in result] == [True, True, False, False, False, False]
    assert all(hit["score"] == hit["rerank_score"] for hit in result[:2])
    by_id = {hit["id"]: hit["score"] for hit in first}
    assert all(hit["first_stage_score"] == pytest.approx(by_id[hit["id"]], abs=1e-6) for hit in result)
    assert [hit["id"] for hit in result[2:]] == [hit["id"] for hit in first if hit["id"] not in
                                                  {h["id"] for h in result[:2]}], "the rest keep the first stage's order"
    assert all(hit["rerank_score"] is None and hit["first_stage_score"] == hit["score"] for hit in first)


def test_ordinary_reranking_goes_on_beside_costly_requests_that_stay_connected(bundled_index, minilm, cross_encoder):
    """A hostile review of the first lane: three clients asking rerank=200 and waiting for it held the
    one lane every re-ranked search used, so every default (rerank=20) search got a 503. Costly requests
    have their own lane now, and the cross-encoder takes turns in passes of 32 pairs."""
    import threading
    import time
    import urllib.parse

    from servers import get, uvicorn_thread

    from medsearch.index.folder import open_index
    from medsearch.retrieval.rerank import load_reranker
    from medsearch.retrieval.search import Searcher
    from medsearch.server.app import create_app

    searcher = Searcher(open_index(bundled_index), minilm, load_reranker(cross_encoder, "cpu"))
    with uvicorn_thread(create_app(searcher)) as url:
        port = int(url.rsplit(":", 1)[1])
        stop_at = time.monotonic() + 8
        costly = []

        def flood() -> None:
            while time.monotonic() < stop_at:
                costly.append(get(port, "/search?" + urllib.parse.urlencode({"q": "fever", "rerank": 200}), timeout=60)[0])

        flooders = [threading.Thread(target=flood) for _ in range(3)]
        for thread in flooders:
            thread.start()
        time.sleep(1.0)
        ordinary = []
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status, body = get(port, "/search?q=asthma", timeout=60)  # the searcher's default: rerank 20
            ordinary.append((status, time.monotonic() - started, body["results"][0]["rerank_score"] if status == 200 else None))
            time.sleep(0.3)
        for thread in flooders:
            thread.join()
    assert ordinary and all(status == 200 for status, _, _ in ordinary), ordinary
    assert all(score is not None for _, _, score in ordinary), "they were re-ranked"
    assert max(seconds for _, seconds, _ in ordinary) < 8.0, ordinary
    assert 503 in costly or 200 in costly


def test_a_lane_admits_only_the_reranking_it_can_get_through_in_its_budget():
    """A second hostile review: 12 clients re-ranking 100 pairs each filled the lane's 20 places with
    more cross-encoder work than the request timeout allowed; admitted requests waited, then timed out."""
    from medsearch.server.metrics import Metrics
    from medsearch.server.service import Lane, ServiceBusy

    lane = Lane("rerank", 4, 16, 10.0, Metrics(lambda: None, lambda: 0))
    lane.admit(5000, 0.02)  # an empty lane takes any request (100 s of work: it is alone)
    lane.release(5000)
    lane.admit(100, 0.02)  # 2 s queued
    lane.admit(300, 0.02)  # 8 s
    with pytest.raises(ServiceBusy, match="over its 10 s budget"):
        lane.admit(200, 0.02)  # 12 s
    lane.admit(200, None)  # no measure yet: only the count bounds it
    lane.release(300)
    lane.admit(100, 0.02)  # room again once a request is done
    assert lane.admitted == 3 and lane.pairs == 400


def test_a_lookup_without_load_neither_loads_nor_raises(tmp_path):
    """The service reads the cross-encoder's measured speed on its event loop: that read must never
    start a model load (seconds) nor raise for a re-ranker that cannot load."""
    from medsearch.retrieval.rerank import load_index_reranker, load_reranker

    assert load_reranker(str(tmp_path / "not-a-model"), "cpu", "torch", load=False) is None
    assert load_index_reranker({"model": str(tmp_path / "gone"), "rerank": 20}, "cpu", "torch", load=False) is None
    with pytest.raises(Exception):
        load_reranker(str(tmp_path / "not-a-model"), "cpu", "torch")
