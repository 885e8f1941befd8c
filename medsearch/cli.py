"""The `medsearch` command: a thin click layer over the library. Every error is one line, exit 1."""

from __future__ import annotations

import json
import sys
import textwrap

import click

from medsearch import __version__
from medsearch.corpus import read_queries
from medsearch.encoder import DEFAULT_MODEL, Encoder
from medsearch.errors import MedsearchError
from medsearch.index import DEFAULT_INDEX, TIERS, VECTOR_DTYPES, build_index, open_index
from medsearch.search import DEFAULT_OVERSAMPLE, DEFAULT_TIER, QueryResult, Searcher

index_option = click.option(
    "--index",
    "index_dir",
    default=str(DEFAULT_INDEX),
    show_default=True,
    envvar="MEDSEARCH_INDEX",
    type=click.Path(file_okay=False),
    help="Index folder (or set MEDSEARCH_INDEX).",
)
device_option = click.option("--device", default="auto", show_default=True, help="cuda, mps, cpu or auto.")


class OneLineErrors(click.Group):
    """Every failure prints one line and exits non-zero: usage errors, bad input (MedsearchError),
    files that cannot be read or written. Bugs still show a traceback."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            hint = f" (see: {err.ctx.command_path} --help)" if err.ctx else ""
            self._fail(f"{err.format_message()}{hint}", err.exit_code)
        except click.ClickException as err:
            self._fail(err.format_message(), err.exit_code)
        except (MedsearchError, OSError) as err:
            self._fail(str(err), 1)
        except (click.Abort, KeyboardInterrupt):
            self._fail("interrupted", 130)

    @staticmethod
    def _fail(message: str, code: int):
        click.echo(f"Error: {message}", err=True)
        sys.exit(code)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medsearch")
def cli():
    """Semantic search for medical text.

    \b
    medsearch index corpus/                       build indexes/default/
    medsearch query "early signs of type 2 diabetes" --tier fast
    medsearch query --queries questions.jsonl --json
    medsearch info                                what an index holds
    """


@cli.command()
@click.argument("path", type=click.Path())
@index_option
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="sentence-transformers model: 'default' (embedded all-MiniLM-L6-v2), a local folder or a hub name.")
@device_option
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Passages per encoder batch.")
@click.option("--vector-dtype", type=click.Choice(VECTOR_DTYPES), default="float16", show_default=True, help="Storage of the full-dim vectors used for re-ranking.")
@click.option("--chunk-overlap", type=click.IntRange(min=0), default=None, help="Tokens shared by consecutive chunks of a long document [default: window/8].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index(path, index_dir, model, device, batch_size, vector_dtype, chunk_overlap, quiet):
    """Index the corpus at PATH (a folder, a BEIR folder or a .jsonl/.csv/.txt/.md file).

    Encodes every document once at the model's full dimension and writes one FAISS index per
    tier dimension. The folder is replaced atomically: a failed run leaves the old index intact.
    """
    encoder = Encoder(model, device=device, batch_size=batch_size)
    manifest = build_index(path, index_dir, encoder, vector_dtype=vector_dtype, chunk_overlap=chunk_overlap, progress=not quiet)
    seconds = manifest["build_seconds"]
    click.echo(
        f"Indexed {manifest['documents']} documents ({manifest['chunks']} chunks) with {manifest['model']['name']} "
        f"in {seconds:.1f}s ({manifest['documents'] / seconds:.1f} docs/s) -> {index_dir}"
    )
    click.echo("Tiers: " + ", ".join(f"{tier}={dim}" for tier, dim in manifest["tier_dims"].items()))


@cli.command()
@click.argument("text", required=False)
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False), help="Batch mode: a .jsonl file (_id, text) or a text file with one query a line.")
@index_option
@click.option("--tier", type=click.Choice(TIERS), default=DEFAULT_TIER, show_default=True, help="fast: 64-dim candidates re-ranked at full dim; light: 128; standard: 512 (or full); deep: full dim, exact.")
@click.option("--dim", type=int, default=None, help="Search this stored prefix dim directly (overrides --tier).")
@click.option("--k", "-k", default=10, show_default=True, type=click.IntRange(min=1), help="Documents to return.")
@click.option("--oversample", default=DEFAULT_OVERSAMPLE, show_default=True, type=click.IntRange(min=1), help="fast tier: candidates = k x oversample.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query (query_id, query, results[id, score, title, snippet], timings_ms).")
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
def query(text, queries_file, index_dir, tier, dim, k, oversample, as_json, model, device):
    """Search the index for TEXT, or for every query in --queries FILE (encoded in one pass)."""
    if (text is None) == (queries_file is None):
        raise MedsearchError("give a query TEXT or --queries FILE (one of them)")
    if queries_file:
        ids, texts = read_queries(queries_file)
    else:
        ids, texts = None, [text]
        if not text.strip():
            raise MedsearchError("empty query: give some text to search for")
    searcher = Searcher.open(index_dir, model=model, device=device)
    results = searcher.search(texts, query_ids=ids, tier=tier, k=k, dim=dim, oversample=oversample)
    for result in results:
        if as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            _print_result(result)


def _print_result(result: QueryResult) -> None:
    heading = f"[{result.query_id}] {result.query}" if result.query_id is not None else result.query
    click.secho(heading, bold=True)
    if not result.hits:
        click.echo("  (no results)")
    for rank, hit in enumerate(result.hits, start=1):
        click.echo(f"{rank:>3}. {hit.score:.4f}  {hit.title or '(untitled)'}  [{hit.id}]")
        click.echo(textwrap.fill(hit.snippet, width=100, initial_indent="       ", subsequent_indent="       "))
    timings = ", ".join(f"{key} {value:.1f} ms" for key, value in result.timings_ms.items())
    click.echo(f"     ({timings})\n")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file sizes as JSON.")
def info(index_dir, as_json):
    """Show what an index holds: model, dims, tiers, index types, counts and sizes."""
    idx = open_index(index_dir)
    files = idx.files()
    if as_json:
        click.echo(json.dumps({**idx.manifest, "files": files}, indent=2, ensure_ascii=False))
        return
    m = idx.manifest
    rows = [
        ("index", str(idx.path)),
        ("model", f"{m['model']['name']} (fingerprint {m['model']['fingerprint']})"),
        ("dims", f"full {m['full_dim']}, stored {', '.join(str(d) for d in idx.dims)}"),
        ("tiers", ", ".join(f"{t}={d} ({m['index_types'][str(d)]})" for t, d in m["tier_dims"].items())),
        ("documents", f"{m['documents']} ({m['chunks']} chunks)"),
        ("vectors", m["vector_dtype"]),
        ("corpus", f"{m['corpus']} (fingerprint {m['corpus_fingerprint']})"),
        ("built", f"{m['created']} in {m['build_seconds']}s by medsearch {m['medsearch_version']}"),
        ("size", f"{sum(files.values()) / 1e6:.2f} MB: " + ", ".join(f"{n} {s / 1e6:.2f}" for n, s in files.items())),
    ]
    for key, value in rows:
        click.echo(f"{key:>10}  {value}")


def main() -> None:
    cli(prog_name="medsearch")
