"""Retrieval metrics over a BEIR-style folder (`corpus.jsonl`, `queries.jsonl`, `qrels.tsv`).

Metrics come from sentence-transformers' InformationRetrievalEvaluator (its `compute_metrics`
scores ranked lists we produce: a tier of an index, a BM25 run, a truncated embedding).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medsearch.corpus import read_corpus, read_queries
from medsearch.errors import MedsearchError


@dataclass
class Benchmark:
    queries: dict[str, str]  # query id -> text, only queries with at least one relevant document
    qrels: dict[str, set[str]]  # query id -> relevant document ids


def read_qrels(path: Path) -> dict[str, set[str]]:
    if not path.is_file():
        raise MedsearchError(f"relevance judgements not found: {path}")
    qrels: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(rows, start=1):
            if not row or (number == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or header
            if len(row) < 3:
                raise MedsearchError(f"{path.name}:{number}: expected query-id, corpus-id, score separated by tabs")
            if int(row[2]) > 0:
                qrels.setdefault(row[0], set()).add(row[1])
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
            raise MedsearchError(f"no queries with split '{split}' in {path} (splits there: {known})")
    qrels = read_qrels(root / "qrels.tsv")
    queries = {qid: text for qid, text in zip(ids, texts) if qid in keep and qid in qrels}
    if not queries:
        raise MedsearchError(f"no judged queries in {root}")
    return Benchmark(queries=queries, qrels={qid: qrels[qid] for qid in queries})


def ir_metrics(runs: dict[str, list[tuple[str, float]]], benchmark: Benchmark) -> dict[str, float]:
    """NDCG@10, MRR@10, Recall@10 and Recall@100 of ranked (doc id, score) lists, one per query."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        queries=benchmark.queries,
        corpus={},
        relevant_docs=benchmark.qrels,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[10],
        precision_recall_at_k=[10, 100],
        map_at_k=[100],
        write_csv=False,
    )
    results = [[{"corpus_id": doc, "score": score} for doc, score in runs.get(qid, [])] for qid in evaluator.queries_ids]
    metrics = evaluator.compute_metrics(results)
    return {
        "ndcg@10": float(metrics["ndcg@k"][10]),
        "mrr@10": float(metrics["mrr@k"][10]),
        "recall@10": float(metrics["recall@k"][10]),
        "recall@100": float(metrics["recall@k"][100]),
    }


def search_runs(searcher, vectors, qids: list[str], doc_ids: list[str], k: int, **kwargs) -> tuple[dict, float]:
    """Ranked (doc id, score) lists per query from an index, and the search time in ms per query."""
    started = time.perf_counter()
    ranked, _ = searcher.search_vectors(vectors, k=k, **kwargs)
    ms = (time.perf_counter() - started) * 1000 / max(1, len(qids))
    chunk_doc = searcher.index.chunk_doc
    runs = {qid: [(doc_ids[chunk_doc[row]], score) for row, score in hits] for qid, hits in zip(qids, ranked)}
    return runs, ms


def bm25_runs(documents, queries: dict[str, str], k: int = 100) -> dict:
    """BM25 (bm25s, English stop words) over title + text: the lexical baseline."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([f"{d.title}\n{d.text}" for d in documents], stopwords="en", show_progress=False), show_progress=False)
    qids = list(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
    hits, scores = retriever.retrieve(tokens, k=min(k, len(documents)), show_progress=False, n_threads=0)
    return {q: [(documents[i].id, float(s)) for i, s in zip(hits[n], scores[n]) if s > 0] for n, q in enumerate(qids)}


@dataclass
class EvalReport:
    data: str
    split: str | None
    queries: int
    documents: int
    models: list[dict]  # spec, name, fingerprint, index
    rows: list[dict] = field(default_factory=list)  # model, row ("64", "fast", "bm25", ...), metrics

    def ndcg(self, model: str, row: str) -> float | None:
        return next((r["ndcg@10"] for r in self.rows if r["model"] == model and r["row"] == row), None)

    def row_names(self) -> list[str]:
        return list(dict.fromkeys(r["row"] for r in self.rows if r["model"] != "bm25"))

    def comparison(self) -> list[dict]:
        """The reference table: NDCG@10 per row, Initial / Final / Improvement (two models) or one column."""
        specs = [m["spec"] for m in self.models]
        out = []
        for row in self.row_names():
            entry = {"row": row, **{spec: self.ndcg(spec, row) for spec in specs}}
            if len(specs) == 2 and None not in (entry[specs[0]], entry[specs[1]]):
                entry["improvement"] = entry[specs[1]] - entry[specs[0]]
            out.append(entry)
        bm25 = self.ndcg("bm25", "bm25")
        if bm25 is not None:
            out.append({"row": "bm25", **{spec: bm25 for spec in specs[:1]}})
        return out

    def columns(self) -> tuple[list[str], list[str]]:
        """(model specs, their column heads): Initial / Final for two models, Model for one."""
        specs = [m["spec"] for m in self.models]
        return specs, ["Initial", "Final"] if len(specs) == 2 else ["Model"]

    def to_json(self) -> dict:
        return asdict(self) | {"comparison": self.comparison()}

    def to_text(self) -> str:
        specs, heads = self.columns()
        lines = [f"{self.queries} queries ({self.split or 'all'}) against {self.documents} documents in {self.data}"]
        for head, m in zip(heads, self.models):
            lines.append(f"  {head}: {m['name']}")
        lines.append("")
        header = f"{'NDCG@10':>10}" + "".join(f"{h:>12}" for h in heads) + ("  Improvement" if len(specs) == 2 else "")
        lines.append(header)
        for entry in self.comparison():
            cells = "".join(f"{entry[s]:>12.4f}" if entry.get(s) is not None else f"{'':>12}" for s in specs)
            extra = f"  {entry['improvement']:>+11.4f}" if "improvement" in entry else ""
            lines.append(f"{_row_label(entry['row']):>10}{cells}{extra}")
        lines.append("")
        lines.append(f"{'model':>10}  {'row':>6}  {'NDCG@10':>8}  {'MRR@10':>8}  {'R@10':>8}  {'R@100':>8}")
        for r in self.rows:
            label = "bm25" if r["model"] == "bm25" else heads[specs.index(r["model"])]
            lines.append(f"{label:>10}  {_row_label(r['row']):>6}  {r['ndcg@10']:>8.4f}  {r['mrr@10']:>8.4f}  {r['recall@10']:>8.4f}  {r['recall@100']:>8.4f}")
        lines += [""] + [_collapse_line(h, m) for h, m in zip(heads, self.models) if "mean_cosine" in m]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        specs, heads = self.columns()
        lines = [
            f"NDCG@10 on {self.queries} queries ({self.split or 'all'}) against {self.documents} documents.",
            "",
            *(f"- {h}: `{m['name']}`" for h, m in zip(heads, self.models)),
            "",
            "| dim | " + " | ".join(heads) + (" | Improvement |" if len(specs) == 2 else " |"),
            "|---" * (len(heads) + 1 + (len(specs) == 2)) + "|",
        ]
        for entry in self.comparison():
            cells = [f"{entry[s]:.4f}" if entry.get(s) is not None else "" for s in specs]
            if len(specs) == 2:
                cells.append(f"{entry['improvement']:+.4f}" if "improvement" in entry else "")
            lines.append(f"| {_row_label(entry['row'])} | " + " | ".join(cells) + " |")
        lines += ["", "| model | row | NDCG@10 | MRR@10 | Recall@10 | Recall@100 |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            label = "BM25" if r["model"] == "bm25" else heads[specs.index(r["model"])]
            lines.append(f"| {label} | {_row_label(r['row'])} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['recall@10']:.4f} | {r['recall@100']:.4f} |")
        lines += [""] + [f"- {_collapse_line(h, m)}" for h, m in zip(heads, self.models) if "mean_cosine" in m]
        return "\n".join(lines) + "\n"


def mean_cosine(vectors: np.ndarray, dims: list[int], sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """Collapse check: mean cosine between distinct random chunk vectors at each prefix dim. A
    fine-tune that collapses the space pushes it towards 1; a healthy model keeps it well below."""
    from medsearch.index import prefix

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
    return {"fast": "fast tier", "bm25": "BM25"}.get(row, row)


def evaluate_models(
    data_dir: str | Path,
    models: list[str],
    split: str | None = "test",
    cache: str | Path = Path("indexes") / "eval",
    bm25: bool = True,
    progress: bool = False,
    device: str | None = None,
) -> EvalReport:
    """Every judged query of `split` against the WHOLE corpus, per Matryoshka dim, for each model.

    Each model encodes the corpus once at full dim into a cached index (keyed by model and corpus
    fingerprints) that stores every Matryoshka prefix; the lower dims are prefixes of those vectors.
    """
    from medsearch.encoder import Encoder
    from medsearch.index import build_index, corpus_fingerprint, index_exists, open_index
    from medsearch.search import Searcher
    from medsearch.training import matryoshka_dims

    if not models:
        raise MedsearchError("give at least one model to evaluate")
    bench = load_benchmark(data_dir, split)
    documents = read_corpus(data_dir)
    qids = list(bench.queries)
    report = EvalReport(data=str(data_dir), split=split, queries=len(qids), documents=len(documents), models=[])
    for spec in models:
        encoder = Encoder(spec, device=device)
        dims = matryoshka_dims(encoder.dim)
        index_dir = Path(cache) / f"{encoder.fingerprint}-{corpus_fingerprint((d.id, d.content_hash) for d in documents)}"
        if not index_exists(index_dir):
            build_index(data_dir, index_dir, encoder, extra_dims=tuple(dims), progress=progress)
        searcher = Searcher(open_index(index_dir), encoder)
        doc_ids = searcher.index.store.doc_ids()
        vectors = encoder.encode_queries([bench.queries[q] for q in qids], progress=progress)
        report.models.append({"spec": spec, "name": encoder.name, "fingerprint": encoder.fingerprint, "index": str(index_dir),
                              "mean_cosine": mean_cosine(searcher.index.vectors, dims)})
        for dim in dims:
            runs, _ = search_runs(searcher, vectors, qids, doc_ids, 100, dim=dim)
            report.rows.append({"model": spec, "row": str(dim), **ir_metrics(runs, bench)})
        fast10, _ = search_runs(searcher, vectors, qids, doc_ids, 10, tier="fast")
        fast100, _ = search_runs(searcher, vectors, qids, doc_ids, 100, tier="fast")
        metrics = ir_metrics(fast10, bench) | {"recall@100": ir_metrics(fast100, bench)["recall@100"]}
        report.rows.append({"model": spec, "row": "fast", **metrics})
    if bm25:
        report.rows.append({"model": "bm25", "row": "bm25", **ir_metrics(bm25_runs(documents, bench.queries), bench)})
    return report
