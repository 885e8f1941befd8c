"""manifest.json, the config of one generation of an index: read, written and described here.

The file is one JSON object; `Manifest` is that object (a dict, so what is written is what was
read, keys this version does not know included) with typed accessors for what the code reads:

  format_version, medsearch_version, created, updated, compacted   the file and its history
  model {spec, name, fingerprint, weights, runtime, precision}     who encoded, and how
  query_prefix, passage_prefix, max_tokens, chunk_overlap          how text became vectors
  documents, chunks, dead_chunks, corpus, corpus_fingerprint       what it holds
  metadata_fields                                                  the fields filters may name
  full_dim, tier_dims {tier: dim}, index_types {dim: kind}         the tiers and stored dims
  vector_dtype, faiss_factories                                    the FAISS backend's files
  fast {stage, candidates, target_recall, measured_recall, ...}    the funnel's calibration
  backend {name, ...}                                              where the vectors live
  lexical {library, stemmer, ...}                                  the BM25 index, when built
  search_defaults {mode, fusion}                                   a query's defaults (the fusion: its model's)
  reranker {model, rerank}                                         its cross-encoder and default N
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsearch.encoding.runtimes.registry import RUNTIMES
from medsearch.errors import IndexFormatError
from medsearch.index import layout
from medsearch.index.language import ANALYSES
from medsearch.retrieval.fusion import MAX_DEPTH, MAX_RRF_K, METHODS, MODES

if TYPE_CHECKING:
    from medsearch.retrieval.fusion import Fusion

FORMAT_VERSION = 2  # 2: generations (CURRENT + gen-NNNNNN/), dead rows, faiss factory strings
TIERS = ("fast", "light", "standard", "deep")
TIER_TARGET_DIMS = {"fast": 64, "light": 128, "standard": 512}
LEGACY_CANDIDATES = 500  # fast-tier candidates of an index built before the calibration: k x 50 at k = 10
MAX_DEFAULT_RERANK = 200  # the most documents a query re-ranks by default: the API's bound on rerank (rerank.py)
MAX_CANDIDATES = 100_000  # the most fast-tier candidates a query may ask for (the service's k x oversample bound)


def tier_dims(full_dim: int) -> dict[str, int]:
    """Tier -> prefix dim for a model of `full_dim` dims (never above the model's own size)."""
    dims = {tier: min(target, full_dim) for tier, target in TIER_TARGET_DIMS.items()}
    dims["deep"] = full_dim
    return dims


class Manifest(dict):
    """One generation's manifest.json."""

    @classmethod
    def read(cls, folder: Path, index: Path | None = None) -> "Manifest":
        """The manifest of a generation folder; IndexFormatError (naming `index`, the folder users
        name) when it is missing, unreadable or of another format."""
        index = index or folder
        path = folder / layout.MANIFEST
        try:
            manifest = cls(json.loads(path.read_text()))
        except FileNotFoundError:
            raise IndexFormatError(f"{index}: {folder.name} has no {layout.MANIFEST}", index) from None
        except json.JSONDecodeError as err:
            raise IndexFormatError(f"{path}: unreadable manifest ({err.msg})", index) from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(format_error(index, manifest.get("format_version") if isinstance(manifest, dict)
                                                else None), index)
        check(manifest, index)
        return manifest

    @classmethod
    def peek(cls, folder: Path | None) -> "Manifest | None":
        """The manifest of a folder when it has a readable one, else None (never raises)."""
        try:
            return cls(json.loads((folder / layout.MANIFEST).read_text())) if folder is not None else None
        except (OSError, ValueError):
            return None

    def write(self, folder: Path) -> None:
        (folder / layout.MANIFEST).write_text(json.dumps(self, indent=2, ensure_ascii=False) + "\n")

    # ---- the vectors ----

    @property
    def full_dim(self) -> int:
        return self["full_dim"]

    @property
    def tier_dims(self) -> dict[str, int]:
        return self["tier_dims"]

    @property
    def dims(self) -> list[int]:
        """Every stored dim (the tiers' and any extra ones), ascending."""
        return sorted(int(d) for d in self["index_types"])

    def index_type(self, dim: int) -> str:
        return self["index_types"][str(dim)]

    @property
    def vector_dtype(self) -> str:
        return self["vector_dtype"]

    @property
    def chunks(self) -> int:
        """Rows in the vectors and tier indexes, dead ones included."""
        return self["chunks"]

    @property
    def dead_chunks(self) -> int:
        return self.get("dead_chunks", 0)

    @property
    def live_chunks(self) -> int:
        return self.chunks - self.dead_chunks

    @property
    def documents(self) -> int:
        return self["documents"]

    @property
    def metadata_fields(self) -> list[str]:
        return self.get("metadata_fields", [])

    @property
    def chunk_overlap(self) -> int | None:
        return self.get("chunk_overlap")

    # ---- the stages ----

    @property
    def fast(self) -> dict:
        """The fast tier's calibrated settings (funnel.py); empty for an index built before them."""
        return self.get("fast") or {}

    @property
    def fast_stage(self) -> str:
        return self.fast.get("stage", "prefix")

    @property
    def target_recall(self) -> float | None:
        return self.fast.get("target_recall")

    @property
    def backend(self) -> dict:
        """Where the vectors live: {"name": "faiss"} or Qdrant's settings and collection."""
        return self.get("backend") or {"name": "faiss"}

    @property
    def backend_name(self) -> str:
        return self.backend.get("name", "faiss")

    @property
    def has_lexical(self) -> bool:
        return "lexical" in self

    @property
    def default_mode(self) -> str:
        """The search mode a query gets when it names none: the manifest's `search_defaults`, else
        hybrid where the index has a lexical index (it beats dense on every dev set measured:
        docs/results.md), else dense."""
        return (self.get("search_defaults") or {}).get("mode") or ("hybrid" if self.has_lexical else "dense")

    @property
    def fusion(self) -> "Fusion":
        """How hybrid queries fuse when they name no fusion: the manifest's `search_defaults`
        (from the model's tuning: encoder.Encoder.search_defaults), else fusion.Fusion's defaults."""
        from medsearch.retrieval.fusion import Fusion

        return Fusion(**(self.get("search_defaults") or {}).get("fusion", {}))

    @property
    def reranker(self) -> dict | None:
        """The index's re-ranker: {"model": a cross-encoder folder or id, "rerank": the documents a
        query re-ranks when it names no number (0: only when asked)}, or None."""
        return self.get("reranker") or None

    @property
    def default_rerank(self) -> int:
        return int(self.reranker["rerank"]) if self.reranker else 0

    # ---- the model ----

    @property
    def model(self) -> dict:
        return self["model"]

    @property
    def runtime(self) -> str:
        return self.model.get("runtime", "torch")  # built before runtimes were recorded: torch

    @property
    def precision(self) -> str:
        return self.model.get("precision", "fp32")

    def describe(self) -> dict:
        """The manifest and what is derived from it: live chunks, the fast tier's stage, candidate
        count and recall target (what `medsearch info --json` and the service's /info show)."""
        from dataclasses import asdict

        return {**self, "live_chunks": self.live_chunks, "default_mode": self.default_mode,
                "default_fusion": asdict(self.fusion),
                "default_rerank": self.default_rerank,
                "target_recall": self.fast.get("target_recall"),
                "fast_candidates": self.fast.get("candidates"), "fast_stage": self.fast.get("stage")}


# ---- the schema: every field the code reads, checked wherever a manifest is read from disk ----

class _Fields(BaseModel):
    """Known fields typed and bounded; fields this version does not read are kept, not refused (a
    record such as build_seconds or a newer release's addition changes no behaviour)."""
    model_config = ConfigDict(extra="allow", strict=True)


class _Closed(BaseModel):
    """An object that steers queries: every key known."""
    model_config = ConfigDict(extra="forbid", strict=True)


class _Fusion(_Closed):  # the API's bounds on the same settings (options.OPTIONS)
    method: Literal[METHODS] = "convex"
    rrf_k: int = Field(60, ge=0, le=MAX_RRF_K)
    weight: float = Field(0.7, ge=0, le=1)
    depth: int = Field(50, ge=1, le=MAX_DEPTH)


class _SearchDefaults(_Closed):
    mode: Optional[Literal[MODES]] = None
    fusion: Optional[_Fusion] = None


class _Reranker(_Closed):
    model: str = Field(min_length=1)
    rerank: int = Field(ge=0, le=MAX_DEFAULT_RERANK)


class _Model(_Fields):
    spec: str = Field(min_length=1)
    name: str = Field(min_length=1)
    fingerprint: str = Field(min_length=1)
    runtime: Literal[RUNTIMES] = "torch"
    precision: Literal["fp32", "int8"] = "fp32"

    @model_validator(mode="after")
    def _precision_of_runtime(self) -> "_Model":
        if (self.precision == "int8") != (self.runtime == "openvino-int8"):
            raise ValueError(f"precision {self.precision} is not what runtime {self.runtime} encodes")
        return self


class _Fast(_Fields):
    stage: Literal["prefix", "binary"] = "prefix"
    candidates: Optional[int] = Field(None, ge=1, le=MAX_CANDIDATES)
    target_recall: Optional[float] = Field(None, gt=0, le=1)


class _Lexical(_Fields):
    languages: list[Literal[tuple(ANALYSES)]] = []
    fold_accents: bool = False


class _Backend(_Fields):
    name: Literal["faiss", "qdrant"]


class _Manifest(_Fields):
    format_version: Literal[FORMAT_VERSION]
    model: _Model
    query_prefix: str = ""
    passage_prefix: str = ""
    max_tokens: Optional[int] = Field(None, ge=1)
    chunk_overlap: Optional[int] = Field(None, ge=0)
    documents: int = Field(ge=0)
    chunks: int = Field(ge=0)
    dead_chunks: int = Field(0, ge=0)
    metadata_fields: list[str] = []
    full_dim: int = Field(ge=1)
    tier_dims: dict[Literal[TIERS], int]
    index_types: dict[str, Optional[str]]
    vector_dtype: Literal["float16", "float32"]
    fast: Optional[_Fast] = None
    backend: Optional[_Backend] = None
    lexical: Optional[_Lexical] = None
    search_defaults: Optional[_SearchDefaults] = None
    reranker: Optional[_Reranker] = None

    @model_validator(mode="after")
    def _consistent(self) -> "_Manifest":
        if self.dead_chunks > self.chunks:
            raise ValueError(f"dead_chunks ({self.dead_chunks}) is more than chunks ({self.chunks})")
        dims = []
        for key in self.index_types:
            if not key.isdigit() or not 1 <= int(key) <= self.full_dim:
                raise ValueError(f"index_types: '{key}' is not a dim from 1 to full_dim ({self.full_dim})")
            dims.append(int(key))
        if set(self.tier_dims) != set(TIERS):
            raise ValueError(f"tier_dims must name the tiers {', '.join(TIERS)}")
        for tier, dim in self.tier_dims.items():
            if dim not in dims:
                raise ValueError(f"tier_dims.{tier}: {dim} is not a stored dim ({', '.join(map(str, sorted(dims)))})")
        return self


def check(manifest: dict, index: Path) -> None:
    """IndexFormatError naming the first field of `manifest` that is missing, of the wrong type or out
    of its range (one line): what `open`, `restore`, `verify` and the service's load all read."""
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        shows_input = where and first["type"] not in ("missing", "value_error")  # (not a whole object's)
        got = f" (got {_shown(first.get('input'))})" if shows_input else ""
        message = re.sub(r" or instance of \w+", "", first["msg"].removeprefix("Value error, "))
        raise IndexFormatError(f"{index}: its manifest is not one this medsearch wrote: "
                               f"{where + ': ' if where else ''}{message}{got}", index) from None


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def format_error(index: Path, version) -> str:
    from medsearch.version import __version__

    return f"{index} has index format {version}, this medsearch ({__version__}) reads format {FORMAT_VERSION}"
