"""The commands around an index rather than on one: cache (list and prune exports and models) and
data (fetch public medical sets as BEIR folders)."""

from __future__ import annotations

import json
import sys

import click

from medsearch.cli.group import cli
from medsearch.data.beir import MEDICAL_SETS
from medsearch.encoding.cache import UNUSED_DAYS


@cli.group(name="cache", invoke_without_command=True, short_help="List and prune the cache of exports and models.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def cache_group(ctx, as_json):
    """What medsearch keeps in its cache ($MEDSEARCH_CACHE, default ~/.cache/medsearch), and freeing it.

    \b
    medsearch cache                          each entry: size, last use, kind (or: medsearch cache list)
    medsearch cache prune --dry-run          what prune would remove
    medsearch cache prune                    remove what was not used for 30 days
    medsearch cache prune --unused-days 0    remove everything not in use now

    The cache holds OpenVINO exports of encoders and re-rankers (made on a model's first use with an
    OpenVINO runtime, tens to hundreds of MB each) and built-in model folders (multilingual-e5-small).
    An entry removed is made again when next used (an export: seconds to minutes)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(cache_list, as_json=as_json)


@cache_group.command(name="list", short_help="Each entry: size, last use, kind, in use.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the cache's folder, its size and each entry (name, path, kind, bytes, last_used, unused_days, in_use) as JSON.")
def cache_list(as_json):
    """List the cache's entries: size, last use (set each time an entry is loaded), kind (an export
    and its runtime, a model, or a temporary folder: one being written, or left by a process killed
    while writing it) and whether a process holds it now (in use). An empty or missing cache is not an error."""
    from medsearch.encoding.cache import listing

    found = listing()
    click.echo(json.dumps(found.to_json(), indent=2) if as_json else "\n".join(found.lines()))


@cache_group.command(name="prune", short_help="Free disk: leftovers and entries unused for days.")
@click.option("--unused-days", default=UNUSED_DAYS, show_default=True, type=click.IntRange(min=0),
              help="Remove exports and model folders not used for this many days (0: every one not in use now).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed, and remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (freed_bytes, removed, in_use, errors) as JSON.")
def cache_prune(unused_days, dry_run, as_json):
    """Free disk: remove the temporary folders that killed processes left (always), and the exports
    and model folders not used for --unused-days days; print each one and the space freed.

    An entry in use is kept: an export being written or looked up (its lock in exports/.locks/ is
    held), or one whose compiled model OpenVINO is caching. A service that loaded an export before
    keeps running; its next start makes the export again. Exits 1 when a folder cannot be removed."""
    from medsearch.encoding.cache import prune

    report = prune(unused_days, dry_run=dry_run)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else "\n".join(report.lines()))
    for error in report.errors:
        click.echo(f"Error: {error}", err=True)
    if report.errors:
        sys.exit(1)


@cli.group()
def data():
    """Fetch public medical retrieval sets as BEIR folders for eval and tune.

    \b
    medsearch data medquad data/medquad               MedQuAD from its public repository
    medsearch data medquad data/medquad --from MedQuAD-master.zip
    medsearch data beir nfcorpus data/nfcorpus        BEIR: nfcorpus, trec-covid, scifact
    """


cache_option = click.option("--cache", type=click.Path(file_okay=False), default=None,
                            help="Where downloads are kept [default: $MEDSEARCH_CACHE or ~/.cache/medsearch].")
from_option = click.option("--from", "local", type=click.Path(), default=None,
                           help="A local copy (the .zip or its unpacked folder) instead of downloading.")


@data.command(name="medquad")
@click.argument("out", type=click.Path())
@from_option
@cache_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def data_medquad(out, local, cache, quiet):
    """MedQuAD (CC BY 4.0) as a BEIR folder at OUT: corpus, queries with a condition-level
    train/dev/test split, qrels, training pairs (all, and a 2,182 sample) and symptom-description
    pairs. Downloads the public repository's .zip unless --from names a local copy."""
    from medsearch.data import output_folder
    from medsearch.data.download import SOURCES, source_folder
    from medsearch.data.medquad import read_pairs, write_medquad

    pairs = read_pairs(source_folder(SOURCES["medquad"], local, cache, progress=not quiet))
    with output_folder(out) as tmp:
        counts = write_medquad(pairs, tmp)
    splits = ", ".join(f"{name} {n}" for name, n in counts["splits"].items())
    click.echo(f"MedQuAD -> {out}: {counts['documents']} documents, {counts['queries']} queries ({splits}), "
               f"{counts['train_pairs']} train pairs, {counts['symptom_pairs']} symptom pairs")


@data.command(name="beir")
@click.argument("name", type=click.Choice(MEDICAL_SETS))
@click.argument("out", type=click.Path())
@from_option
@cache_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def data_beir(name, out, local, cache, quiet):
    """A BEIR medical set (NAME) as a folder at OUT: corpus, queries with their split, graded qrels.
    Downloads BEIR's archive unless --from names a local copy."""
    from medsearch.data import output_folder
    from medsearch.data.beir import write_beir
    from medsearch.data.download import SOURCES, source_folder

    folder = source_folder(SOURCES["beir"].format(name=name), local, cache, progress=not quiet)
    with output_folder(out) as tmp:
        counts = write_beir(folder, tmp)
    splits = ", ".join(f"{split} {n}" for split, n in counts["splits"].items())
    click.echo(f"{name} -> {out}: {counts['documents']} documents, {counts['queries']} queries ({splits}), "
               f"{counts['qrels']} judgements, grades {counts['grades']}")
