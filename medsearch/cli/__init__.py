"""The `medsearch` command: a thin click layer over the library. Every error is one line, exit 1.

group.py holds the click group and its error handling, options.py the flags commands share; the
commands live by what they work on: indexing.py (index, add, delete, compact, snapshot, restore,
verify, info), searching.py (query, serve, mcp), training.py (train, tune, merge, eval,
train-reranker), housekeeping.py (cache, data). Importing them registers their commands on `cli`."""

from __future__ import annotations

from medsearch.cli import housekeeping, indexing, searching, training  # noqa: F401  (they register the commands)
from medsearch.cli.group import OneLineErrors, cli, hint_for
from medsearch.cli.options import fusion_options, search_options

__all__ = ["OneLineErrors", "cli", "fusion_options", "hint_for", "main", "search_options"]


def main() -> None:
    cli(prog_name="medsearch")
