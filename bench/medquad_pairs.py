"""Loosen MedQuAD's question templates in a pairs file, so a fine-tune does not learn the templates.

MedQuAD questions come from ~16 templates ("What are the symptoms of X ?"). Trained only on those,
a model can lose quality on questions people actually type. This rewrites a fraction of the
anchors into other phrasings of the same need ("X symptoms", "signs of X", "how do I know if I
have X"), chosen at random per pair; answers are unchanged.

It can also add symptom-description queries (medsearch/data/medquad.py; `medsearch data medquad`
writes them as symptom_pairs.jsonl), the commonest kind of consumer question that
MedQuAD lacks ("straight lines look wavy when I read"): for each TRAIN-split condition with both a
symptoms answer and an overview ("What is X") answer, the anchor is a description of its symptoms
that does not name it (a sentence of the symptoms answer, or 3 to 6 of its Human Phenotype
Ontology terms) and the positive is the overview answer.

    python bench/medquad_pairs.py ../shared/data/medquad/train_pairs.jsonl /tmp/train_pairs_mixed.jsonl --fraction 0.5 \
        --symptom-pairs ../shared/data/medquad
"""

from __future__ import annotations

import argparse
import json
import random
import re

from medsearch.data.medquad import symptom_pairs

# (template regex with a (?P<x>...) focus group, rewrites using {x})
TEMPLATES: list[tuple[str, list[str]]] = [
    (r"what are the symptoms of (?P<x>.+)", ["{x} symptoms", "signs of {x}", "how do i know if i have {x}", "what does {x} feel like"]),
    (r"what are the signs and symptoms of (?P<x>.+)", ["{x} symptoms", "signs of {x}", "how do i know if i have {x}"]),
    (r"what are the treatments for (?P<x>.+)", ["{x} treatment", "how is {x} treated", "can {x} be cured", "medicine for {x}"]),
    (r"what causes (?P<x>.+)", ["{x} causes", "why do people get {x}", "what is the cause of {x}"]),
    (r"how to diagnose (?P<x>.+)", ["{x} diagnosis", "test for {x}", "how do doctors check for {x}"]),
    (r"is (?P<x>.+) inherited", ["does {x} run in families", "can you inherit {x}", "{x} genetics"]),
    (r"what are the genetic changes related to (?P<x>.+)", ["{x} gene mutation", "which gene causes {x}"]),
    (r"how many people are affected by (?P<x>.+)", ["how common is {x}", "{x} prevalence"]),
    (r"what is the outlook for (?P<x>.+)", ["{x} prognosis", "life expectancy with {x}", "will i recover from {x}"]),
    (r"who is at risk for (?P<x>.+?)\??", ["{x} risk factors", "who gets {x}", "am i at risk of {x}"]),
    (r"how to prevent (?P<x>.+)", ["{x} prevention", "how can i avoid {x}", "ways to lower my risk of {x}"]),
    (r"what are the complications of (?P<x>.+)", ["{x} complications", "what problems can {x} cause"]),
    (r"what are the stages of (?P<x>.+)", ["{x} stages", "how is {x} staged"]),
    (r"what research \(or clinical trials\) is being done for (?P<x>.+)", ["{x} clinical trials", "new research on {x}"]),
    (r"what to do for (?P<x>.+)", ["living with {x}", "self care for {x}", "what should i do about {x}"]),
    (r"what is \(are\) (?P<x>.+)", ["{x}", "what is {x}", "tell me about {x}", "{x} explained"]),
    (r"do you have information about (?P<x>.+)", ["{x}", "information on {x}"]),
]
COMPILED = [(re.compile(rf"^\s*{pattern}\s*\??\s*$", re.IGNORECASE), rewrites) for pattern, rewrites in TEMPLATES]


def rewrite(question: str, rng: random.Random) -> str:
    """Another phrasing of a templated question, or the question itself when no template matches."""
    for pattern, rewrites in COMPILED:
        match = pattern.match(question)
        if match:
            focus = match.group("x").strip().rstrip("?").strip()
            return rng.choice(rewrites).format(x=focus)
    return question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of anchors rewritten")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--symptom-pairs", metavar="MEDQUAD_DIR", help="also add symptom-description pairs derived from this MedQuAD folder's train split")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    changed = total = 0
    with open(args.source, encoding="utf-8") as src, open(args.target, "w", encoding="utf-8") as out:
        for line in src:
            if not line.strip():
                continue
            record = json.loads(line)
            total += 1
            if rng.random() < args.fraction:
                new = rewrite(record["anchor"], rng)
                changed += new != record["anchor"]
                record["anchor"] = new
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        extra = symptom_pairs(args.symptom_pairs, rng) if args.symptom_pairs else []
        for record in extra:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"rewrote {changed} of {total} anchors, added {len(extra)} symptom-description pairs -> {args.target}")


if __name__ == "__main__":
    main()
