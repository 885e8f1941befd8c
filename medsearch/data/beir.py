"""BEIR's public medical sets (NFCorpus, TREC-COVID, SciFact) as medsearch BEIR folders.

A BEIR archive holds `NAME/corpus.jsonl`, `NAME/queries.jsonl` and `NAME/qrels/{train,dev,test}.tsv`
(query-id, corpus-id, score; graded on TREC-COVID and NFCorpus). medsearch's folder keeps the
corpus as it is, gives each query the `split` of the qrels file that judges it, and merges the
qrels into one `qrels.tsv` with the grades, so `medsearch eval DIR --split test` reports graded
NDCG@10 on the same judgements BEIR's leaderboards use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medsearch.errors import BadInputError
from medsearch.training.evaluation import read_judgements

MEDICAL_SETS = ("nfcorpus", "trec-covid", "scifact")
SPLIT_FILES = ("test", "dev", "train")  # a query judged in several files takes the first


def find_root(unpacked: Path) -> Path:
    """The folder of an unpacked archive (or a local copy) that holds corpus.jsonl and qrels/."""
    candidates = [unpacked, *sorted(p.parent for p in unpacked.rglob("corpus.jsonl"))]
    for folder in candidates:
        if (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file() and (folder / "qrels").is_dir():
            return folder
    raise BadInputError(f"{unpacked} is not a BEIR data set: no folder with corpus.jsonl, queries.jsonl and qrels/")


def write_beir(source: Path, out: str | Path) -> dict:
    """Copy a BEIR set (folder layout above) into `out` as medsearch reads it; return counts."""
    root = find_root(Path(source))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_of: dict[str, str] = {}
    judgements: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str]] = set()
    for split in SPLIT_FILES:
        path = root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            continue
        for query, doc, score in read_judgements(path):
            split_of.setdefault(query, split)
            if (query, doc) not in seen:  # the first split's grade wins, as the query's split does
                seen.add((query, doc))
                judgements.append((query, doc, score))
    if not judgements:
        raise BadInputError(f"{root / 'qrels'} has no judgements (expected test.tsv, dev.tsv or train.tsv)")
    shutil.copyfile(root / "corpus.jsonl", out / "corpus.jsonl")
    with open(out / "corpus.jsonl", encoding="utf-8") as handle:
        documents = sum(1 for line in handle if line.strip())
    queries = 0
    with open(root / "queries.jsonl", encoding="utf-8") as src, open(out / "queries.jsonl", "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip():
                record = json.loads(line)
                if record["_id"] in split_of:
                    record["split"] = split_of[record["_id"]]
                    dst.write(json.dumps(record, ensure_ascii=False) + "\n")
                    queries += 1
    with open(out / "qrels.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in judgements)
    splits = {s: sum(v == s for v in split_of.values()) for s in SPLIT_FILES if s in split_of.values()}
    grades = sorted({s for _, _, s in judgements})
    return {"documents": documents, "queries": queries, "qrels": len(judgements), "splits": splits, "grades": grades}
