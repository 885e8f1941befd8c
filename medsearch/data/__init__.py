"""`medsearch data`: fetch public medical retrieval sets and write them as BEIR folders
(`corpus.jsonl`, `queries.jsonl` with a `split` field, `qrels.tsv`) that `index`, `eval` and
`tune` read. Every download URL is in download.SOURCES."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from medsearch.errors import BadInputError

OUTPUT_FILES = {"corpus.jsonl", "queries.jsonl", "qrels.tsv", "README.md"}


@contextlib.contextmanager
def output_folder(out: str | Path) -> Iterator[Path]:
    """A temporary sibling of `out` to write into, moved into place only when the block succeeds
    (a failure leaves `out` as it was). `out` may exist only as an earlier output of these commands."""
    out = Path(out)
    if out.is_file():
        raise BadInputError(f"{out} is a file: give a folder to write the data set into")
    if out.is_dir() and any(out.iterdir()) and not (out / "corpus.jsonl").is_file():
        raise BadInputError(f"{out} exists and is not a data set folder: choose another folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
