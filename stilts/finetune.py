"""One fine-tuning run, as glue/train.py's checked flags ask: model, features, training, outputs.

The command line (stilts/cli/train.py, with stilts/run_settings.py) has already checked every flag
and file and holds the output folder; here the model is built, every split is read (so bad data stops the run before
anything is written), and only then are args.json and the outputs written, under
run_status.json's record of how the run ends.
"""
import contextlib
import json
import os
import random
import sys
import time

import numpy as np
import torch

from stilts import distributed, pace, reporting, run_folder
from stilts.checkpoints import HEAD_KEEPING_MODES, load_weights
from stilts.errors import StiltsError
from stilts.features import load_features
from stilts.io import write_csv, write_json, write_logits_csv
from stilts.modeling import ModelSource, base_weights, build_model, print_trainable_params, warn_if_fp16_overflows
from stilts.settings import TrainSettings, base_path_from_args, checkpoint_name, features_cache_dir
from stilts.trainer import Trainer


def set_seed(args, ctx):
    seed = args.seed if args.seed != -1 else int(np.random.randint(0, 2 ** 31 - 1))
    seed = distributed.broadcast_object(ctx, seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    args.seed = seed


def run(args, ctx, task, split_files, started=None):
    """`started`: the command's time.monotonic() at its start, for the run's recorded pace."""
    started = time.monotonic() if started is None else started
    seed_given = args.seed != -1
    set_seed(args, ctx)
    from transformers.utils import logging as hf_logging
    if args.not_verbose:  # before any model is loaded: transformers reports loading with warnings and a bar
        hf_logging.set_verbosity_error()
    if args.not_verbose or not sys.stderr.isatty():  # a bar's updates in a log file are noise
        hf_logging.disable_progress_bar()
    source = ModelSource(args.bert_model, args.bert_config_json_path, args.bert_vocab_path)
    lower_case, why = source.casing(args.do_lower_case)
    if ctx.is_main and not args.not_verbose:
        print(f"casing: {'lower-cased' if lower_case else 'as written' if lower_case is False else 'the model'}"
              f" ({why})")
    args.do_lower_case = bool(lower_case)  # recorded in args.json as the seed's flag: a bool
    tokenizer = source.tokenizer(args.do_lower_case)
    config = source.config()
    if ctx.is_main:
        warn_if_fp16_overflows(config, args.fp16)
    model = build_model(config, task)
    pretrained = source.pretrained_encoder_state() if args.bert_load_mode == "from_pretrained" else None
    base = base_weights(base_path_from_args(args.bert_base_path, args.bert_load_args))
    checkpoint = load_weights(model, args.bert_load_mode, args.bert_load_path, base, pretrained)
    if args.bert_load_mode in HEAD_KEEPING_MODES:
        check_recorded_labels(task, checkpoint, args.bert_load_path)
    if task.recorded_labels() is not None:  # a task file's labels may come from its data
        args.task_labels = task.recorded_labels()
    if args.bert_load_mode == "state_all" and not seed_given and "train_state" in checkpoint:
        args.seed = checkpoint["train_state"]["seed"]  # resuming without --seed: the run's own data order
        set_seed(args, ctx)
    if args.print_trainable_params:
        print_trainable_params(model)
    if not args.not_verbose:
        for key, value in vars(args).items():
            print(f"  {key}: {value}")

    splits, samples = load_splits(args, split_files, tokenizer)
    trainer = Trainer(model, task, TrainSettings.of(args), ctx, args.output_dir, vars(args),
                      max_seq_length=args.max_seq_length, verbose=not args.not_verbose)
    if args.do_train:  # a checkpoint that cannot resume this run is refused here, before any write
        trainer.prepare(splits["train"], resume=checkpoint if args.bert_load_mode == "state_all" else None)
    # Every input has now been read and checked: only from here on is anything written, and
    # run_status.json says whether the folder's outputs are all this run's.
    inputs = {f.key: f.digest() for f in split_files}  # recorded when the run finishes
    with run_folder.recording(args.output_dir, inputs) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            write_json(os.path.join(args.output_dir, "args.json"), vars(args))
            trainer.reporter = reporting.open_reporter(args.report_to, args.output_dir)
        write_outputs(args, ctx, trainer, splits, split_files, samples)
        if trainer.reporter is not None:
            trainer.reporter.close()
    if ctx.is_main:
        record_pace(args, ctx, trainer, time.monotonic() - started)
    sys.stdout.flush()


def record_pace(args, ctx, trainer, seconds):
    """This run's pace, for stilts-run's estimates (stilts.pace): a run that trained and scored."""
    cache_dir = features_cache_dir(args)
    if not (cache_dir and trainer.train_seconds > 0 and trainer.scored_seconds > 0):
        return
    overhead = max(0.0, seconds - trainer.train_seconds - trainer.scored_seconds)
    with contextlib.suppress(StiltsError):  # a record, not an output: a full disk must not fail the run
        pace.record(cache_dir, pace.key_of(args.bert_model, args.max_seq_length, TrainSettings.of(args).precision,
                                        ctx.device),
                    pace.Pace(trainer.train_examples / trainer.train_seconds,
                              trainer.scored_examples / trainer.scored_seconds, overhead))


def check_recorded_labels(task, checkpoint, path):
    """A head kept from a checkpoint must mean the same labels in the same order: a task file without
    'labels' takes them from its train split, which may have changed since."""
    recorded = ((checkpoint or {}).get("args") or {}).get("task_labels")
    if recorded is not None and task.labels is not None and tuple(recorded) != task.labels:
        raise StiltsError(f"{path}: its run had the labels {', '.join(recorded)}, in that order; this task has "
                          f"{', '.join(task.labels)}: list the checkpoint's labels under 'labels' in the task file")


def write_outputs(args, ctx, trainer, splits, split_files, samples):
    """Train, save, score dev and predict test, as the --do_* flags ask (`samples`: the rows of each
    sampled dev split)."""
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731

    if args.do_train:
        history = trainer.train(splits["train"], splits.get("dev") if args.do_val_history else None)
        if ctx.is_main:
            rows, seen = len(splits["train"]), trainer.train_examples
            print(f"trained {rows} rows x {seen / rows:.3g} epochs ({seen} examples) in {trainer.train_seconds:.1f} s "
                  f"({seen / trainer.train_seconds:.1f} examples/s)")
        if args.do_val_history and ctx.is_main:
            write_json(out("val_metrics_history.json"), history)

    if args.do_save:
        trainer.save(out(checkpoint_name("all_state", args.checkpoint_format)), args.bert_save_mode)

    if args.do_val:  # the task's dev split, then its companions' (MNLI: mm_dev), each with its own outputs
        metrics, companion_scores = {}, {}
        for f in (f for f in split_files if f.split == "dev"):
            if f.prefix:
                result = trainer.validate(splits[f.key], task=f.task)
                scores = {f.prefix.replace("_", "-") + k: v for k, v in result["metrics"].items()}
                companion_scores.update(scores)
            else:
                # With --do_val_history the dev set was just scored after the last epoch, with these weights.
                result = trainer.last_validation if args.do_train and args.do_val_history else None
                result = main = result or trainer.validate(splits["dev"])
                scores = dict(result["metrics"])
            metrics.update(scores)
            if ctx.is_main:
                write_logits_csv(out(f"{f.prefix}val_preds.csv"), result["logits"])
                write_predictions_csv(out(f"{f.prefix}val_predictions.csv"), f, result["logits"],
                                      rows=samples.get(f.key))
        report = {"loss": main["loss"], "metrics": metrics}
        if samples:  # the metrics are a sample's: say of how many rows
            report["dev_sample"] = {key: {"rows": len(rows), "seed": args.seed} for key, rows in samples.items()}
        if ctx.is_main:
            write_json(out("val_metrics.json"), report)
            print(json.dumps(report, indent=2))
        # On the curves already after the last epoch (--do_val_history), but for the companions' scores.
        trainer.report_eval(companion_scores if main is trainer.last_validation
                            else {**metrics, "loss": main["loss"]})

    if args.do_test:
        for f in (f for f in split_files if f.split == "test"):
            logits, _ = trainer.predict(splits[f.key], desc=f"Predicting ({f.key.replace('_', ' ')})")
            if ctx.is_main:
                write_logits_csv(out(f"{f.prefix}test_preds.csv"), logits)
                if f.task.leaderboard is None:  # no leaderboard format: ids and predicted labels
                    write_predictions_csv(out(f"{f.prefix}test_predictions.csv"), f, logits, gold=False)


def write_predictions_csv(path, split_file, logits, gold=True, rows=None):
    """Predictions a person can read (val_predictions.csv, test_predictions.csv), beside the seed's bare
    logits: each example's id (a task file's id column, else its row number; GLUE: the file's index
    column or line), with `gold` its label, the prediction (a label name, a score, a choice number),
    and for classification each label's probability, p_<label>. `rows`: the examples scored, when a
    sample."""
    task = split_file.task
    examples = task.read(split_file.split, split_file.folder)
    if rows is not None:
        examples = [examples[i] for i in rows]
    columns = {"id": [task.example_id(example) for example in examples]}
    if gold:
        columns["label"] = [example.label for example in examples]
    preds = task.predictions(logits)
    columns["prediction"] = preds if task.is_regression else [task.labels[i] for i in preds]
    if not task.is_regression:
        probabilities = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
        columns.update({f"p_{label}": probabilities[:, k] for k, label in enumerate(task.labels)})
    write_csv(path, columns)


def load_splits(args, split_files, tokenizer):
    """Features of every split file, keyed train/dev/test/mm_dev/mm_test, with train subsampled
    (--train_examples_number) and dev sampled (--dev_examples_number) if asked; and the rows each
    sampled dev split kept, {key: sorted indices}."""
    cache_dir = features_cache_dir(args)
    splits = {f.key: load_features(f.task, f.split, f.folder, tokenizer, args.max_seq_length, cache_dir)
              for f in split_files}
    if "train" in splits and args.train_examples_number is not None:
        splits["train"] = splits["train"].subset(sample(len(splits["train"]), args.train_examples_number, args.seed,
                                                        "--train_examples_number", "the train set"))
    samples = {}
    for key in (f.key for f in split_files if f.split == "dev"):
        if args.dev_examples_number is not None:
            samples[key] = sample(len(splits[key]), args.dev_examples_number, args.seed, "--dev_examples_number",
                                  f"the {key.replace('_', ' ')} set")
            splits[key] = splits[key].subset(samples[key])
    return splits, samples


def sample(n, wanted, seed, flag, what):
    """`wanted` of n rows drawn by the run's seed, in file order."""
    if not 0 < wanted <= n:
        raise StiltsError(f"{flag} {wanted}: {what} has {n} examples")
    return np.sort(np.random.default_rng(seed).choice(n, wanted, replace=False))
