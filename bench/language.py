"""Languages: the detector (py3langid against lingua) and BM25's analysis per language.

    python bench/language.py --tico ../shared/data/tico19 --devsets corpus devsets/fr devsets/es

1. Detection: every TICO-19 sentence (English, French, Spanish), whole and cut to its first four
   words (with and without accents: short queries as people type them): accuracy, ms a text,
   resident memory, time to load. lingua runs only where `lingua-language-detector` is installed.
2. Analysis: BM25 (bm25s) over each dev set's documents (title + text) analysed as English (what
   medsearch did before languages), in the set's language without and with accent folding, and
   language-neutral: NDCG@10 (graded, trec_eval's linear gains) of its queries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table, write_results  # noqa: E402

from medsearch.index import language  # noqa: E402
from medsearch.encoding.chunking import passage  # noqa: E402
from medsearch.documents.corpus import read_corpus  # noqa: E402
from medsearch.training.evaluation import ir_metrics, load_benchmark  # noqa: E402
from medsearch.index.lexical import Analysis  # noqa: E402

DETECTOR = """
import json, resource, sys, time
rows = json.loads(sys.stdin.read())
started = time.perf_counter()
if sys.argv[1] == "py3langid":
    from medsearch.index.language import _ranker  # the classifier itself, without medsearch's too-short rule
    ranker = _ranker()
    ranker.rank("warm up the model with a sentence")
    name = lambda text: ranker.rank(text)[0][0]
else:
    from lingua import LanguageDetectorBuilder
    builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    detector = (builder.with_low_accuracy_mode() if sys.argv[1] == "lingua-low" else builder).build()
    detector.detect_language_of("warm up the model with a sentence")
    def name(text):
        found = detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found else None
load = time.perf_counter() - started
out = {"load_s": round(load, 2)}
for kind, texts in rows.items():
    started = time.perf_counter()
    right = sum(name(text) == code for text, code in texts)
    out[kind] = {"accuracy": round(right / len(texts), 4), "ms_per_text": round(1000 * (time.perf_counter() - started) / len(texts), 3)}
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(out))
"""


def detection(tico: Path) -> list[dict]:
    texts = []
    for pair, code in (("en-fr", "en"), ("en-fr", "fr"), ("en-es", "es")):
        texts += [(json.loads(line)[code], code) for line in (tico / f"{pair}.jsonl").read_text().splitlines()]
    short = [(" ".join(text.split()[:4]), code) for text, code in texts]
    sets = {"sentences": texts, "first 4 words": short,
            "first 4 words, no accents": [("".join(map(language.fold, text)), code) for text, code in short]}
    rows = []
    for detector in ("py3langid", "lingua", "lingua-low"):
        if detector != "py3langid" and subprocess.run([sys.executable, "-c", "import lingua"], capture_output=True).returncode:
            continue
        done = subprocess.run([sys.executable, "-c", DETECTOR, detector], input=json.dumps(sets), capture_output=True,
                              text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        result = json.loads(done.stdout)
        rows.append({"detector": detector, "load_s": result["load_s"], "rss_mb": result["rss_mb"],
                     **{f"{kind} acc": result[kind]["accuracy"] for kind in sets},
                     "ms/text (sentences)": result["sentences"]["ms_per_text"]})
    return rows


def bm25_ndcg(folder: Path, analysis: Analysis) -> float:
    import bm25s

    documents = read_corpus(folder / "corpus.jsonl")
    bench = load_benchmark(folder, split=None)
    retriever = bm25s.BM25()
    retriever.index(analysis.tokenize([passage(d.title, d.text) for d in documents]), show_progress=False)
    vocab = retriever.vocab_dict
    runs = {}
    for qid, text in bench.queries.items():
        terms = [t for t in analysis.tokenize([text])[0] if t in vocab]
        if not terms:
            runs[qid] = []
            continue
        scores = retriever.get_scores(terms)
        top = scores.argsort()[::-1][:100]
        runs[qid] = [(documents[i].id, float(scores[i])) for i in top if scores[i] > 0]
    return ir_metrics(runs, bench)["ndcg@10"]


def analyses(devsets: list[Path]) -> list[dict]:
    rows = []
    for folder in devsets:
        texts = [passage(d.title, d.text) for d in read_corpus(folder / "corpus.jsonl")]
        code = language.corpus_languages(texts)[0]
        variants = {"English analysis (before)": Analysis(("en",), False), "its language": Analysis((code,), False),
                    "its language + folding": Analysis((code,), True), "neutral + folding": Analysis((), True)}
        rows.append({"set": str(folder), "language": code,
                     **{name: round(bm25_ndcg(folder, analysis), 4) for name, analysis in variants.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tico", type=Path, help="TICO-19 folder (en-fr.jsonl, en-es.jsonl)")
    parser.add_argument("--devsets", type=Path, nargs="*", default=[], help="BEIR folders (corpus, queries, qrels)")
    args = parser.parse_args()
    results = {}
    if args.tico:
        results["detection"] = detection(args.tico)
        print("Language detection, TICO-19 (8,509 sentences)")
        print_table(results["detection"], list(results["detection"][0]))
    if args.devsets:
        results["analysis"] = analyses(args.devsets)
        print("\nBM25 NDCG@10 by analysis (documents whole, title + text)")
        columns = list(dict.fromkeys(key for row in results["analysis"] for key in row))
        print_table(results["analysis"], columns)
    write_results("language", results)


if __name__ == "__main__":
    main()
