"""Matryoshka fine-tuning: MultipleNegativesRankingLoss (or its cached variant) inside MatryoshkaLoss.

Defaults are the reference experiment's: 1 epoch, batch 4, gradient accumulation 16, lr 2e-5,
bf16 where the device supports it. Batches never hold the same text twice (NO_DUPLICATES), so
an answer shared by many questions is never its own in-batch negative.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medsearch.documents.corpus import json_records, read_text
from medsearch.encoding.encoder import Encoder
from medsearch.errors import (
    BadInputError,
    MismatchError,
    MissingExtraError,
    NotFoundError,
)

PAIR_COLUMNS = (("anchor", "positive"), ("question", "answer"))
LOSSES = ("mnrl", "cached-mnrl")
MATRYOSHKA_DIMS = (1024, 768, 512, 256, 128, 64)


def matryoshka_dims(full_dim: int) -> list[int]:
    """The model's own dim, then every reference dim below it: 1024 -> 1024..64, 384 -> 384, 256, 128, 64."""
    return [full_dim] + [d for d in MATRYOSHKA_DIMS if d < full_dim]


def load_pairs(source: str | Path):
    """(anchor, positive) pairs as a `datasets.Dataset`, from .jsonl, .csv or a saved dataset folder."""
    from datasets import Dataset, load_from_disk

    path = Path(source)
    if path.is_dir():
        try:
            dataset = load_from_disk(str(path))
        except Exception as err:
            raise BadInputError(f"{path}: not a saved `datasets` dataset ({type(err).__name__})") from None
        if hasattr(dataset, "keys"):  # a DatasetDict: train on its train split
            if "train" not in dataset:
                raise BadInputError(f"{path}: a DatasetDict without a 'train' split")
            dataset = dataset["train"]
        return _rename_pair_columns(dataset, path.name)
    if not path.is_file():
        raise NotFoundError(f"training pairs not found: {path}")
    content = read_text(path)
    if path.suffix.lower() == ".jsonl":
        records = list(json_records(content, path.name))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(content))
        records = [(f"{path.name}:{reader.line_num}", row) for row in reader]
    else:
        raise BadInputError(f"{path}: training pairs must be .jsonl, .csv or a saved dataset folder")
    anchors, positives = [], []
    for origin, record in records:
        pair = next(((record[a], record[p]) for a, p in PAIR_COLUMNS if a in record and p in record), None)
        if pair is None:
            raise BadInputError(f"{origin}: a pair needs 'anchor' and 'positive' (or 'question' and 'answer')")
        if not all(isinstance(x, str) and x.strip() for x in pair):
            raise BadInputError(f"{origin}: empty anchor or positive")
        anchors.append(pair[0].strip())
        positives.append(pair[1].strip())
    if len(anchors) < 2:
        raise BadInputError(f"{path}: need at least 2 training pairs, found {len(anchors)}")
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def _rename_pair_columns(dataset, name: str):
    for anchor, positive in PAIR_COLUMNS:
        if anchor in dataset.column_names and positive in dataset.column_names:
            dataset = dataset.select_columns([anchor, positive])
            return dataset.rename_columns({anchor: "anchor", positive: "positive"}) if anchor != "anchor" else dataset
    raise BadInputError(f"{name}: columns {dataset.column_names} have no anchor/positive or question/answer pair")


@dataclass
class TrainSettings:
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 16
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    bf16: str = "auto"  # auto | yes | no
    loss: str = "mnrl"  # mnrl | cached-mnrl
    mini_batch_size: int = 16  # cached-mnrl only: texts per forward pass
    dims: list[int] | None = None
    dim_weights: list[float] | None = None  # MatryoshkaLoss weight per dim (same order as dims)
    max_steps: int = -1
    save_steps: int = 25  # checkpoint interval (optimiser steps), for --resume
    seed: int = 42
    report_to: str = "none"
    device: str | None = None
    hard_negatives: int = 0  # > 0: that many negatives per pair, mined by the base model, beside the in-batch ones

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise BadInputError(f"unknown loss '{self.loss}' (choose from: {', '.join(LOSSES)})")
        if self.bf16 not in ("auto", "yes", "no"):
            raise BadInputError(f"bf16 must be auto, yes or no; got '{self.bf16}'")
        if self.batch_size < 2:
            raise BadInputError("batch size must be at least 2: in-batch negatives need another pair")
        if self.hard_negatives < 0:
            raise BadInputError(f"hard negatives must be 0 or more; got {self.hard_negatives}")
        if self.report_to not in ("none", "wandb", "tensorboard"):
            raise BadInputError(f"report_to must be none, wandb or tensorboard; got '{self.report_to}'")


@dataclass
class TrainResult:
    output: str
    settings: dict
    examples: int
    steps: int
    seconds: float
    examples_per_second: float
    peak_memory_mb: float
    bf16: bool
    device: str
    final_loss: float | None = None
    eval_history: list[dict] = field(default_factory=list)


def use_bf16(setting: str, device: str) -> bool:
    import torch

    supported = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "yes" and not supported:
        raise BadInputError(f"bf16 is not supported on {device}; use bf16 auto or no")
    return setting != "no" and supported


def peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(
    pairs: str | Path,
    output: str | Path,
    base: str = "default",
    settings: TrainSettings | None = None,
    eval_pairs: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune `base` on (anchor, positive) pairs and save a sentence-transformers folder at `output`."""
    try:
        import accelerate  # noqa: F401  (the transformers Trainer needs it)
    except ImportError:
        raise MissingExtraError("training needs the 'train' extra: pip install 'medsearch[train]'", "train") from None
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    settings = settings or TrainSettings()
    settings.validate()
    dataset = load_pairs(pairs)
    encoder = Encoder(base, device=settings.device)
    model = encoder.model
    device = str(model.device)
    dims = settings.dims or matryoshka_dims(encoder.dim)
    if max(dims) > encoder.dim or min(dims) < 1:
        raise BadInputError(f"Matryoshka dims must be between 1 and the model's {encoder.dim}; got {dims}")
    bf16 = use_bf16(settings.bf16, device)
    if settings.hard_negatives:
        dataset = mine_negatives(dataset, encoder, settings.hard_negatives)

    if settings.loss == "cached-mnrl":
        inner = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size)
    else:
        inner = losses.MultipleNegativesRankingLoss(model)
    if settings.dim_weights is not None and len(settings.dim_weights) != len(dims):
        raise BadInputError(f"give one weight per Matryoshka dim ({len(dims)}: {dims}); got {settings.dim_weights}")
    order = sorted(range(len(dims)), key=lambda i: -dims[i])
    loss = losses.MatryoshkaLoss(
        model, inner, matryoshka_dims=[dims[i] for i in order],
        matryoshka_weights=None if settings.dim_weights is None else [settings.dim_weights[i] for i in order],
    )

    evaluator = None
    eval_dataset = None
    if eval_pairs:
        eval_dataset = load_pairs(eval_pairs)
        evaluator = pairs_evaluator(eval_dataset, dims, encoder)
    out = Path(output)
    checkpoints = out / "checkpoints"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=max(settings.batch_size, 16),
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        warmup_ratio=settings.warmup_ratio,
        lr_scheduler_type="linear",
        bf16=bf16,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="epoch" if evaluator else "no",
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        logging_steps=10,
        report_to=[] if settings.report_to == "none" else [settings.report_to],
        disable_tqdm=not progress,
        seed=settings.seed,
        use_cpu=device == "cpu",
        prompts=_prompts(encoder),
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, loss=loss, evaluator=evaluator
    )
    started = time.perf_counter()
    resume_from = resume and any(checkpoints.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume_from else None)
    seconds = time.perf_counter() - started
    if encoder.profile.query_prefix or encoder.profile.passage_prefix:  # the saved model keeps its prefixes
        model.prompts = {"query": encoder.profile.query_prefix, "document": encoder.profile.passage_prefix}
    model.save(str(out))
    shutil.rmtree(checkpoints, ignore_errors=True)  # only an interrupted run needs them (--resume)
    history = trainer.state.log_history
    losses_logged = [h["loss"] for h in history if "loss" in h]
    per_step = settings.batch_size * settings.grad_accum
    examples = trainer.state.global_step * per_step if settings.max_steps > 0 else len(dataset) * settings.epochs
    result = TrainResult(
        output=str(out),
        settings={**asdict(settings), "dims": sorted(dims, reverse=True), "base": base, "pairs": str(pairs)},
        examples=int(examples),
        steps=trainer.state.global_step,
        seconds=round(seconds, 1),
        examples_per_second=round(examples / seconds, 2),
        peak_memory_mb=round(peak_memory_mb(device), 1),
        bf16=bf16,
        device=device,
        final_loss=losses_logged[-1] if losses_logged else None,
        eval_history=[h for h in history if any(k.startswith("eval_") for k in h)],
    )
    (out / "medsearch_training.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def mine_negatives(dataset, encoder: Encoder, count: int, margin: float = 0.05, output_format: str = "n-tuple"):
    """(anchor, positive, negative_1..count) rows (or `output_format`, as mine_hard_negatives takes
    it: labeled pairs or lists for a cross-encoder's losses): for each pair, the answers the model ranks highest
    among the pairs' own answers, skipping any that scores above (1 - margin) x the positive's score
    (a likely unjudged positive: MedQuAD repeats answers across questions)."""
    from sentence_transformers.util import mine_hard_negatives

    return mine_hard_negatives(
        dataset, encoder.model, anchor_column_name="anchor", positive_column_name="positive",
        corpus=list(dict.fromkeys(dataset["positive"])), num_negatives=count, relative_margin=margin or None,
        range_max=max(30, 4 * count), sampling_strategy="top", output_format=output_format, batch_size=64, use_faiss=True,
        verbose=False, query_prompt=encoder.profile.query_prefix or None, corpus_prompt=encoder.profile.passage_prefix or None)


def merge_models(first: str, second: str, output: str | Path, weight: float = 0.5) -> dict:
    """Weight-space average of two fine-tunes of one base model (a "model soup", Wortsman et al.
    2022): every parameter becomes (1 - weight) * first + weight * second, via torch.lerp.

    Used to combine a model tuned for one kind of question with one tuned for another, where
    each alone loses quality on the other's kind. Both must have the same architecture.
    """
    import torch

    if not 0.0 <= weight <= 1.0:
        raise BadInputError(f"the merge weight must be between 0 and 1; got {weight}")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out} already exists and is not empty: choose another output folder")
    a, b = Encoder(first, device="cpu"), Encoder(second, device="cpu")
    params_a, params_b = a.model.state_dict(), b.model.state_dict()
    if params_a.keys() != params_b.keys() or any(params_a[k].shape != params_b[k].shape for k in params_a):
        raise MismatchError(f"cannot merge {first} and {second}: they are not the same architecture")
    info = {"first": first, "second": second, "weight": weight,
            "first_fingerprint": a.fingerprint, "second_fingerprint": b.fingerprint}  # before `a` is overwritten
    with torch.no_grad():
        for name, value in params_a.items():
            if value.is_floating_point():
                value.copy_(torch.lerp(value, params_b[name].to(value.dtype), weight))
    a.model.save(str(out))
    (out / "medsearch_merge.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _prompts(encoder: Encoder) -> dict[str, str] | None:
    """Column -> prefix, so an e5 model trains with `query: ` / `passage: ` as it is used."""
    profile = encoder.profile
    if not (profile.query_prefix or profile.passage_prefix):
        return None
    return {"anchor": profile.query_prefix, "positive": profile.passage_prefix}


def pairs_evaluator(dataset, dims: list[int], encoder: Encoder):
    """One InformationRetrievalEvaluator per Matryoshka dim over held-out pairs (corpus = their positives)."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
        SequentialEvaluator,
    )

    answers: dict[str, str] = {}
    for text in dataset["positive"]:
        answers.setdefault(text, f"d{len(answers)}")
    queries = {f"q{i}": a for i, a in enumerate(dataset["anchor"])}
    relevant = {f"q{i}": {answers[p]} for i, p in enumerate(dataset["positive"])}
    corpus = {doc_id: text for text, doc_id in answers.items()}
    evaluators = [
        InformationRetrievalEvaluator(
            queries, corpus, relevant, name=f"dim_{d}", truncate_dim=d, write_csv=False,
            query_prompt=encoder.profile.query_prefix or None, corpus_prompt=encoder.profile.passage_prefix or None,
        )
        for d in sorted(dims, reverse=True)
    ]
    return SequentialEvaluator(evaluators, main_score_function=lambda scores: scores[-1])


CARD_MARKER = "<!-- medsearch -->"


def write_model_card(model_dir: str | Path, result: TrainResult, evaluation_markdown: str | None = None) -> Path:
    """Add (or replace) a medsearch section in the model folder's README.md: settings, cost, evaluation."""
    card = Path(model_dir) / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    text = text.split(CARD_MARKER)[0].rstrip()
    s = result.settings
    lines = [
        CARD_MARKER,
        "## medsearch fine-tuning",
        "",
        f"Base model `{s['base']}`, pairs `{s['pairs']}` ({result.examples} examples), "
        f"MatryoshkaLoss over {'CachedMultipleNegativesRankingLoss' if s['loss'] == 'cached-mnrl' else 'MultipleNegativesRankingLoss'} "
        f"at dims {', '.join(map(str, s['dims']))}, batch sampler NO_DUPLICATES.",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {s[key]} |" for key in ("epochs", "batch_size", "grad_accum", "lr", "warmup_ratio", "loss", "mini_batch_size", "dim_weights", "max_steps", "seed")),
        f"| bf16 | {result.bf16} |",
        f"| device | {result.device} |",
        f"| steps | {result.steps} |",
        f"| train time | {result.seconds} s ({result.examples_per_second} examples/s) |",
        f"| peak memory | {result.peak_memory_mb} MB |",
        f"| final loss | {result.final_loss} |",
        "",
    ]
    if evaluation_markdown:
        lines += ["### Evaluation", "", evaluation_markdown]
    card.write_text(f"{text}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return card
