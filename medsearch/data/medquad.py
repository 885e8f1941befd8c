"""MedQuAD (Ben Abacha and Demner-Fushman, CC BY 4.0) from its XML, as a BEIR folder for
retrieval, with a condition-level split and the training pairs that `medsearch tune` reads.

Input: the MedQuAD repository (a clone, its .zip, or the download of either): folders such as
`1_CancerGov_QA/` of XML documents, each a focus (disease, condition, drug) with question-answer
pairs. Answers removed for copyright (the MedlinePlus A.D.A.M., drug and herb sets) are empty and
skipped. Output, in the layout medsearch's evaluation and tuning read:

  corpus.jsonl            one document per distinct answer (whitespace normalised): _id (the first
                          pair's id, FOLDER/DOCUMENT/QUESTION), title (the focus; empty when the
                          answer is shared by several), text, url, source (the folder)
  queries.jsonl           one query per distinct question: _id, text, source, qtype, focus, split
  qrels.tsv               a query is relevant to the answer of every pair that asks it
  train_pairs.jsonl       anchor, positive, id: every pair whose question is in the train split
  train_pairs_2182.jsonl  a fixed random sample of those, the reference experiment's size
  symptom_pairs.jsonl     symptom descriptions that do not name the condition -> its overview
  README.md               attribution, counts, and how the split was made

The split is by focus (a condition never spans two splits): each normalised focus name hashes
(SHA-256) to a number in [0, 1): below 0.8 train, below 0.9 dev, else test. It depends only on the
name, so it is the same on every machine and for every version of the data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medsearch.errors import BadInputError, MedsearchError

SPLITS = (("train", 0.8), ("dev", 0.9), ("test", 1.0))
SAMPLE_SIZE = 2182
SEED = 13
CITATION = ('A. Ben Abacha, D. Demner-Fushman, "A Question-Entailment Approach to Question Answering", '
            "BMC Bioinformatics 20, 511 (2019). https://github.com/abachaa/MedQuAD")


@dataclass
class Pair:
    id: str  # FOLDER/DOCUMENT/QUESTION
    question: str
    answer: str
    qtype: str
    focus: str
    url: str
    folder: str


def normalise(text: str | None) -> str:
    """Each line's whitespace collapsed, blank lines dropped (the XML indents answers heavily)."""
    lines = (" ".join(line.split()) for line in (text or "").splitlines())
    return "\n".join(line for line in lines if line)


def split_of(focus: str) -> str:
    """train / dev / test for a focus name, from its hash (the same on every machine)."""
    key = " ".join(focus.lower().split())
    value = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    return next(name for name, upper in SPLITS if value < upper)


def _folder_order(path: Path) -> tuple:
    number = re.match(r"(\d+)_", path.name)
    return (int(number.group(1)) if number else 10**6, path.name)


def read_pairs(root: str | Path) -> list[Pair]:
    """Every question-answer pair with an answer, in the repository's order (folders by number)."""
    root = Path(root)
    files = sorted(root.rglob("*.xml"), key=lambda p: (_folder_order(p.parent), p.name))
    if not files:
        raise BadInputError(f"no MedQuAD XML files under {root}: give the MedQuAD repository (a clone or its .zip)")
    pairs = []
    for file in files:
        try:
            document = ElementTree.parse(file).getroot()
        except ElementTree.ParseError as err:
            raise BadInputError(f"{file}: not valid XML ({err})") from None
        if document.tag != "Document":
            continue
        focus = normalise(document.findtext("Focus"))
        for qa in document.iter("QAPair"):
            question, answer = qa.find("Question"), normalise(qa.findtext("Answer"))
            if question is None or not answer or not normalise(question.text):
                continue
            pairs.append(Pair(
                id=f"{file.parent.name}/{document.get('id', file.stem)}/{question.get('qid', '')}",
                question=normalise(question.text), answer=answer, qtype=question.get("qtype", ""),
                focus=focus, url=document.get("url", ""), folder=file.parent.name,
            ))
    if not pairs:
        raise BadInputError(f"the MedQuAD XML under {root} has no answered question")
    return pairs


def write_medquad(pairs: list[Pair], out: str | Path, sample_size: int = SAMPLE_SIZE, seed: int = SEED) -> dict:
    """The BEIR folder and pair files described in the module's docstring; returns the counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs: dict[str, dict] = {}  # answer text -> document
    foci: dict[str, set[str]] = defaultdict(set)
    queries: dict[str, dict] = {}  # question text -> query
    qrels: dict[str, list[str]] = defaultdict(list)
    for pair in pairs:
        doc = docs.setdefault(pair.answer, {"_id": pair.id, "title": pair.focus, "text": pair.answer,
                                            "url": pair.url, "source": pair.folder})
        foci[pair.answer].add(pair.focus)
        query = queries.setdefault(pair.question, {"_id": pair.id, "text": pair.question, "source": pair.folder,
                                                   "qtype": pair.qtype, "focus": pair.focus,
                                                   "split": split_of(pair.focus)})
        if doc["_id"] not in qrels[query["_id"]]:
            qrels[query["_id"]].append(doc["_id"])
    for answer, doc in docs.items():
        if len(foci[answer]) > 1:
            doc["title"] = ""
    train = [{"anchor": p.question, "positive": p.answer, "id": p.id} for p in pairs
             if queries[p.question]["split"] == "train"]
    sample = sorted(random.Random(seed).sample(range(len(train)), min(sample_size, len(train))))
    _write_jsonl(out / "corpus.jsonl", docs.values())
    _write_jsonl(out / "queries.jsonl", queries.values())
    with open(out / "qrels.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{d}\t1\n" for q, ds in qrels.items() for d in ds)
    _write_jsonl(out / "train_pairs.jsonl", train)
    _write_jsonl(out / f"train_pairs_{sample_size}.jsonl", [train[i] for i in sample])
    symptoms = symptom_pairs(out, random.Random(seed))
    _write_jsonl(out / "symptom_pairs.jsonl", symptoms)
    splits = {name: sum(q["split"] == name for q in queries.values()) for name, _ in SPLITS}
    counts = {"pairs": len(pairs), "documents": len(docs), "queries": len(queries), "qrels": sum(map(len, qrels.values())),
              "splits": splits, "train_pairs": len(train), "sample": len(sample), "symptom_pairs": len(symptoms)}
    (out / "README.md").write_text(_readme(counts, sample_size))
    return counts


def _write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _readme(counts: dict, sample_size: int) -> str:
    splits = ", ".join(f"{name} {n:,}" for name, n in counts["splits"].items())
    return f"""# MedQuAD, prepared for retrieval by `medsearch data medquad`

Attribution (CC BY 4.0): MedQuAD by Asma Ben Abacha and Dina Demner-Fushman. Cite: {CITATION}
Modified: parsed from XML, whitespace normalised, pairs without an answer (removed for copyright)
dropped, identical answers merged into one document and identical questions into one query, split
by focus.

| file | rows |
|---|---|
| corpus.jsonl | {counts['documents']:,} documents (distinct answers) |
| queries.jsonl | {counts['queries']:,} queries (distinct questions): {splits} |
| qrels.tsv | {counts['qrels']:,} judgements (score 1) |
| train_pairs.jsonl | {counts['train_pairs']:,} pairs whose question is in the train split |
| train_pairs_{sample_size}.jsonl | {counts['sample']:,}: a fixed random sample (seed {SEED}) |
| symptom_pairs.jsonl | {counts['symptom_pairs']:,}: symptom description (train split) -> overview answer |

Split: by focus, from a hash of the focus name (below 0.8 train, below 0.9 dev, else test).
Train only on train pairs, choose settings on dev, report on test against the whole corpus.
"""


# --- symptom-description pairs -------------------------------------------------------------

HPO_START = "Approximate number of patients (when available)"
HPO_END = "The Human Phenotype Ontology (HPO) has collected"
SYMPTOM_CUES = re.compile(r"\b(include|includes|including|experience|develop|characterized|symptoms?|signs?|may have|pain|feel)\b", re.I)


def hpo_terms(text: str) -> list[str]:
    """The phenotype terms of a GARD "Human Phenotype Ontology" symptom list (frequencies dropped)."""
    if HPO_START not in text:
        return []
    listing = text.split(HPO_START, 1)[1].split(HPO_END, 1)[0]
    terms = [re.sub(r"\s*(\d+%|\d+/\d+|very frequent|frequent|occasional|very rare)\s*$", "", t.strip(), flags=re.I)
             for t in listing.split(" - ")]
    return [t for t in terms if t and len(t) < 80 and not re.search(r"inheritance|onset|heterogeneity", t, re.I)]


def symptom_description(text: str, focus: str, rng: random.Random) -> str | None:
    """A description of the symptoms in an answer that does not name the condition, or None: 3 to
    6 of its phenotype terms, or one sentence with a symptom cue and no word of the condition's name."""
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
    usable = [s for s in sentences if 8 <= len(s.split()) <= 45 and SYMPTOM_CUES.search(s)
              and not names & set(re.findall(r"[a-z0-9'-]+", s.lower()))]
    return rng.choice(usable).lstrip("- ").rstrip(".").lower() if usable else None


def symptom_pairs(data_dir: str | Path, rng: random.Random) -> list[dict]:
    """(symptom description -> overview answer) pairs for the train split's conditions of a
    MedQuAD folder: MedQuAD's questions all name their condition; people often describe symptoms."""
    from medsearch.documents.corpus import read_corpus
    from medsearch.training.evaluation import read_qrels

    data = Path(data_dir)
    if not (data / "queries.jsonl").is_file():
        raise MedsearchError(f"{data} is not a MedQuAD folder (no queries.jsonl): write one with medsearch data medquad")
    corpus = {d.id: d.text for d in read_corpus(data)}
    answers = read_qrels(data / "qrels.tsv")
    by_focus: dict[str, dict[str, str]] = defaultdict(dict)
    with open(data / "queries.jsonl", encoding="utf-8") as handle:  # focus and qtype: not in read_queries
        for query in map(json.loads, filter(str.strip, handle)):
            if query.get("split") == "train" and query["_id"] in answers:
                by_focus[query["focus"]].setdefault(query["qtype"], min(answers[query["_id"]]))
    pairs = []
    for focus, kinds in sorted(by_focus.items()):
        if "symptoms" in kinds and "information" in kinds:
            description = symptom_description(corpus[kinds["symptoms"]], focus, rng)
            if description:
                pairs.append({"anchor": description, "positive": corpus[kinds["information"]],
                              "id": f"symptoms-{kinds['symptoms']}"})
    return pairs
