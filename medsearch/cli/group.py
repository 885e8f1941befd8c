"""The `medsearch` click group: every error one line (OneLineErrors), a library error's fix in this
CLI's words (hint_for). The command modules register their commands on `cli`."""

from __future__ import annotations

import sys

import click

from medsearch.errors import (
    DownloadError,
    IndexFormatError,
    IndexNotFoundError,
    MedsearchError,
    ModelLoadError,
    ModelMismatchError,
    RerankerLoadError,
    RerankerUnavailableError,
)
from medsearch.version import __version__


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
