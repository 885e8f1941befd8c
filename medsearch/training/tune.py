"""`medsearch tune`: the shipped fine-tuning recipe as one resumable command.

From a MedQuAD folder written by `medsearch data medquad`:
  1. pairs      the train split's question-answer sample, and the same plus the symptom-description
                pairs (people describe symptoms; MedQuAD's questions all name the condition)
  2. qa         Matryoshka fine-tune on the question-answer pairs (cached MNRL, batch 64)
  3. symptoms   the same on question-answer + symptom pairs
  4. soup       the weight average of the two (each alone loses on the other's kind of question)
  5. final      the soup interpolated with the base model (`base_weight`; WiSE-FT, Wortsman et
                al. 2022: keeps the base's robustness on questions unlike the training data)
  6. fusion     the tuned model's hybrid fusion weight, chosen on the dev split (hybrid, fast tier)
                and kept in the model folder (encoder.SEARCH_DEFAULTS_FILE): its indexes fuse so
  7. reranker   a cross-encoder trained from the tuned model (reranker_training.py) into
                OUT/reranker, on by default only if it beats the tuned model's hybrid on dev
  8. eval       base vs tuned on the data's test split (and any other sets), into the model card

Every step writes into `OUT.work/` and is skipped when a rerun finds it complete; an interrupted
training resumes from its last checkpoint. A rerun with other settings redoes only the steps
they affect (a new --base-weight: the final merge and the evaluation). The tuned model lands at
OUT only when all succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from medsearch.encoding.encoder import SEARCH_DEFAULTS_FILE
from medsearch.encoding.loading import RERANKER_DIR
from medsearch.errors import BadInputError
from medsearch.training.finetune import TrainSettings
from medsearch.training.reranker import RerankerSettings

STEPS = ("pairs", "qa", "symptoms", "soup", "final", "fusion", "reranker", "eval")
# The settings each step adds to those of the steps before it: a rerun with other settings redoes
# the first step whose settings changed and everything after it, and keeps the steps before.
STEP_SETTINGS = {"pairs": ("data", "sample", "symptom_pairs"), "qa": ("base", "train"), "symptoms": (),
                 "soup": ("soup_weight",), "final": ("base_weight",), "fusion": ("fusion_split", "fusion_weights"),
                 "reranker": ("reranker",), "eval": ("eval_split", "eval_data")}
STEP_OUTPUTS = {"pairs": ("pairs-qa.jsonl", "pairs-qa-symptoms.jsonl"), "qa": ("qa",), "symptoms": ("symptoms",),
                "soup": ("soup",), "final": ("final",), "fusion": ("fusion.json",), "reranker": ("reranker", "reranker.work"),
                "eval": ("eval.json",)}
# The dense weights the fusion step tries (convex fusion; the base model's default is 0.7)
FUSION_WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class TuneSettings:
    base: str = "default"
    sample: str = "2182"  # pairs file: train_pairs_<sample>.jsonl, or "all" for train_pairs.jsonl
    symptom_pairs: bool = True
    soup_weight: float = 0.5  # share of the symptoms model in the soup
    base_weight: float = 0.25  # share of the base model in the final one (chosen on dev: docs/guides/quality.md)
    eval_split: str = "test"
    eval_data: list[str] = field(default_factory=list)  # more BEIR folders, FOLDER or FOLDER:SPLIT
    fusion_split: str = "dev"
    fusion_weights: tuple[float, ...] = FUSION_WEIGHTS
    reranker: RerankerSettings | None = field(default_factory=RerankerSettings)  # None: no re-ranker step
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        loss="cached-mnrl", batch_size=64, grad_accum=1, mini_batch_size=16, epochs=1.0, lr=2e-5))

    def check(self, data: Path) -> None:
        self.train.validate()
        for name, value in (("soup weight", self.soup_weight), ("base weight", self.base_weight)):
            if not 0 <= value <= 1:
                raise BadInputError(f"the {name} must be between 0 and 1; got {value}")
        if not (data / "corpus.jsonl").is_file() or not (data / "queries.jsonl").is_file():
            raise BadInputError(f"{data} is not a MedQuAD folder (no corpus.jsonl / queries.jsonl): "
                                "write one with medsearch data medquad")
        if not self.pairs_file(data).is_file():
            raise BadInputError(f"{self.pairs_file(data)} not found: the pairs sample comes from medsearch data medquad")
        if self.symptom_pairs and not (data / "symptom_pairs.jsonl").is_file():
            raise BadInputError(f"{data / 'symptom_pairs.jsonl'} not found: it comes from medsearch data medquad")

    def pairs_file(self, data: Path) -> Path:
        return data / ("train_pairs.jsonl" if self.sample == "all" else f"train_pairs_{self.sample}.jsonl")


@dataclass
class TuneReport:
    output: str
    steps: dict[str, str]  # step -> "done" (this run) | "kept" (found complete)
    evaluations: list[dict]


def tune(data_dir: str | Path, out: str | Path, settings: TuneSettings | None = None, *, progress: bool = True,
         log: Callable[[str], None] = print, cache: str | Path = Path("indexes") / "eval") -> TuneReport:
    from medsearch.training.evaluation import evaluate_models
    from medsearch.training.finetune import train

    settings = settings or TuneSettings()
    data, out = Path(data_dir), Path(out)
    settings.check(data)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} already exists and is not empty: choose another output folder")
    work = out.with_name(out.name + ".work")
    recorded = {"data": str(data.resolve()), **asdict(settings)}
    _check_work(work, recorded, log)
    steps: dict[str, str] = {}

    def step(name: str, done: Path, run: Callable[[], None]) -> None:
        if done.exists():
            steps[name] = "kept"
            log(f"[{name}] already done ({done})")
            return
        log(f"[{name}] ...")
        run()
        steps[name] = "done"

    qa_pairs, mixed_pairs = work / "pairs-qa.jsonl", work / "pairs-qa-symptoms.jsonl"

    def make_pairs() -> None:
        pairs = settings.pairs_file(data).read_text(encoding="utf-8")
        _atomic_write(qa_pairs, pairs)
        extra = (data / "symptom_pairs.jsonl").read_text(encoding="utf-8") if settings.symptom_pairs else ""
        _atomic_write(mixed_pairs, pairs + extra)

    step("pairs", mixed_pairs, make_pairs)
    step("qa", work / "qa" / "medsearch_training.json",
         lambda: train(qa_pairs, work / "qa", settings.base, settings.train, resume=True, progress=progress))
    if settings.symptom_pairs:
        step("symptoms", work / "symptoms" / "medsearch_training.json",
             lambda: train(mixed_pairs, work / "symptoms", settings.base, settings.train, resume=True, progress=progress))
        step("soup", work / "soup" / "medsearch_merge.json",
             lambda: _fresh_merge(str(work / "qa"), str(work / "symptoms"), work / "soup", settings.soup_weight))
        tuned = work / "soup"
    else:
        tuned = work / "qa"
    # final = (1 - base_weight) * tuned + base_weight * base
    step("final", work / "final" / "medsearch_merge.json",
         lambda: _fresh_merge(str(tuned), settings.base, work / "final", settings.base_weight))

    def choose_fusion() -> None:
        chosen = choose_fusion_weight(data, str(work / "final"), settings.fusion_split or None, settings.fusion_weights,
                                      cache, progress, settings.train.device)
        _atomic_write(work / "final" / SEARCH_DEFAULTS_FILE, json.dumps(chosen, indent=2) + "\n")
        _atomic_write(work / "fusion.json", json.dumps(chosen, indent=2) + "\n")
        log(f"[fusion] dense weight {chosen['fusion']['weight']} (NDCG@10 on {chosen['chosen_on']}: "
            + ", ".join(f"{r['weight']}: {r['ndcg@10']:.4f}" for r in chosen["rows"]) + ")")

    step("fusion", work / "fusion.json", choose_fusion)
    if settings.reranker is not None:
        from medsearch.training.reranker import train_reranker

        reranker_settings = replace(settings.reranker, base=str(work / "final"), device=settings.train.device,
                                    max_steps=settings.train.max_steps, sample=settings.sample, runtime="torch",
                                    dev_split=settings.fusion_split)
        step("reranker", work / "reranker" / "medsearch_reranker.json",
             lambda: train_reranker(data, work / "reranker", reranker_settings, progress=progress, log=log, cache=cache))

    evaluations: list[dict] = []

    def evaluate() -> None:
        sets = [f"{data}:{settings.eval_split}", *settings.eval_data]
        sections = []
        for spec in sets:
            folder, split = _split_spec(spec)
            report = evaluate_models(folder, [settings.base, str(work / "final")], split=split or None, cache=cache,
                                     progress=progress, device=settings.train.device)
            evaluations.append({"data": spec, "comparison": report.comparison()})
            sections.append(f"#### {Path(folder).name} ({split or 'all'})\n\n{report.to_markdown()}")
        (work / "eval.json").write_text(json.dumps(evaluations, indent=2) + "\n")
        _write_card(work, settings, data, "\n".join(sections).replace(str(work / "final"), str(out)))

    step("eval", work / "eval.json", evaluate)
    if not evaluations:
        evaluations = json.loads((work / "eval.json").read_text())
    if (work / "reranker").is_dir():  # the re-ranker goes with the model (not part of its weights' fingerprint)
        os.replace(work / "reranker", work / "final" / RERANKER_DIR)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(work / "final", out)
    shutil.rmtree(work)
    log(f"tuned model -> {out}")
    return TuneReport(output=str(out), steps=steps, evaluations=evaluations)


def choose_fusion_weight(data: Path, model: str, split: str | None, weights: tuple[float, ...], cache, progress: bool,
                         device: str | None) -> dict:
    """The convex fusion's dense weight with the best NDCG@10 for `model`'s hybrid path (fast tier,
    as queries run by default) on `split` of `data` (ties: the weight nearest the base default).
    Torch encodes, as in the evaluation step, which then finds the same index in `cache`; the model
    loads and the queries are encoded once for every weight."""
    from medsearch.documents.corpus import read_corpus
    from medsearch.encoding.encoder import Encoder
    from medsearch.retrieval.fusion import Fusion
    from medsearch.training.evaluation import (
        cached_searcher,
        ir_metrics,
        load_benchmark,
        search_runs,
    )

    bench = load_benchmark(data, split)
    searcher = cached_searcher(data, read_corpus(data), Encoder(model, device=device), cache, progress)
    qids = list(bench.queries)
    texts = [bench.queries[q] for q in qids]
    vectors = searcher.encoder.encode_queries(texts, progress=progress)
    doc_ids = searcher.index.store.doc_ids()
    rows = []
    for weight in weights:
        run, _ = search_runs(searcher, vectors, texts, qids, doc_ids, 10, mode="hybrid", tier="fast",
                             fusion=Fusion(weight=weight))
        rows.append({"weight": weight, "ndcg@10": round(ir_metrics(run, bench)["ndcg@10"], 4)})
    default = Fusion().weight
    best = max(rows, key=lambda r: (r["ndcg@10"], -abs(r["weight"] - default)))
    return {"fusion": asdict(Fusion(weight=best["weight"])), "chosen_on": f"{data.name}:{split or 'all'}", "rows": rows}


def _split_spec(spec: str) -> tuple[str, str]:
    """FOLDER or FOLDER:SPLIT (a Windows drive letter is not a split)."""
    folder, sep, split = spec.rpartition(":")
    if not sep or "/" in split or "\\" in split or len(folder) <= 1:
        return spec, ""
    return folder, split


def _check_work(work: Path, recorded: dict, log: Callable[[str], None]) -> None:
    """Keep what an earlier run in `work` did with the same settings; remove the steps that
    other settings affect (the first changed step and every step after it)."""
    recorded = json.loads(json.dumps(recorded))  # tuples as lists, as the file holds them
    record = work / "tune.json"
    if record.is_file():
        earlier = json.loads(record.read_text())
        changed = sorted(k for k in set(earlier) | set(recorded) if earlier.get(k) != recorded.get(k))
        if changed:
            first = next(i for i, step in enumerate(STEPS)
                         if set(changed) & {key for s in STEPS[: i + 1] for key in STEP_SETTINGS[s]})
            log(f"settings changed ({', '.join(changed)}): redoing from step {STEPS[first]}")
            for step in STEPS[first:]:
                for name in STEP_OUTPUTS[step]:
                    path = work / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _atomic_write(record, json.dumps(recorded, indent=2) + "\n")


def _fresh_merge(first: str, second: str, target: Path, weight: float) -> None:
    from medsearch.training.finetune import merge_models

    shutil.rmtree(target, ignore_errors=True)  # a merge killed half-way left no marker: start it again
    merge_models(first, second, target, weight=weight)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_card(work: Path, settings: TuneSettings, data: Path, evaluation: str) -> None:
    """The final model's card: the recipe and each training's record, then the evaluation."""
    from medsearch.training.finetune import TrainResult, write_model_card

    trained = [TrainResult(**json.loads((work / name / "medsearch_training.json").read_text()))
               for name in ("qa", "symptoms") if (work / name / "medsearch_training.json").is_file()]
    recipe = (f"`medsearch tune {data}`: base `{settings.base}`, pairs `{settings.pairs_file(data).name}`"
              + (", a second model on those plus `symptom_pairs.jsonl`, their weight average "
                 f"({settings.soup_weight} of the second)" if settings.symptom_pairs else "")
              + f", then {settings.base_weight} of the base model averaged back in.")
    extra = ""
    if (work / "fusion.json").is_file():
        chosen = json.loads((work / "fusion.json").read_text())
        extra += (f"\n\nHybrid fusion for this model: convex, dense weight {chosen['fusion']['weight']} (its indexes use "
                  f"it by default; {SEARCH_DEFAULTS_FILE}), chosen on {chosen['chosen_on']} by NDCG@10 of hybrid search, "
                  "fast tier: " + ", ".join(f"{r['weight']}: {r['ndcg@10']:.4f}" for r in chosen["rows"]) + ".")
    if (work / "reranker" / "medsearch_reranker.json").is_file():
        record = json.loads((work / "reranker" / "medsearch_reranker.json").read_text())
        dev = record.get("dev")
        extra += (f"\n\nRe-ranker (`{RERANKER_DIR}/`, a cross-encoder from this model's weights, {record['settings']['loss']} "
                  f"loss, {record['settings']['negatives']} mined negatives per question, {record['training']['seconds']} s): "
                  + (f"NDCG@10 on {dev['queries']} {dev['split']} queries, hybrid {dev['hybrid']:.4f}, with the top "
                     f"{dev['rerank']} re-ranked {dev['reranked']:.4f}; " if dev else "not evaluated; ")
                  + (f"on by default (top {record['default_rerank']})" if record["default_rerank"] else "off by default")
                  + f" in an index built with `--reranker {RERANKER_DIR}`.")
    write_model_card(work / "final", trained[0], f"{recipe}{extra}\n\n{evaluation}")
    card = work / "final" / "README.md"
    if len(trained) > 1:
        s = trained[1]
        card.write_text(card.read_text() + f"\nSecond model (symptoms): {s.examples} examples, {s.steps} steps, "
                        f"{s.seconds} s ({s.examples_per_second} examples/s).\n")
