"""The index folder's file names: the one place that says what `indexes/<name>/` holds.

    indexes/<name>/
      CURRENT              the committed generation's folder name, replaced atomically (generations.py)
      .lock                held (flock) by the one writer
      .pin-<id>            names a generation a snapshot is copying (held by flock; prune keeps it)
      .tmp-<id>/           a generation being written (writer.py): committed, discarded, or removed
                           by the next writer when its writer was killed
      .del-gen-NNNNNN-<id>/  a retired generation being removed (renamed out of readers' sight first)
      gen-NNNNNN/          a committed generation, never changed once committed:
        manifest.json      the config: model, dims, tiers, backend, counts (manifest.py); its flock
                           is the readers' lease on the generation
        checksums.sha256   the sha256 of every other file, as `sha256sum -c` reads it (checksums.py)
        docs.db            documents, chunks, FTS5 (store.py); chunks of deleted or replaced
                           documents are gone
        chunk_doc.npy      document ordinal of each chunk row (collapses chunk hits to documents)
        lexical/           BM25 over each chunk's title + text: bm25s's own files (lexical.py), and
          tokens.npz       each chunk row's token ids, reused by the next write
        vectors.faiss      the FAISS backend (backends/faiss.py): the one stored matrix of full-dim
                           vectors, which every tier reads (a prefix of it, or all of it)
        binary.faiss       the fast tier's binary codes (when its stage is binary)
                           (a Qdrant index keeps its vectors in a collection instead)
        vectors.npy, dim{N}.faiss   the layout before vectors.faiss: the vectors, and a copy of
                           them a stored dim; read, and rewritten by `compact`

Rows whose chunk is gone from docs.db are dead: searches exclude them (the allowed rows a backend
searches) until `compact` rewrites the generation without them (writes.py).

An index of format 1 kept a generation's files in the folder itself (`manifest.json` beside
`docs.db`); a build over one removes them once its first generation is committed.
"""

from __future__ import annotations

import re

# The index folder
POINTER = "CURRENT"
LOCK = ".lock"
PIN = ".pin-"
TMP = ".tmp-"  # a generation being written
REMOVING = ".del-"  # a generation being removed: renamed first, so that no reader finds it by name
GENERATION_PREFIX = "gen-"
GENERATION = re.compile(rf"^{GENERATION_PREFIX}(\d{{6,}})$")

# A generation's files
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
DOCS = "docs.db"
CHUNK_DOC = "chunk_doc.npy"
LEXICAL_DIR = "lexical"
TOKENS = "tokens.npz"  # in LEXICAL_DIR
MATRIX = "vectors.faiss"
BINARY = "binary.faiss"
LEGACY_VECTORS = "vectors.npy"  # the layout before MATRIX, with a tier_file per stored dim


def generation_name(number: int) -> str:
    """The folder name of generation `number`."""
    return f"{GENERATION_PREFIX}{number:06d}"


def tier_file(dim: int) -> str:
    """The FAISS index file of a stored dim in the layout before MATRIX (a copy of the vectors' prefix)."""
    return f"dim{dim}.faiss"
