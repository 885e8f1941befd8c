"""The commands that make and measure models: train, tune, merge, eval, train-reranker."""

from __future__ import annotations

import json
from pathlib import Path

import click

from medsearch.cli.group import cli
from medsearch.cli.options import device_option, fusion_options
from medsearch.encoding.models import DEFAULT_MODEL
from medsearch.encoding.runtimes.registry import RUNTIMES
from medsearch.errors import BadInputError
from medsearch.retrieval.fusion import MODES
from medsearch.training.finetune import TrainSettings
from medsearch.training.reranker import LOSSES, RerankerSettings
from medsearch.training.tune import TuneSettings


@cli.command()
@click.argument("pairs", type=click.Path())
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model to fine-tune: 'default', a local folder or a hub name.")
@click.option("--out", "out_dir", default="models/medsearch-matryoshka", show_default=True, type=click.Path(file_okay=False), help="Folder for the fine-tuned model.")
@click.option("--dims", default=None, help="Matryoshka dims, comma-separated [default: the model's dim and 768/512/256/128/64 below it].")
@click.option("--dim-weights", default=None, help="MatryoshkaLoss weight per dim, comma-separated, in --dims order [default: all 1].")
@click.option("--epochs", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=2), help="Pairs per batch: in-batch negatives = batch size - 1.")
@click.option("--grad-accum", default=16, show_default=True, type=click.IntRange(min=1), help="Gradient accumulation steps (adds no negatives).")
@click.option("--lr", default=2e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--bf16", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True, help="auto: bf16 where the device supports it (CUDA with bf16).")
@click.option("--loss", type=click.Choice(["mnrl", "cached-mnrl"]), default="mnrl", show_default=True, help="cached-mnrl (GradCache) gives large batches, and so many negatives, in small memory.")
@click.option("--mini-batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="cached-mnrl: texts per forward pass.")
@click.option("--hard-negatives", default=0, show_default=True, type=click.IntRange(min=0), help="Negatives per pair mined by the base model among the pairs' answers, beside the in-batch ones (0: in-batch only).")
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop after this many optimiser steps (-1: run the epochs).")
@click.option("--eval-pairs", type=click.Path(dir_okay=False), default=None, help="Held-out pairs evaluated (NDCG@10 per dim) at the end of each epoch.")
@click.option("--eval-data", type=click.Path(file_okay=False), default=None, help="BEIR folder: after training, compare base and tuned model (as `medsearch eval`) and put the table in the model card.")
@click.option("--eval-split", default="test", show_default=True, help="Query split of --eval-data.")
@click.option("--report-to", type=click.Choice(["none", "wandb", "tensorboard"]), default="none", show_default=True)
@click.option("--save-steps", default=25, show_default=True, type=click.IntRange(min=1), help="Checkpoint every N optimiser steps (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT/checkpoints.")
@click.option("--seed", default=42, show_default=True, type=int)
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train(pairs, base, out_dir, dims, dim_weights, epochs, batch_size, grad_accum, lr, bf16, loss, mini_batch_size,
          hard_negatives, max_steps, eval_pairs, eval_data, eval_split, report_to, save_steps, resume, seed, device, quiet):
    """Fine-tune a model on PAIRS with MatryoshkaLoss over MultipleNegativesRankingLoss.

    PAIRS: a .jsonl or .csv file with anchor/positive (or question/answer) columns, or a folder
    saved with `datasets`. Defaults are the reference settings (1 epoch, batch 4, accumulation 16,
    lr 2e-5, bf16 where supported).
    """
    from medsearch.training.evaluation import evaluate_models
    from medsearch.training.finetune import TrainSettings, write_model_card
    from medsearch.training.finetune import train as train_model

    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, bf16=bf16, loss=loss,
        mini_batch_size=mini_batch_size, dims=_parse_numbers(dims, int, "--dims"), dim_weights=_parse_numbers(dim_weights, float, "--dim-weights"), max_steps=max_steps, save_steps=save_steps, seed=seed,
        report_to=report_to, device=None if device == "auto" else device, hard_negatives=hard_negatives,
    )
    result = train_model(pairs, out_dir, base=base, settings=settings, eval_pairs=eval_pairs, resume=resume, progress=not quiet)
    click.echo(
        f"Trained {result.steps} steps on {result.examples} examples in {result.seconds:.0f}s "
        f"({result.examples_per_second} examples/s, peak memory {result.peak_memory_mb:.0f} MB, bf16 {result.bf16}) -> {out_dir}"
    )
    table = None
    if eval_data:
        report = evaluate_models(eval_data, [base, out_dir], split=eval_split or None, progress=not quiet, device=settings.device)
        click.echo(report.to_text())
        table = report.to_markdown()
    write_model_card(out_dir, result, table)


@cli.command()
@click.argument("data_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the tuned model (must not exist or be empty).")
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model to fine-tune.")
@click.option("--pairs", "sample", default=TuneSettings().sample, show_default=True, help="Training pairs: N for DATA_DIR/train_pairs_N.jsonl, or 'all' for train_pairs.jsonl.")
@click.option("--no-symptom-pairs", is_flag=True, help="One model on the question-answer pairs only (no symptom-description model, no soup).")
@click.option("--soup-weight", default=TuneSettings().soup_weight, show_default=True, type=click.FloatRange(0, 1), help="Share of the symptoms model in the average of the two fine-tunes.")
@click.option("--base-weight", default=TuneSettings().base_weight, show_default=True, type=click.FloatRange(0, 1), help="Share of the base model averaged back into the tuned one.")
@click.option("--batch-size", default=TuneSettings().train.batch_size, show_default=True, type=click.IntRange(min=2))
@click.option("--mini-batch-size", default=TuneSettings().train.mini_batch_size, show_default=True, type=click.IntRange(min=1), help="Texts per forward pass of the cached loss (memory).")
@click.option("--epochs", default=TuneSettings().train.epochs, show_default=True, type=float)
@click.option("--lr", default=TuneSettings().train.lr, show_default=True, type=float)
@click.option("--hard-negatives", default=0, show_default=True, type=click.IntRange(min=0), help="Negatives per pair mined by the base model, beside the in-batch ones (0: in-batch only; docs/guides/quality.md has the measurement).")
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop each training after N optimiser steps (-1: the whole epochs).")
@click.option("--eval-split", default="test", show_default=True, help="Split of DATA_DIR to evaluate base and tuned model on ('' for all).")
@click.option("--eval-data", multiple=True, metavar="DIR[:SPLIT]", help="Another BEIR folder to evaluate on (repeat), e.g. data/nfcorpus:test.")
@click.option("--fusion-split", default="dev", show_default=True, help="Split of DATA_DIR on which the tuned model's hybrid fusion weight is chosen.")
@click.option("--no-reranker", is_flag=True, help="Skip training the tuned model's re-ranker (OUT/reranker).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where evaluation indexes are kept.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def tune(data_dir, out_dir, base, sample, no_symptom_pairs, soup_weight, base_weight, batch_size, mini_batch_size, epochs, lr,
         hard_negatives, max_steps, eval_split, eval_data, fusion_split, no_reranker, cache, device, quiet):
    """The shipped fine-tuning recipe in one command, from a folder written by `medsearch data medquad`.

    \b
    Two Matryoshka fine-tunes of BASE (cached MNRL, batch 64, 1 epoch, lr 2e-5): on the train
    split's question-answer pairs, and on those plus symptom-description pairs; their weight
    average, with --base-weight of the base model averaged back in; the tuned model's hybrid
    fusion weight, chosen on --fusion-split; a re-ranker trained from it (OUT/reranker, as
    `medsearch train-reranker` makes one: on by default only if it beats hybrid on dev); then
    base vs tuned on --eval-split (and each --eval-data), written into the model card (OUT/README.md).
    Resumable: run the same command again after an interruption; finished steps are kept in
    OUT.work/ and a training continues from its last checkpoint.
    """
    from medsearch.training.tune import tune as run_tune

    settings = TuneSettings(
        base=base, sample=sample, symptom_pairs=not no_symptom_pairs, soup_weight=soup_weight, base_weight=base_weight,
        eval_split=eval_split, eval_data=list(eval_data), fusion_split=fusion_split,
        reranker=None if no_reranker else RerankerSettings(),
        train=TrainSettings(loss="cached-mnrl", batch_size=batch_size, grad_accum=1, mini_batch_size=mini_batch_size,
                            epochs=epochs, lr=lr, max_steps=max_steps, device=None if device == "auto" else device,
                            hard_negatives=hard_negatives),
    )
    report = run_tune(data_dir, out_dir, settings, progress=not quiet, log=click.echo, cache=cache)
    for evaluation in report.evaluations:
        rows = {c["row"]: c for c in evaluation["comparison"]}
        full = next(iter(rows))
        line = ", ".join(f"{row} {c.get('improvement', 0):+.4f}" for row, c in rows.items() if row in (full, "fast", "hybrid"))
        click.echo(f"{evaluation['data']}: tuned - base NDCG@10: {line}")


@cli.command()
@click.argument("first")
@click.argument("second")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the merged model (must not exist or be empty).")
@click.option("--weight", default=0.5, show_default=True, type=float, help="Share of SECOND: parameters = (1 - w) FIRST + w SECOND.")
def merge(first, second, out_dir, weight):
    """Average two fine-tunes of the same base model in weight space (a model soup).

    FIRST, SECOND: model folders (or 'default'). E.g. a model tuned on MedQuAD's templated
    questions with one that also saw symptom descriptions: the merge keeps most of each one's gains.
    """
    from medsearch.training.finetune import merge_models

    merge_models(first, second, out_dir, weight)
    click.echo(f"Merged {first} x {1 - weight:g} + {second} x {weight:g} -> {out_dir}")


def _parse_numbers(text: str | None, kind, option: str) -> list | None:
    if not text:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{option} must be comma-separated {'integers' if kind is int else 'numbers'}; got '{text}'") from None


@cli.command(name="eval")
@click.argument("data_dir", type=click.Path())
@click.option("--model", "models", multiple=True, default=[DEFAULT_MODEL], show_default=True, help="Model to evaluate; give it twice (base, tuned) for Initial / Final / Improvement.")
@click.option("--split", default="test", show_default=True, help="Query split ('' for every judged query).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where each model's encoded corpus is kept between runs.")
@click.option("--mode", "modes", default=",".join(MODES), show_default=True, help="Comma-separated modes to report: dense (every Matryoshka dim and the fast tier), lexical, hybrid (full dim and fast tier).")
@fusion_options
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Write the full report as JSON here.")
@click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False), default=None, help="Write the tables as Markdown here.")
@device_option
@click.option("--runtime", "runtimes", default="torch", show_default=True,
              help=f"Comma-separated encoder runtimes ({', '.join(RUNTIMES)}): each encodes the corpus and the queries, one column each (the quality guard of a runtime).")
@click.option("--reranker", default=None, metavar="MODEL",
              help="A cross-encoder (folder or model id): each mode's row again with its top --rerank documents re-ranked (rows '+rr').")
@click.option("--rerank", default=20, show_default=True, type=click.IntRange(min=1), help="With --reranker: documents re-ranked per query.")
@click.option("--sample", default=0, type=click.IntRange(min=0), help="Evaluate a seeded random sample of this many queries (0: all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def evaluate(data_dir, models, split, cache, modes, fusion, json_file, markdown_file, device, runtimes, reranker, rerank,
             sample, quiet):
    """NDCG@10, MRR@10, Recall@10/100 on a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv),
    every query of --split against the whole corpus: dense per Matryoshka dim and the fast tier,
    lexical, hybrid; with --reranker, the same with re-ranking. NDCG@10 uses the qrels' graded
    scores as gains (trec_eval's, via pytrec_eval)."""
    from medsearch.training.evaluation import check_comparison, evaluate_models

    if len(models) > 2:
        raise click.UsageError("give one or two --model options (base, tuned)")
    modes = tuple(m.strip() for m in modes.split(",") if m.strip())
    runtimes = tuple(dict.fromkeys(r.strip() for r in runtimes.split(",") if r.strip()))
    if not runtimes:
        raise click.BadParameter(f"give at least one runtime ({', '.join(RUNTIMES)})", param_hint="'--runtime'")
    try:
        check_comparison(models, runtimes)
    except BadInputError as err:  # the rule is the library's, the flags this command's
        raise click.UsageError(f"{err}: --model twice with one --runtime, or one --model with several runtimes") from None
    report = evaluate_models(data_dir, list(models), split=split or None, cache=cache, modes=modes, fusion=fusion,
                             progress=not quiet, device=device, runtimes=runtimes, reranker=reranker, rerank=rerank,
                             sample=sample)
    click.echo(report.to_text())
    if json_file:
        Path(json_file).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if markdown_file:
        Path(markdown_file).write_text(report.to_markdown())


@cli.command(name="train-reranker")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the re-ranker (must not exist or be empty).")
@click.option("--base", default=RerankerSettings.base, show_default=True, help="Encoder whose transformer the cross-encoder starts from, and that mines the negatives.")
@click.option("--pairs", "sample", default=RerankerSettings.sample, show_default=True, help="Training pairs: N for DATA_DIR/train_pairs_N.jsonl, or 'all' for train_pairs.jsonl.")
@click.option("--negatives", default=RerankerSettings.negatives, show_default=True, type=click.IntRange(min=1), help="Hard negatives mined per question.")
@click.option("--loss", type=click.Choice(LOSSES), default=RerankerSettings.loss, show_default=True,
              help="bce: binary cross-entropy on labelled pairs; lambda: LambdaLoss on each question's list; mnrl: the positive against the negatives and the batch's other answers.")
@click.option("--batch-size", default=RerankerSettings.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=RerankerSettings.epochs, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--lr", default=RerankerSettings.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop after N optimiser steps (-1: the whole epochs).")
@click.option("--rerank", default=RerankerSettings.rerank, show_default=True, type=click.IntRange(min=1), help="Documents re-ranked in the dev evaluation, and by default if it wins there.")
@click.option("--dev-queries", default=RerankerSettings.dev_queries, show_default=True, type=click.IntRange(min=0), help="A seeded sample of the dev split's queries for the evaluation (0: all).")
@click.option("--no-eval", is_flag=True, help="Skip the dev evaluation (the re-ranker is then off by default).")
@click.option("--cache", default="indexes/eval", show_default=True, type=click.Path(file_okay=False), help="Where the evaluation's index is kept.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train_reranker(data_dir, out_dir, base, sample, negatives, loss, batch_size, epochs, lr, max_steps, rerank, dev_queries,
                   no_eval, cache, device, quiet):
    """Train the project's own cross-encoder re-ranker from a folder written by `medsearch data medquad`.

    \b
    Starts from BASE's transformer with a new scoring head (no cross-encoder ships offline), mines
    --negatives hard negatives per train question with BASE, trains with --loss, then measures the
    dev split searched by BASE's default path (hybrid, fast tier) with and without re-ranking the
    top --rerank. The re-ranker is on by default (`medsearch index --reranker OUT`) only if it beat
    hybrid there; its record (OUT/medsearch_reranker.json) keeps the recipe and the figures.
    Resumable: run the same command again after an interruption.
    """
    from medsearch.training.reranker import train_reranker as run

    settings = RerankerSettings(base=base, sample=sample, negatives=negatives, loss=loss, batch_size=batch_size,
                                epochs=epochs, lr=lr, max_steps=max_steps, rerank=rerank, dev_queries=dev_queries,
                                device=None if device == "auto" else device)
    record = run(data_dir, out_dir, settings, progress=not quiet, log=click.echo, cache=cache, evaluate=not no_eval)
    click.echo(f"default re-ranking: {'top ' + str(record['default_rerank']) if record['default_rerank'] else 'off'}"
               f" (medsearch index CORPUS --reranker {out_dir} records it in an index)")
