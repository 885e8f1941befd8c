"""One search-options list (medsearch/options.py) for the library, the CLI and the HTTP API."""

import click
import pytest
from click.testing import CliRunner

from medsearch.cli import cli, search_options
from medsearch.errors import BadInputError
from medsearch.fusion import Fusion
from medsearch.options import OPTIONS, SearchOptions
from medsearch.server.app import create_app
from medsearch.server.models import SearchRequest


def test_every_option_is_a_cli_flag_with_the_same_help_and_default():
    query = cli.commands["query"]
    params = {p.name: p for p in query.params}
    for option in OPTIONS:
        assert option.name in params, f"--{option.name} is missing from `medsearch query`"
        param = params[option.name]
        assert param.help.startswith(option.help), f"--{option.name}'s help is not the option's"
        default = tuple(option.default) if option.many else option.default
        assert param.default == default, f"--{option.name}'s default differs"
        if option.minimum is not None:
            assert param.type.min == option.minimum, f"--{option.name}'s minimum differs"
        if option.maximum is not None:
            assert param.type.max == option.maximum, f"--{option.name}'s maximum differs"


def test_every_option_is_in_the_api_with_the_same_help_default_and_bounds():
    schema = create_app(lambda: None).openapi()
    body = schema["components"]["schemas"]["SearchRequest"]["properties"]
    get = {p["name"]: p for p in schema["paths"]["/search"]["get"]["parameters"]}
    for option in OPTIONS:
        field = body[option.name]
        param = get["filter" if option.name == "filters" else option.name]
        for where, entry in (("POST", field), ("GET", param["schema"])):
            assert entry.get("description") == option.help, f"{where} {option.name}: another help text"
            default = list(option.default) if option.many else option.default
            assert entry.get("default") == default, f"{where} {option.name}: another default"
            bounds = next((e for e in entry.get("anyOf", []) if e.get("type") != "null"), entry)  # nullable: in anyOf
            if option.minimum is not None:
                assert bounds.get("minimum") == option.minimum, f"{where} {option.name}: another minimum"
            maximum = option.request_maximum if option.request_maximum is not None else option.maximum
            if maximum is not None:
                assert bounds.get("maximum") == maximum, f"{where} {option.name}: another maximum"


def test_the_cli_and_the_api_build_the_same_options():
    seen = {}

    @click.command()
    @search_options
    def capture(options):
        seen["cli"] = options

    result = CliRunner().invoke(capture, ["--tier", "deep", "-k", "5", "--filter", "source=a", "--filter", "year>=2020",
                                          "--mode", "hybrid", "--fusion", "rrf", "--rrf-k", "30", "--fusion-depth", "40"])
    assert result.exit_code == 0, result.output
    api = SearchRequest(queries=[{"text": "x"}], tier="deep", k=5, filters=["source=a", "year>=2020"], mode="hybrid",
                        fusion="rrf", rrf_k=30, fusion_depth=40).options()
    assert seen["cli"] == api
    assert api == SearchOptions(tier="deep", k=5, filters=("source=a", "year>=2020"), mode="hybrid",
                                fusion=Fusion("rrf", rrf_k=30, depth=40))


@pytest.mark.parametrize("fields, message", [
    ({"tier": "quick"}, "unknown tier 'quick'"), ({"k": 0}, "k must be at least 1"),
    ({"oversample": 0}, "oversample must be at least 1"), ({"mode": "fuzzy"}, "unknown mode 'fuzzy'"),
    ({"filters": ["no operator"]}, "filter"), ({"fusion": Fusion(weight=2)}, "between 0 and 1"),
])
def test_bad_options_fail_when_made(fields, message):
    with pytest.raises(BadInputError, match=message):
        SearchOptions(**fields)


def test_an_explicit_dim_needs_no_known_tier_and_hybrid_depth_is_at_least_k():
    assert SearchOptions(tier="anything", dim=64).dim == 64
    assert SearchOptions(mode="hybrid", k=80).depth == 80
    assert SearchOptions(mode="hybrid", k=5).depth == Fusion().depth
    assert SearchOptions(mode="dense", k=5).depth == 5


def test_options_and_keywords_are_not_mixed():
    with pytest.raises(TypeError, match="not both"):
        SearchOptions.of(SearchOptions(), {"k": 3})
    assert SearchOptions.of(None, {"k": 3}).k == 3


def test_a_filter_is_parsed_in_one_pass():
    """A filter is split at its first operator in one pass: a long run of spaces (seconds for the
    backtracking pattern it replaced) is refused at once, and the split keeps its meaning."""
    import time

    from medsearch.filters import parse_filter

    started = time.perf_counter()
    with pytest.raises(BadInputError, match="malformed filter"):
        parse_filter(" " * 200_000 + "x")
    assert time.perf_counter() - started < 1.0, "parsing a long filter took seconds"
    assert str(parse_filter(" year >= 2010 ")) == "year>=2010"
    assert str(parse_filter("a=>5")) == "a=>5"  # '=' first: the value is '>5'
    assert str(parse_filter("note==x")) == "note==x"


# ---- the re-ranking stage ----

@pytest.fixture(scope="module")
def small_index(tmp_path_factory, minilm):
    from medsearch.index import build_index

    from conftest import SMALL_DOCS, write_jsonl

    corpus = write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", SMALL_DOCS)
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(corpus, path, minilm)
    return path


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    """A cross-encoder made here, offline: the default model's transformer with a new scoring head
    (seeded). Its scores mean nothing; they only have to be the ones the stage orders by."""
    import torch
    from sentence_transformers import CrossEncoder

    from medsearch.encoder import default_model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(default_model_path(), num_labels=1, device="cpu").save(str(folder))
    return str(folder)


def _passage(index, doc_id: str, position: int) -> str:
    """What the stage pairs with the query: the document's title and its best chunk."""
    (record,) = [r for r in index.store.chunk_records() if r["id"] == doc_id and r["position"] == position]
    return f"{record['title']}\n{record['text']}" if record["title"] else record["text"]


def test_rerank_orders_the_top_n_by_the_cross_encoders_scores(small_index, minilm, cross_encoder):
    from medsearch.index import open_index
    from medsearch.rerank import load_reranker
    from medsearch.search import Searcher

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
    from medsearch.index import open_index
    from medsearch.search import Searcher

    with pytest.raises(BadInputError, match="re-ranking needs a cross-encoder"):
        Searcher(open_index(small_index), minilm).search(["fever"], rerank=5)
    with pytest.raises(BadInputError, match="rerank must be 0"):
        SearchOptions(rerank=-1)


def test_the_cli_query_reranks_with_a_given_cross_encoder(small_index, cross_encoder):
    import json

    result = CliRunner().invoke(cli, ["query", "fever and cough", "--index", str(small_index), "--reranker", cross_encoder,
                                      "--rerank", "5", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [h["found_by"]["cross_encoder"] for h in out["results"]] == [1, 2]
    missing = CliRunner().invoke(cli, ["query", "fever", "--index", str(small_index), "--reranker", "/nonexistent/ce"])
    assert missing.exit_code == 1, missing.output
    assert "cannot load the re-ranker" in missing.output
