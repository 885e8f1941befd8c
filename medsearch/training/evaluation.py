"""Retrieval metrics over a BEIR-style folder (`corpus.jsonl`, `queries.jsonl`, `qrels.tsv`).

Metrics come from pytrec_eval (trec_eval, the implementation BEIR and TREC report with): NDCG@10
uses the qrels' graded scores as gains (0/1/2 on TREC-COVID, 1-4 MEDIQA-style), so it is the
NDCG@10 others publish; on binary judgements it equals the binary NDCG@10. Runs are ranked lists we
produce (a tier of an index, lexical, hybrid, a truncated embedding): trec_eval re-sorts a run by
score and breaks ties by document id, so each run is handed over with scores that keep our order.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from medsearch.documents.corpus import read_corpus, read_queries
from medsearch.errors import BadInputError, NotFoundError
from medsearch.retrieval.fusion import MODES, Fusion, check_mode
from medsearch.retrieval.options import SearchOptions


@dataclass
class Benchmark:
    queries: dict[str, str]  # query id -> text, only queries with at least one relevant document
    qrels: dict[str, dict[str, int]]  # query id -> relevant document id -> grade (> 0)


def read_judgements(path: Path) -> Iterator[tuple[str, str, int]]:
    """(query id, document id, grade) for every line of a qrels TSV file (an optional header
    line and blank lines skipped); a malformed line is an error that names it."""
    if not path.is_file():
        raise NotFoundError(f"relevance judgements not found: {path}")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(rows, start=1):
            if not row or (number == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or header
            if len(row) < 3:
                raise BadInputError(f"{path.name}:{number}: expected query-id, corpus-id, score separated by tabs")
            try:
                grade = int(row[2])
            except ValueError:
                raise BadInputError(f"{path.name}:{number}: the score must be an integer; got '{row[2]}'") from None
            yield row[0], row[1], grade


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Query id -> {document id: grade} for every judgement with a grade above 0."""
    qrels: dict[str, dict[str, int]] = {}
    for query, doc, grade in read_judgements(path):
        if grade > 0:
            qrels.setdefault(query, {})[doc] = grade
    return qrels


def load_benchmark(data_dir: str | Path, split: str | None = None) -> Benchmark:
    """Queries (of one `split`, if given) that have relevance judgements, and the judgements."""
    root = Path(data_dir)
    path = root / "queries.jsonl"
    ids, texts = read_queries(path)
    keep = set(ids)
    if split:
        splits = [json.loads(line).get("split") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keep = {qid for qid, s in zip(ids, splits) if s == split}
        if not keep:
            known = ", ".join(sorted({str(s) for s in splits}))
            raise NotFoundError(f"no queries with split '{split}' in {path} (splits there: {known})")
    qrels = read_qrels(root / "qrels.tsv")
    queries = {qid: text for qid, text in zip(ids, texts) if qid in keep and qid in qrels}
    if not queries:
        raise BadInputError(f"no judged queries in {root}")
    return Benchmark(queries=queries, qrels={qid: qrels[qid] for qid in queries})


def sample_benchmark(bench: Benchmark, size: int) -> Benchmark:
    """A seeded random sample of `size` of the benchmark's queries (all of them when size is 0 or more)."""
    if not size or size >= len(bench.queries):
        return bench
    ids = list(bench.queries)
    keep = [ids[i] for i in sorted(np.random.default_rng(0).choice(len(ids), size=size, replace=False))]
    return Benchmark(queries={q: bench.queries[q] for q in keep}, qrels={q: bench.qrels[q] for q in keep})


def ir_metrics(runs: dict[str, list[tuple[str, float]]], benchmark: Benchmark,
               runs100: dict[str, list[tuple[str, float]]] | None = None) -> dict[str, float]:
    """NDCG@10 (graded), MRR@10, Recall@10 and Recall@100 of ranked (doc id, score) lists, one per
    query, averaged over every judged query (a query without a run scores 0). Recall@100 comes
    from `runs100` when given (a search for 100 hits; `runs` may hold only 10)."""
    import pytrec_eval

    def ranked(lists: dict, depth: int) -> dict:
        # scores that keep our order (trec_eval sorts by score, then by document id)
        return {q: {doc: float(depth - rank) for rank, (doc, _) in enumerate(lists.get(q, [])[:depth])} or {"": 0.0}
                for q in benchmark.queries}

    qrels = {q: benchmark.qrels[q] for q in benchmark.queries}
    at10 = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recip_rank"}).evaluate(ranked(runs, 10))
    at100 = pytrec_eval.RelevanceEvaluator(qrels, {"recall.100"}).evaluate(ranked(runs100 or runs, 100))
    n = len(benchmark.queries)
    return {
        "ndcg@10": sum(m["ndcg_cut_10"] for m in at10.values()) / n,
        "mrr@10": sum(m["recip_rank"] for m in at10.values()) / n,
        "recall@10": sum(m["recall_10"] for m in at10.values()) / n,
        "recall@100": sum(m["recall_100"] for m in at100.values()) / n,
    }


def search_runs(searcher, vectors, texts: list[str], qids: list[str], doc_ids: list[str], k: int,
                rerank: int = 0, **kwargs) -> tuple[dict, float]:
    """Ranked (doc id, score) lists per query from an index in any mode (`kwargs` go to
    Searcher.retrieve: mode, tier, dim, fusion), with the top `rerank` re-ranked by the searcher's
    cross-encoder, and the search time in ms per query."""
    started = time.perf_counter()
    ranked, _ = searcher.retrieve(texts, vectors, SearchOptions(k=max(k, rerank), **kwargs))
    if rerank:
        ranked = [searcher.reranked(searcher.index, searcher.reranker, text, hits, rerank)[0][:k]
                  for text, hits in zip(texts, ranked)]
    ms = (time.perf_counter() - started) * 1000 / max(1, len(qids))
    chunk_doc = searcher.index.chunk_doc
    runs = {qid: [(doc_ids[chunk_doc[row]], score) for row, score, _ in hits] for qid, hits in zip(qids, ranked)}
    return runs, ms


@dataclass
class EvalReport:
    data: str
    split: str | None
    queries: int
    documents: int
    models: list[dict]  # key (spec, or "spec [runtime]" when runtimes are compared), spec, name, runtime, fingerprint, index
    modes: list[str] = field(default_factory=lambda: list(MODES))
    fusion: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # model, row ("64", "fast", "lexical", "hybrid", ...), metrics

    def ndcg(self, model: str, row: str) -> float | None:
        return next((r["ndcg@10"] for r in self.rows if r["model"] == model and r["row"] == row), None)

    def row_names(self) -> list[str]:
        return list(dict.fromkeys(r["row"] for r in self.rows))

    def comparison(self) -> list[dict]:
        """The reference table: NDCG@10 per row, Initial / Final / Improvement (two models), one
        column per runtime (with the change from the first when there are two), or one column."""
        specs = [m["key"] for m in self.models]
        out = []
        for row in self.row_names():
            entry = {"row": row, **{spec: self.ndcg(spec, row) for spec in specs}}
            if len(specs) == 2 and None not in (entry[specs[0]], entry[specs[1]]):
                entry["improvement"] = entry[specs[1]] - entry[specs[0]]
            out.append(entry)
        return out

    def columns(self) -> tuple[list[str], list[str]]:
        """(model keys, their column heads): the runtimes when one model runs in several, Initial /
        Final for two models, Model for one."""
        keys = [m["key"] for m in self.models]
        if len({m["runtime"] for m in self.models}) > 1:
            return keys, [m["runtime"] for m in self.models]
        return keys, ["Initial", "Final"] if len(keys) == 2 else ["Model"]

    @property
    def change_label(self) -> str:
        return "Change" if len({m["runtime"] for m in self.models}) > 1 else "Improvement"

    def to_json(self) -> dict:
        return asdict(self) | {"comparison": self.comparison()}

    def to_text(self) -> str:
        specs, heads = self.columns()
        lines = [f"{self.queries} queries ({self.split or 'all'}) against {self.documents} documents in {self.data}"]
        for head, m in zip(heads, self.models):
            lines.append(f"  {head}: {m['name']}")
        lines.append("")
        header = f"{'NDCG@10':>10}" + "".join(f"{h:>14}" for h in heads) + (f"  {self.change_label:>11}" if len(specs) == 2 else "")
        lines.append(header)
        for entry in self.comparison():
            cells = "".join(f"{entry[s]:>14.4f}" if entry.get(s) is not None else f"{'':>14}" for s in specs)
            extra = f"  {entry['improvement']:>+11.4f}" if "improvement" in entry else ""
            lines.append(f"{_row_label(entry['row']):>10}{cells}{extra}")
        lines.append("")
        lines.append(f"{'model':>13}  {'row':>6}  {'NDCG@10':>8}  {'MRR@10':>8}  {'R@10':>8}  {'R@100':>8}")
        for r in self.rows:
            label = heads[specs.index(r["model"])]
            lines.append(f"{label:>13}  {_row_label(r['row']):>6}  {r['ndcg@10']:>8.4f}  {r['mrr@10']:>8.4f}  {r['recall@10']:>8.4f}  {r['recall@100']:>8.4f}")
        lines += [""] + [_collapse_line(h, m) for h, m in zip(heads, self.models) if "mean_cosine" in m]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        specs, heads = self.columns()
        lines = [
            f"NDCG@10 on {self.queries} queries ({self.split or 'all'}) against {self.documents} documents.",
            "",
            *(f"- {h}: `{m['name']}`" for h, m in zip(heads, self.models)),
            "",
            "| row | " + " | ".join(heads) + (f" | {self.change_label} |" if len(specs) == 2 else " |"),
            "|---" * (len(heads) + 1 + (len(specs) == 2)) + "|",
        ]
        for entry in self.comparison():
            cells = [f"{entry[s]:.4f}" if entry.get(s) is not None else "" for s in specs]
            if len(specs) == 2:
                cells.append(f"{entry['improvement']:+.4f}" if "improvement" in entry else "")
            lines.append(f"| {_row_label(entry['row'])} | " + " | ".join(cells) + " |")
        lines += ["", "| model | row | NDCG@10 | MRR@10 | Recall@10 | Recall@100 |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            label = heads[specs.index(r["model"])]
            lines.append(f"| {label} | {_row_label(r['row'])} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['recall@10']:.4f} | {r['recall@100']:.4f} |")
        lines += [""] + [f"- {_collapse_line(h, m)}" for h, m in zip(heads, self.models) if "mean_cosine" in m]
        return "\n".join(lines) + "\n"


def mean_cosine(vectors: np.ndarray, dims: list[int], sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """Collapse check: mean cosine between distinct random chunk vectors at each prefix dim. A
    fine-tune that collapses the space pushes it towards 1; a healthy model keeps it well below."""
    from medsearch.index.backends.base import prefix

    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    picked = np.asarray(vectors[rows], dtype=np.float32)
    out = {}
    for dim in dims:
        small = prefix(picked, dim)
        gram = small @ small.T
        out[str(dim)] = round(float((gram.sum() - np.trace(gram)) / (len(small) * (len(small) - 1))), 4)
    return out


def _collapse_line(head: str, model: dict) -> str:
    cosines = ", ".join(f"{dim}: {value:.3f}" for dim, value in model.get("mean_cosine", {}).items())
    return f"{head}: mean cosine between random chunks (collapse check, 1 = collapsed) {cosines}"


def _row_label(row: str) -> str:
    base, plus, rerank = row.partition("+")
    return {"fast": "fast tier", "hybrid-fast": "hybrid fast"}.get(base, base) + (" +rr" if plus else "")


def cached_searcher(data_dir: str | Path, documents: list, encoder, cache: str | Path, progress: bool = False):
    """A Searcher over the corpus encoded by `encoder`, with every Matryoshka dim stored: built once
    into `cache` (keyed by the model's and the corpus's fingerprints) and reused."""
    from medsearch.index.build import build_index
    from medsearch.index.folder import index_exists, open_index
    from medsearch.index.store import corpus_fingerprint
    from medsearch.retrieval.search import Searcher
    from medsearch.training.finetune import matryoshka_dims

    corpus = corpus_fingerprint((d.id, d.content_hash) for d in documents)
    index_dir = Path(cache) / f"{encoder.fingerprint}-{encoder.runtime}-{corpus}"  # the corpus encoded by that runtime
    if not index_exists(index_dir) or "lexical" not in open_index(index_dir).manifest:
        build_index(data_dir, index_dir, encoder, extra_dims=tuple(matryoshka_dims(encoder.dim)), progress=progress)
    return Searcher(open_index(index_dir), encoder)


def check_comparison(models: list[str] | tuple[str, ...], runtimes: list[str] | tuple[str, ...]) -> None:
    """What one evaluation can compare: one model; two (base and tuned: Initial, Final, Improvement);
    or one model in several runtimes (a runtime's quality guard). Not two models in several runtimes."""
    if not models:
        raise BadInputError("give at least one model to evaluate")
    if len(models) > 2:
        raise BadInputError(f"give one or two models to evaluate (base, tuned); got {len(models)}")
    if not runtimes:
        raise BadInputError("give at least one runtime to evaluate with")
    if len(models) > 1 and len(runtimes) > 1:
        raise BadInputError("compare two models or several runtimes, not both at once")


def evaluate_models(
    data_dir: str | Path,
    models: list[str],
    split: str | None = "test",
    cache: str | Path = Path("indexes") / "eval",
    modes: tuple[str, ...] = MODES,
    fusion: Fusion | None = None,
    progress: bool = False,
    device: str | None = None,
    runtimes: tuple[str, ...] = ("torch",),
    reranker: str | None = None,
    rerank: int = 20,
    sample: int = 0,
    rerank_rows: tuple[str, ...] = ("fast", "lexical", "hybrid", "hybrid-fast"),
) -> EvalReport:
    """Every judged query of `split` against the WHOLE corpus, for each model and runtime (corpus and
    queries encoded by it: the quality guard of a runtime), in each mode:
    dense per Matryoshka dim and the fast tier (rows "64", ..., "fast"), lexical ("lexical"),
    hybrid at full dim and on the fast tier ("hybrid", "hybrid-fast"), fused by `fusion` (None: each
    model's own defaults, from its tuning, else Fusion()); with a `reranker` (a
    cross-encoder), each of `rerank_rows` (fast, lexical, hybrid, hybrid-fast) again with its top
    `rerank` documents re-ranked ("fast+rerank", ...). `sample`: a seeded sample of that many queries.

    Each model encodes the corpus once at full dim into a cached index (keyed by model and corpus
    fingerprints) that stores every Matryoshka prefix; the lower dims are prefixes of those vectors.
    """
    from medsearch.encoding.encoder import Encoder
    from medsearch.training.finetune import matryoshka_dims

    check_comparison(models, runtimes)
    for mode in modes:
        check_mode(mode)
    if fusion is not None:
        fusion.check()
    bench = load_benchmark(data_dir, split)
    bench = sample_benchmark(bench, sample)
    if reranker is not None and rerank < 1:
        raise BadInputError(f"rerank must be at least 1 with a re-ranker; got {rerank}")
    documents = read_corpus(data_dir)
    qids = list(bench.queries)
    texts = [bench.queries[q] for q in qids]
    report = EvalReport(data=str(data_dir), split=split, queries=len(qids), documents=len(documents), models=[],
                        modes=list(modes), fusion=asdict(fusion) if fusion is not None else {})
    for spec, runtime in [(spec, runtime) for spec in models for runtime in runtimes]:
        encoder = Encoder(spec, device=device, runtime=runtime)
        key = spec if len(runtimes) == 1 else f"{spec} [{encoder.runtime}]"
        dims = matryoshka_dims(encoder.dim)
        searcher = cached_searcher(data_dir, documents, encoder, cache, progress)
        if reranker is not None:
            from medsearch.retrieval.rerank import load_reranker, runtime_for

            searcher.reranker = load_reranker(reranker, device, runtime_for(encoder.runtime))
        index_dir = searcher.index.path
        doc_ids = searcher.index.store.doc_ids()
        vectors = encoder.encode_queries(texts, progress=progress) if set(modes) - {"lexical"} else None
        fused = fusion if fusion is not None else Fusion(**encoder.search_defaults.get("fusion", {}))
        report.models.append({"key": key, "spec": spec, "name": encoder.name, "runtime": encoder.runtime, "fusion": asdict(fused),
                              "fingerprint": encoder.fingerprint, "index": str(index_dir),
                              "mean_cosine": mean_cosine(searcher.index.backend.vectors, dims)})

        def row(name: str, exact: bool = False, reranks: bool = False, **kwargs) -> None:
            """`exact`: a search of one stored dim, whose top 10 is the top 10 of its 100 (one run);
            the fast tier and hybrid take more candidates for 100 hits, so they run once per depth.
            `reranks`: the row again with the re-ranker over each query's top `rerank` (at depth 10:
            a re-ranker does not change which documents the first 100 are)."""
            run100, _ = search_runs(searcher, vectors, texts, qids, doc_ids, 100, fusion=fused, **kwargs)
            run10 = run100 if exact else search_runs(searcher, vectors, texts, qids, doc_ids, 10, fusion=fused, **kwargs)[0]
            report.rows.append({"model": key, "row": name, **ir_metrics(run10, bench, run100)})
            if reranks and searcher.reranker is not None and name in rerank_rows:
                reranked, _ = search_runs(searcher, vectors, texts, qids, doc_ids, 10, rerank=rerank, fusion=fused, **kwargs)
                report.rows.append({"model": key, "row": f"{name}+rerank", **ir_metrics(reranked, bench, run100)})

        if "dense" in modes:
            for dim in dims:
                row(str(dim), exact=True, mode="dense", dim=dim)
            row("fast", reranks=True, mode="dense", tier="fast")
        if "lexical" in modes:
            row("lexical", reranks=True, mode="lexical")
        if "hybrid" in modes:
            row("hybrid", reranks=True, mode="hybrid", tier="deep")
            row("hybrid-fast", reranks=True, mode="hybrid", tier="fast")
    return report
