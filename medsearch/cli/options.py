"""The flags several commands share (--index, --device, --runtime, --reranker, the documents limits,
every search option) and reading a corpus as `index` and `add` do."""

from __future__ import annotations

import functools

import click

from medsearch.documents import DEFAULT_LIMITS
from medsearch.encoding.runtimes.registry import AUTO_RUNTIME, RUNTIMES
from medsearch.index.folder import DEFAULT_INDEX
from medsearch.retrieval.options import FUSION_OPTIONS, OPTIONS, Option, SearchOptions

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
RUNTIME_CHOICE = click.Choice((AUTO_RUNTIME, *RUNTIMES))
# query, add, serve: the index's runtime by default (the manifest is the config)
reranker_option = click.option(
    "--reranker", default=None, metavar="MODEL",
    help="A sentence-transformers cross-encoder (folder or model id) for the re-ranking stage: it re-scores each "
         "query's top --rerank documents (20 by default once a re-ranker is given) [default: the index's, "
         "if it records one: medsearch index --reranker].")
index_runtime_option = click.option(
    "--runtime", type=RUNTIME_CHOICE, default=None,
    help="Encoder runtime for queries [default: the one the index was built with, or an installed one of the same precision].")


def documents_options(command):
    """--strict, --max-file-mb and --max-pages: how `index` and `add` treat files that give no document."""
    command = click.option("--max-pages", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_pages, show_default=True,
                           help="A longer PDF is skipped (with a line saying so).")(command)
    command = click.option("--max-file-seconds", type=click.FloatRange(min=0, min_open=True),
                           default=DEFAULT_LIMITS.max_seconds, show_default=True,
                           help="A PDF, web page or Word file that takes longer to read is skipped (with a line saying so).")(command)
    command = click.option("--max-file-mb", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_bytes // 2**20,
                           show_default=True, help="A larger file is skipped (with a line saying so).")(command)
    return click.option("--strict", is_flag=True,
                        help="Stop at the first file that gives no document (damaged, encrypted, no text, unsupported, "
                             "too large) instead of skipping it with a line.")(command)


def read_documents(path, strict: bool, max_file_mb: int, max_pages: int, max_file_seconds: float, quiet: bool):
    """The corpus at `path` as `index` and `add` read it (each skipped file logged as one line)."""
    from medsearch.documents import Limits
    from medsearch.documents.corpus import load_corpus

    limits = Limits(max_bytes=max_file_mb * 2**20, max_pages=max_pages, max_seconds=max_file_seconds)
    return load_corpus(path, strict=strict, limits=limits, progress=not quiet)


def _flag(option: Option):
    """The click option of one search option (options.OPTIONS): its flag, type, default and help."""
    flag = "--filter" if option.name == "filters" else "--" + option.name.replace("_", "-")
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.kind is float:
        kind = click.FloatRange(option.minimum, option.maximum)
    elif option.kind is int and option.minimum is not None:
        kind = click.IntRange(min=option.minimum, max=option.maximum)
    else:
        kind = option.kind
    shown = option.default is not None and not option.many
    flags = (flag, "-k") if option.name == "k" else (flag,)
    return click.option(*flags, option.name, type=kind, default=option.default, show_default=shown,
                        multiple=option.many, metavar="FIELD=VALUE" if option.name == "filters" else None,
                        help=option.help + (" Repeat the flag for several." if option.many else ""))


def _option_flags(names: tuple[str, ...], build):
    """A decorator adding the flags of these search options; the command gets `build(values)`."""
    chosen = [option for option in OPTIONS if option.name in names]

    def decorate(command):
        for option in reversed(chosen):
            command = _flag(option)(command)

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {option.name: kwargs.pop(option.name) for option in chosen}
            return command(*args, **build(values), **kwargs)

        return wrapper

    return decorate


# Every search option, passed as one SearchOptions (`options`); the fusion ones alone, as a Fusion (`fusion`)
search_options = _option_flags(tuple(option.name for option in OPTIONS), lambda v: {"options": SearchOptions.flat(**v)})
fusion_options = _option_flags(FUSION_OPTIONS, lambda v: {"fusion": SearchOptions.flat(**v).fusion})
