"""Assemble the consumer-question development set as a BEIR folder that `medsearch eval` reads.

The questions and their graded judgements are committed in devsets/consumer/ (how they were written
and judged: devsets/consumer/README.md); the documents are MedQuAD's (a folder made by
`medsearch data medquad`) and the bundled corpus's, which has the medicines MedQuAD lacks:

    python bench/consumer_devset.py --medquad data/medquad --out data/consumer
    medsearch eval data/consumer --split dev
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVSET = REPO / "devsets" / "consumer"


def assemble(medquad: Path, out: Path, bundled: Path = REPO / "corpus") -> dict:
    """out/corpus.jsonl (MedQuAD's documents, then the bundled ones), queries.jsonl, qrels.tsv."""
    if not (medquad / "corpus.jsonl").is_file():
        raise SystemExit(f"{medquad} has no corpus.jsonl: make it with `medsearch data medquad {medquad}`")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as corpus:
        for source in (medquad / "corpus.jsonl", bundled / "corpus.jsonl"):
            text = source.read_text()
            corpus.write(text if text.endswith("\n") else text + "\n")
    for name in ("queries.jsonl", "qrels.tsv"):
        shutil.copyfile(DEVSET / name, out / name)
    lines = lambda p: sum(1 for line in open(p) if line.strip())  # noqa: E731
    return {"documents": lines(out / "corpus.jsonl"), "queries": lines(out / "queries.jsonl"),
            "judgements": lines(out / "qrels.tsv") - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medquad", required=True, type=Path, help="A MedQuAD folder (medsearch data medquad).")
    parser.add_argument("--out", required=True, type=Path, help="Where to write the BEIR folder.")
    args = parser.parse_args()
    counts = assemble(args.medquad, args.out)
    print(f"{args.out}: {counts['documents']} documents, {counts['queries']} questions, {counts['judgements']} judgements")


if __name__ == "__main__":
    main()
