"""One search-options list (medsearch/retrieval/options.py) for the library, the CLI and the HTTP API."""

import click
import pytest
from click.testing import CliRunner

from medsearch.cli import cli, search_options
from medsearch.errors import BadInputError
from medsearch.retrieval.fusion import Fusion
from medsearch.retrieval.options import OPTIONS, ResolvedSearch, SearchOptions
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

    def plan(mode: str, k: int) -> ResolvedSearch:
        return ResolvedSearch(options=SearchOptions(), mode=mode, tier="fast", dim=None, search_dim=64, funnel=True, k=k,
                              rerank=0, fusion=Fusion(), oversample=None, filters=(), quote_sentences=0)

    assert plan("hybrid", 80).depth(80) == 80
    assert plan("hybrid", 5).depth(5) == Fusion().depth
    assert plan("dense", 5).depth(5) == 5


def test_options_and_keywords_are_not_mixed():
    with pytest.raises(TypeError, match="not both"):
        SearchOptions.of(SearchOptions(), {"k": 3})
    assert SearchOptions.of(None, {"k": 3}).k == 3


def test_a_filter_is_parsed_in_one_pass():
    """A filter is split at its first operator in one pass: a long run of spaces (seconds for the
    backtracking pattern it replaced) is refused at once, and the split keeps its meaning."""
    import time

    from medsearch.index.filters import parse_filter

    started = time.perf_counter()
    with pytest.raises(BadInputError, match="malformed filter"):
        parse_filter(" " * 200_000 + "x")
    assert time.perf_counter() - started < 1.0, "parsing a long filter took seconds"
    assert str(parse_filter(" year >= 2010 ")) == "year>=2010"
    assert str(parse_filter("a=>5")) == "a=>5"  # '=' first: the value is '>5'
    assert str(parse_filter("note==x")) == "note==x"
