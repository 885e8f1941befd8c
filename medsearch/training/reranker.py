"""`medsearch train-reranker`: the project's own cross-encoder, trained offline.

No cross-encoder's weights ship with the project, so one is made from the base encoder's
transformer (a new one-logit scoring head) and trained by sentence-transformers' CrossEncoderTrainer:
  1. negatives  hard negatives for each train question, mined by the base encoder over the train
                answers (`sentence_transformers.util.mine_hard_negatives`; a candidate scoring within
                `margin` of the positive is skipped as a likely unjudged positive)
  2. train      the loss on (question, answer, label) pairs or lists (LOSSES)
  3. eval       the data's dev queries searched by the base model's hybrid path, with and without
                the new re-ranker on the top `rerank` documents (evaluation.evaluate_models)
The re-ranker lands at OUT with `medsearch_reranker.json`: its recipe, its figures, and the number
of documents it re-ranks by default: `rerank` when it beat hybrid on dev, else 0 (a re-ranker that
hurts is not on by default; `--rerank N` still asks for it). Steps are kept in `OUT.work/`, so a
rerun after an interruption resumes (training from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from medsearch.errors import BadInputError, MissingExtraError
from medsearch.retrieval.rerank import RECORD

LOSSES = ("bce", "lambda", "mnrl")
# The smallest dev gain over hybrid that turns the re-ranker on by default
MIN_GAIN = 0.0


@dataclass
class RerankerSettings:
    base: str = "default"  # the encoder whose transformer the cross-encoder starts from (and that mines)
    sample: str = "2182"  # pairs file: train_pairs_<sample>.jsonl, or "all" for train_pairs.jsonl
    negatives: int = 3  # mined hard negatives per question
    margin: float = 0.05  # skip candidates scoring above (1 - margin) x the positive's score
    loss: str = "bce"
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    max_length: int = 256
    max_steps: int = -1  # > 0: stop after this many steps (smoke runs)
    save_steps: int = 50
    seed: int = 12
    device: str | None = None
    runtime: str = "auto"  # the encoder's runtime in the dev evaluation (what users get by default)
    rerank: int = 20  # documents re-ranked in the dev evaluation (and by default, if it wins)
    dev_split: str = "dev"
    dev_queries: int = 300  # a seeded sample of the dev split (0: all)

    def check(self, data: Path) -> None:
        if self.loss not in LOSSES:
            raise BadInputError(f"unknown loss '{self.loss}' (choose from: {', '.join(LOSSES)})")
        for name, value, low in (("negatives", self.negatives, 1), ("batch size", self.batch_size, 1),
                                 ("max length", self.max_length, 16), ("rerank", self.rerank, 1),
                                 ("dev queries", self.dev_queries, 0)):
            if value < low:
                raise BadInputError(f"{name} must be at least {low}; got {value}")
        if not 0 <= self.margin < 1:
            raise BadInputError(f"the margin must be in [0, 1); got {self.margin}")
        if self.epochs <= 0 or self.lr <= 0:
            raise BadInputError("epochs and learning rate must be positive")
        for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
            if not (data / name).is_file():
                raise BadInputError(f"{data} has no {name}: give a folder written by medsearch data medquad")
        if not self.pairs_file(data).is_file():
            raise BadInputError(f"{self.pairs_file(data)} not found: the pairs come from medsearch data medquad")

    def pairs_file(self, data: Path) -> Path:
        return data / ("train_pairs.jsonl" if self.sample == "all" else f"train_pairs_{self.sample}.jsonl")


def train_reranker(data_dir: str | Path, out: str | Path, settings: RerankerSettings | None = None, *,
                   progress: bool = True, log: Callable[[str], None] = print,
                   cache: str | Path = Path("indexes") / "eval", evaluate: bool = True) -> dict:
    """Train a cross-encoder on DATA_DIR's train pairs with mined hard negatives; save it at `out`
    with its record (RECORD), which is returned."""
    try:
        import accelerate  # noqa: F401  (the transformers Trainer needs it)
    except ImportError:
        raise MissingExtraError("training needs the 'train' extra: pip install 'medsearch[train]'", "train") from None

    settings = settings or RerankerSettings()
    data, out = Path(data_dir), Path(out).resolve()
    settings.check(data)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} already exists and is not empty: choose another output folder")
    work = out.with_name(out.name + ".work")
    _keep_matching_work(work, {"data": str(data.resolve()), **asdict(settings)}, log)

    mined = work / "negatives"
    if not (mined / "dataset_info.json").is_file():
        log("[negatives] mining hard negatives with the base encoder ...")
        _mine(settings, data).save_to_disk(str(mined))
    else:
        log(f"[negatives] already done ({mined})")
    model_dir = work / "model"
    if not (model_dir / "medsearch_training.json").is_file():
        log(f"[train] {settings.loss} loss, {settings.negatives} negatives per question ...")
        _train(settings, mined, model_dir, progress)
    else:
        log(f"[train] already done ({model_dir})")
    record = {"base": settings.base, "data": str(data), "settings": asdict(settings),
              "training": json.loads((model_dir / "medsearch_training.json").read_text())}
    record["default_rerank"] = 0
    if evaluate:
        log(f"[eval] {settings.dev_split} queries, hybrid with and without re-ranking the top {settings.rerank} ...")
        record["dev"] = _evaluate(settings, data, model_dir, cache, progress)
        gain = record["dev"]["reranked"] - record["dev"]["hybrid"]
        record["default_rerank"] = settings.rerank if gain > MIN_GAIN else 0
        log(f"[eval] NDCG@10 hybrid {record['dev']['hybrid']:.4f}, re-ranked {record['dev']['reranked']:.4f} "
            f"({gain:+.4f}): {'on' if record['default_rerank'] else 'off'} by default")
    (model_dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(model_dir, out)
    shutil.rmtree(work)
    log(f"re-ranker -> {out}")
    return record


def _mine(settings: RerankerSettings, data: Path):
    """The train pairs with mined negatives, as the loss takes them: labeled pairs (bce), labeled
    lists (lambda) or (question, answer, negative 1, ...) rows (mnrl)."""
    from medsearch.encoding.encoder import Encoder
    from medsearch.training.finetune import load_pairs, mine_negatives

    pairs = load_pairs(settings.pairs_file(data))
    encoder = Encoder(settings.base, device=settings.device, runtime="torch")
    output = {"bce": "labeled-pair", "lambda": "labeled-list", "mnrl": "n-tuple"}[settings.loss]
    return mine_negatives(pairs, encoder, settings.negatives, settings.margin, output)


def _train(settings: RerankerSettings, mined: Path, model_dir: Path, progress: bool) -> None:
    import torch
    from datasets import load_from_disk
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )

    from medsearch.encoding.loading import quiet_libraries, resolve_model, select_device
    from medsearch.training.finetune import peak_memory_mb, use_bf16

    quiet_libraries()
    dataset = load_from_disk(str(mined))
    device = select_device(settings.device)
    torch.manual_seed(settings.seed)  # the new scoring head
    model = CrossEncoder(resolve_model(settings.base), num_labels=1, max_length=settings.max_length, device=device)
    if settings.loss == "bce":
        loss = losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(settings.negatives)))
    elif settings.loss == "lambda":
        loss = losses.LambdaLoss(model)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=settings.negatives)
    checkpoints = model_dir.with_name("checkpoints")
    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.lr,
        warmup_ratio=settings.warmup_ratio, bf16=use_bf16("auto", device), save_strategy="steps",
        save_steps=settings.save_steps, save_total_limit=1, logging_steps=10, report_to=[],
        disable_tqdm=not progress, seed=settings.seed, use_cpu=device == "cpu")
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if any(checkpoints.glob("checkpoint-*")) else None)
    seconds = time.perf_counter() - started
    model.save(str(model_dir))
    shutil.rmtree(checkpoints, ignore_errors=True)
    losses_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    (model_dir / "medsearch_training.json").write_text(json.dumps({
        "rows": len(dataset), "steps": trainer.state.global_step, "seconds": round(seconds, 1),
        "device": device, "peak_memory_mb": round(peak_memory_mb(device), 1),
        "final_loss": losses_logged[-1] if losses_logged else None}, indent=2) + "\n")


def _evaluate(settings: RerankerSettings, data: Path, model_dir: Path, cache: str | Path, progress: bool) -> dict:
    """NDCG@10 of the base model's hybrid path (fast tier, as queries run by default) on the dev
    split, and of the same with the new re-ranker over its top `rerank` documents."""
    from medsearch.training.evaluation import evaluate_models

    report = evaluate_models(data, [settings.base], split=settings.dev_split, cache=cache, modes=("hybrid",),
                             progress=progress, device=settings.device, runtimes=(settings.runtime,),
                             reranker=str(model_dir), rerank=settings.rerank, sample=settings.dev_queries,
                             rerank_rows=("hybrid-fast",))
    return {"split": settings.dev_split, "queries": report.queries, "rerank": settings.rerank,
            "hybrid": report.ndcg(settings.base, "hybrid-fast"),
            "reranked": report.ndcg(settings.base, "hybrid-fast+rerank"), "rows": report.rows}


def _keep_matching_work(work: Path, recorded: dict, log: Callable[[str], None]) -> None:
    """Resume from `work` when an earlier run had the same settings; start afresh otherwise."""
    recorded = json.loads(json.dumps(recorded))
    record = work / "settings.json"
    if work.is_dir():
        try:
            earlier = json.loads(record.read_text())
        except (OSError, ValueError):
            earlier = None  # no record, or one cut short: nothing in there can be trusted
        if earlier != recorded:
            log(f"settings changed since the run in {work} (or it left no readable record): starting again")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=2) + "\n")
    os.replace(tmp, record)
