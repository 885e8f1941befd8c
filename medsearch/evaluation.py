"""Retrieval metrics over a BEIR-style folder (`corpus.jsonl`, `queries.jsonl`, `qrels.tsv`).

Metrics come from sentence-transformers' InformationRetrievalEvaluator (its `compute_metrics`
scores ranked lists we produce: a tier of an index, a BM25 run, a truncated embedding).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from medsearch.corpus import read_queries
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
