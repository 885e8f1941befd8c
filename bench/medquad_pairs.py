"""Loosen MedQuAD's question templates in a pairs file, so a fine-tune does not learn the templates.

MedQuAD questions come from ~16 templates ("What are the symptoms of X ?"). Trained only on those,
a model can lose quality on questions people actually type. This rewrites a fraction of the
anchors into other phrasings of the same need ("X symptoms", "signs of X", "how do I know if I
have X"), chosen at random per pair; answers are unchanged.

It can also add symptom-description queries, the commonest kind of consumer question that
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
from collections import defaultdict
from pathlib import Path

from medsearch.corpus import read_corpus
from medsearch.evaluation import read_qrels

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


HPO_START = "Approximate number of patients (when available)"
HPO_END = "The Human Phenotype Ontology (HPO) has collected"
SYMPTOM_CUES = re.compile(r"\b(include|includes|including|experience|develop|characterized|symptoms?|signs?|may have|pain|feel)\b", re.I)


def hpo_terms(text: str) -> list[str]:
    """The phenotype terms of a GARD "Human Phenotype Ontology" symptom list (frequencies dropped)."""
    if HPO_START not in text:
        return []
    listing = text.split(HPO_START, 1)[1].split(HPO_END, 1)[0]
    terms = [re.sub(r"\s*(\d+%|\d+/\d+|very frequent|frequent|occasional|very rare)\s*$", "", t.strip(), flags=re.I) for t in listing.split(" - ")]
    return [t for t in terms if t and len(t) < 80 and not re.search(r"inheritance|onset|heterogeneity", t, re.I)]


def symptom_description(text: str, focus: str, rng: random.Random) -> str | None:
    """A description of the symptoms in an answer that does not name the condition, or None."""
    if HPO_START in text:  # a phenotype list: its prose is boilerplate
        terms = hpo_terms(text)
        if len(terms) < 3:
            return None
        picked = [t.lower() for t in rng.sample(terms, min(len(terms), rng.randint(3, 6)))]
        return ", ".join(picked[:-1]) + " and " + picked[-1]
    generic = {"syndrome", "disease", "disorder", "disorders", "deficiency", "adults", "children", "infants", "related"}
    names = ({w for w in re.findall(r"[a-z0-9'-]{5,}", focus.lower()) if w not in generic}
             | {w.lower() for w in re.findall(r"\(([A-Z][A-Za-z0-9-]{1,9})\)", text)})
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)[1:]]  # the first one restates the question
    usable = [s for s in sentences if 8 <= len(s.split()) <= 45 and SYMPTOM_CUES.search(s) and not names & set(re.findall(r"[a-z0-9'-]+", s.lower()))]
    return rng.choice(usable).lstrip("- ").rstrip(".").lower() if usable else None


def symptom_pairs(data_dir: str | Path, rng: random.Random) -> list[dict]:
    """(symptom description -> overview answer) pairs for the train split's conditions."""
    data = Path(data_dir)
    corpus = {d.id: d.text for d in read_corpus(data)}
    answers = read_qrels(data / "qrels.tsv")
    by_focus: dict[str, dict[str, str]] = defaultdict(dict)
    for query in map(json.loads, (data / "queries.jsonl").open(encoding="utf-8")):  # focus and qtype: not in read_queries
        if query.get("split") == "train" and query["_id"] in answers:
            by_focus[query["focus"]].setdefault(query["qtype"], min(answers[query["_id"]]))
    pairs = []
    for focus, kinds in sorted(by_focus.items()):
        if "symptoms" in kinds and "information" in kinds:
            description = symptom_description(corpus[kinds["symptoms"]], focus, rng)
            if description:
                pairs.append({"anchor": description, "positive": corpus[kinds["information"]], "id": f"symptoms-{kinds['symptoms']}"})
    return pairs


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
