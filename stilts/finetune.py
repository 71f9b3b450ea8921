"""One fine-tuning run, as glue/train.py's checked flags ask: model, features, training, outputs.

The command line (stilts/cli/train.py) has already checked every flag and file and holds the
output folder; here the model is built, every split is read (so bad data stops the run before
anything is written), and only then are args.json and the outputs written, under
run_status.json's record of how the run ends.
"""
import contextlib
import json
import os
import random
import sys

import numpy as np
import torch

from stilts import distributed, reporting, run_folder
from stilts.checkpoints import HEAD_KEEPING_MODES, load_weights
from stilts.errors import StiltsError
from stilts.features import load_features
from stilts.io import atomic_write, write_json, write_logits_csv
from stilts.modeling import ModelSource, build_model, print_trainable_params, warn_if_fp16_overflows
from stilts.settings import TrainSettings, base_path_from_args, features_cache_dir
from stilts.tasks import GlueTask, get_task, resolve_data_dir
from stilts.trainer import Trainer


def set_seed(args, ctx):
    seed = args.seed if args.seed != -1 else int(np.random.randint(0, 2 ** 31 - 1))
    seed = distributed.broadcast_object(ctx, seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    args.seed = seed


def run(args, ctx, task, split_files):
    seed_given = args.seed != -1
    set_seed(args, ctx)
    if args.not_verbose:  # before any model is loaded: transformers reports loading with warnings and a bar
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    source = ModelSource(args.bert_model, args.bert_config_json_path, args.bert_vocab_path)
    tokenizer = source.tokenizer(args.do_lower_case)
    config = source.config()
    if ctx.is_main:
        warn_if_fp16_overflows(config, args.fp16)
    model = build_model(config, task)
    pretrained = source.pretrained_encoder_state() if args.bert_load_mode == "from_pretrained" else None
    checkpoint = load_weights(model, args.bert_load_mode, args.bert_load_path,
                              base_path_from_args(args.bert_base_path, args.bert_load_args), pretrained)
    if args.bert_load_mode in HEAD_KEEPING_MODES:
        check_recorded_labels(task, checkpoint, args.bert_load_path)
    if task.labels is not None and not isinstance(task, GlueTask):  # a task file's labels may come from its data
        args.task_labels = list(task.labels)
    if args.bert_load_mode == "state_all" and not seed_given and "train_state" in checkpoint:
        args.seed = checkpoint["train_state"]["seed"]  # resuming without --seed: the run's own data order
        set_seed(args, ctx)
    if args.print_trainable_params:
        print_trainable_params(model)
    if not args.not_verbose:
        for key, value in vars(args).items():
            print(f"  {key}: {value}")

    splits = load_splits(args, split_files, tokenizer)
    trainer = Trainer(model, task, TrainSettings.of(args), ctx, args.output_dir, vars(args),
                      max_seq_length=args.max_seq_length, verbose=not args.not_verbose)
    if args.do_train:  # a checkpoint that cannot resume this run is refused here, before any write
        trainer.prepare(splits["train"], resume=checkpoint if args.bert_load_mode == "state_all" else None)
    # Every input has now been read and checked: only from here on is anything written, and
    # run_status.json says whether the folder's outputs are all this run's.
    with run_folder.recording(args.output_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            write_json(os.path.join(args.output_dir, "args.json"), vars(args))
            trainer.reporter = reporting.open_reporter(args.report_to, args.output_dir)
        write_outputs(args, ctx, trainer, splits)
        if trainer.reporter is not None:
            trainer.reporter.close()
    sys.stdout.flush()


def check_recorded_labels(task, checkpoint, path):
    """A head kept from a checkpoint must mean the same labels in the same order: a task file without
    'labels' takes them from its train split, which may have changed since."""
    recorded = ((checkpoint or {}).get("args") or {}).get("task_labels")
    if recorded is not None and task.labels is not None and tuple(recorded) != task.labels:
        raise StiltsError(f"{path}: its run had the labels {', '.join(recorded)}, in that order; this task has "
                          f"{', '.join(task.labels)}: list the checkpoint's labels under 'labels' in the task file")


def write_outputs(args, ctx, trainer, splits):
    """Train, save, score dev and predict test, as the --do_* flags ask."""
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731

    if args.do_train:
        history = trainer.train(splits["train"], splits.get("dev") if args.do_val_history else None)
        if ctx.is_main:
            note = ", dev evaluations included" if args.do_val_history else ""
            print(f"trained {trainer.train_examples} examples in {trainer.train_seconds:.1f} s "
                  f"({trainer.train_examples / trainer.train_seconds:.1f} examples/s{note})")
        if args.do_val_history and ctx.is_main:
            write_json(out("val_metrics_history.json"), history)

    if args.do_save:
        trainer.save(out("all_state.p"), args.bert_save_mode)

    if args.do_val:
        # With --do_val_history the dev set was just scored after the last epoch, with these weights.
        result = trainer.last_validation if args.do_train and args.do_val_history else None
        result = result or trainer.validate(splits["dev"])
        metrics = dict(result["metrics"])
        if ctx.is_main:
            write_logits_csv(out("val_preds.csv"), result["logits"])
        if "mm_dev" in splits:
            mm_result = trainer.validate(splits["mm_dev"], task=get_task("mnli-mm"))
            metrics.update({"mm-" + k: v for k, v in mm_result["metrics"].items()})
            if ctx.is_main:
                write_logits_csv(out("mm_val_preds.csv"), mm_result["logits"])
        report = {"loss": result["loss"], "metrics": metrics}
        if ctx.is_main:
            write_json(out("val_metrics.json"), report)
            print(json.dumps(report, indent=2))
        scores = {**metrics, "loss": result["loss"]}
        if result is trainer.last_validation:  # on the curves already, but for MNLI's mismatched half
            scores = {k: v for k, v in scores.items() if k.startswith("mm-")}
        trainer.report_eval(scores)

    if args.do_test:
        logits, _ = trainer.predict(splits["test"], desc="Predicting (test)")
        if ctx.is_main:
            write_logits_csv(out("test_preds.csv"), logits)
            if not isinstance(trainer.task, GlueTask):  # no leaderboard format: ids and predicted labels
                write_predictions_csv(out("test_predictions.csv"), trainer.task,
                                      resolve_data_dir(trainer.task, args.data_dir), logits)
        if "mm_test" in splits:
            mm_logits, _ = trainer.predict(splits["mm_test"], desc="Predicting (mm test)")
            if ctx.is_main:
                write_logits_csv(out("mm_test_preds.csv"), mm_logits)


def write_predictions_csv(path, task, data_dir, logits):
    """test_predictions.csv: each test example's id and prediction (label, score or choice number)."""
    import pandas as pd

    ids = [example.guid for example in task.read("test", data_dir)]
    preds = task.predictions(logits)
    values = preds if task.is_regression else [task.labels[i] for i in preds]
    with atomic_write(path) as f:
        pd.DataFrame({"id": ids, "prediction": values}).to_csv(f, index=False)


def load_splits(args, split_files, tokenizer):
    """Features of every split file, keyed train/dev/test/mm_dev/mm_test (train subsampled if asked)."""
    cache_dir = features_cache_dir(args)
    splits = {f.key: load_features(f.task, f.split, f.folder, tokenizer, args.max_seq_length, cache_dir)
              for f in split_files}
    if "train" in splits and args.train_examples_number is not None:
        n = len(splits["train"])
        if not 0 < args.train_examples_number <= n:
            raise StiltsError(f"--train_examples_number {args.train_examples_number}: the train set has {n} examples")
        picked = np.random.default_rng(args.seed).choice(n, args.train_examples_number, replace=False)
        splits["train"] = splits["train"].subset(np.sort(picked))
    return splits
