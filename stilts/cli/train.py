"""`glue/train.py`: fine-tune, evaluate and predict one GLUE task, with the seed's flags and outputs.

Flow: check every input up front (task, modes, data files, output folder, checkpoint) so a run
never dies hours in on a typo; then model -> features -> train -> save -> dev -> test.
"""
import argparse
import contextlib
import functools
import json
import logging
import math
import os
import random
import sys

import numpy as np
import torch

from stilts import distributed, run_folder
from stilts.checkpoints import base_path_from_args, check_modes, load_weights
from stilts.cli import report_errors
from stilts.errors import StiltsError
from stilts.features import default_cache_dir, load_features, load_tokenizer
from stilts.io import check_writable_folder, write_json, write_logits_csv
from stilts.modeling import ModelSource, build_model, print_trainable_params
from stilts.tasks import get_task, resolve_data_dir
from stilts.trainer import TrainConfig, Trainer

logger = logging.getLogger("stilts")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The seed's flags (zphang/bert_on_stilts glue/train.py), same names and defaults.
    p.add_argument("--data_dir", default=None, help="task folder; default $GLUE_DIR/<official folder name>")
    p.add_argument("--bert_model", required=True,
                   help="bert-base-uncased / bert-large-uncased (config+vocab from $BERT_ALL_DIR), "
                        "a local transformers model folder, or a Hugging Face hub id")
    p.add_argument("--task_name", required=True, help="cola sst mrpc stsb qqp mnli qnli rte wnli snli ax")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--bert_load_path", default=None)
    p.add_argument("--bert_load_mode", default="from_pretrained",
                   help="from_pretrained, model_only, state_model_only, full_model_only, state_full_model, "
                        "state_all (resume), state_adapter")
    p.add_argument("--bert_load_args", default=None, help="the seed's form bert_model_path:FILE (state_adapter)")
    p.add_argument("--bert_config_json_path", default=None)
    p.add_argument("--bert_vocab_path", default=None)
    p.add_argument("--bert_save_mode", default="all", help="all, tunable, model_all, model_tunable")
    p.add_argument("--max_seq_length", default=128, type=int)
    p.add_argument("--do_save", action="store_true")
    p.add_argument("--do_train", action="store_true")
    p.add_argument("--do_val", action="store_true")
    p.add_argument("--do_test", action="store_true")
    p.add_argument("--do_val_history", action="store_true", help="dev metrics after each epoch")
    p.add_argument("--train_examples_number", type=int, default=None, help="train on a random subsample")
    p.add_argument("--train_save_every", type=int, default=None, help="checkpoint every N optimizer steps")
    p.add_argument("--do_lower_case", action="store_true")
    p.add_argument("--train_batch_size", default=32, type=int, help="examples per optimizer step (all processes)")
    p.add_argument("--eval_batch_size", default=32, type=int)
    p.add_argument("--learning_rate", default=5e-5, type=float)
    p.add_argument("--num_train_epochs", default=3.0, type=float)
    p.add_argument("--warmup_proportion", default=0.1, type=float)
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--local_rank", type=int, default=-1, help="set by older launchers; torchrun uses LOCAL_RANK")
    p.add_argument("--seed", type=int, default=-1, help="-1: draw one at random (recorded in args.json)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--fp16", action="store_true", help="float16 autocast with a gradient scaler")
    p.add_argument("--loss_scale", type=float, default=0, help="fp16: 0 = dynamic scaling, > 0 = this fixed scale")
    p.add_argument("--print-trainable-params", action="store_true")
    p.add_argument("--not-verbose", action="store_true")
    p.add_argument("--force-overwrite", action="store_true", help="write into a non-empty --output_dir")
    # Beyond the seed.
    p.add_argument("--bert_base_path", default=None,
                   help="base BERT weights (state dict file or model folder) under a *_tunable or adapter checkpoint")
    p.add_argument("--mnli_mm_data_dir", default=None,
                   help="folder with MNLI dev_mismatched.tsv / test_mismatched.tsv (default: the MNLI folder)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU with AVX512-BF16/AMX, Ampere+ GPUs)")
    p.add_argument("--torch_compile", action="store_true")
    p.add_argument("--pad_to_max_length", action="store_true",
                   help="the seed's fixed padding to --max_seq_length, random batches (slower; for comparison)")
    p.add_argument("--no_group_by_length", action="store_true", help="plain random batches instead of length-grouped")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="global gradient-norm clip; 0 disables")
    p.add_argument("--features_cache_dir", default=None,
                   help="tokenized-features cache (default $STILTS_CACHE_DIR or ~/.cache/stilts)")
    p.add_argument("--no_features_cache", action="store_true")
    return p


def check_args(args):
    """Every check that needs no model: fail before anything is written or computed."""
    task = get_task(args.task_name)
    check_modes(args.bert_load_mode, args.bert_save_mode)
    if not (args.do_train or args.do_val or args.do_test):
        raise StiltsError("nothing to do: pass at least one of --do_train, --do_val, --do_test")
    check_numbers(args)
    if args.fp16 and args.bf16:
        raise StiltsError("choose one of --fp16 and --bf16")
    if args.bert_load_mode != "from_pretrained" and not args.bert_load_path:
        raise StiltsError(f"--bert_load_mode {args.bert_load_mode} needs --bert_load_path")
    for flag in ("bert_load_path", "bert_config_json_path", "bert_vocab_path"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise StiltsError(f"{path}: file not found (--{flag})")
    base = base_path_from_args(args.bert_base_path, args.bert_load_args)
    if base and not os.path.exists(base):
        raise StiltsError(f"{base}: base BERT weights not found (a state dict file or a model folder)")

    data_dir = resolve_data_dir(task, args.data_dir)
    needed = []
    if args.do_train:
        needed.append((task, "train", data_dir, "--do_train"))
    if args.do_val or args.do_val_history:
        needed.append((task, "dev", data_dir, "--do_val"))
    if args.do_test:
        needed.append((task, "test", data_dir, "--do_test"))
    mm_task, mm_dir = None, None
    if task.name == "mnli":
        mm_task, mm_dir = get_task("mnli-mm"), args.mnli_mm_data_dir or data_dir
        needed += [(mm_task, split, mm_dir, flag) for t, split, _, flag in needed if split != "train"]
    for t, split, folder, flag in needed:
        path = t.path(split, folder)
        if not os.path.isfile(path):
            hint = " or --mnli_mm_data_dir" if t.name == "mnli-mm" else ""
            raise StiltsError(f"{path}: file not found (needed by {flag} for {t.name}); "
                              f"point --data_dir{hint} to a folder holding {os.path.basename(path)}")
    check_writable_folder(args.output_dir, "--output_dir")
    if os.path.isdir(args.output_dir) and not args.force_overwrite:
        run_folder.check_empty(args.output_dir)
    if not args.no_features_cache:
        check_writable_folder(args.features_cache_dir or default_cache_dir(), "--features_cache_dir")
    check_max_seq_length(args, task)
    return task, data_dir, mm_task, mm_dir


# Numeric flags and what they must be: a bad value would crash hours in, or silently train otherwise.
NUMBER_RULES = [
    ("learning_rate", lambda v: v > 0, "a number > 0"),
    ("warmup_proportion", lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    ("weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("max_grad_norm", lambda v: v >= 0, "a number >= 0 (0 turns clipping off)"),
    ("loss_scale", lambda v: v >= 0, "a number >= 0 (0: dynamic scaling)"),
    ("train_batch_size", lambda v: v >= 1, "at least 1"),
    ("eval_batch_size", lambda v: v >= 1, "at least 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, "at least 1"),
    ("train_examples_number", lambda v: v is None or v >= 1, "at least 1"),
    ("train_save_every", lambda v: v is None or v >= 1, "at least 1 (steps between checkpoints)"),
]


def check_numbers(args):
    rules = NUMBER_RULES
    if args.do_train:
        rules = rules + [("num_train_epochs", lambda v: v > 0, "a number > 0 with --do_train")]
    for flag, holds, wanted in rules:
        value = getattr(args, flag)
        if not ((value is None or math.isfinite(value)) and holds(value)):
            raise StiltsError(f"--{flag} {value}: must be {wanted}")


def check_max_seq_length(args, task):
    """Room for the special tokens and a word piece of each sentence, and no more positions than
    the model has (beyond them, training would crash at the first long batch)."""
    pair = any(layout.text_b is not None for layout in task.layouts.values())
    least = 5 if pair else 3
    if args.max_seq_length < least:
        layout = "[CLS] a [SEP] b [SEP]" if pair else "[CLS] a [SEP]"
        raise StiltsError(f"--max_seq_length {args.max_seq_length}: {task.name} inputs are {layout}, which "
                          f"needs at least {least} tokens")
    positions = model_positions(args.bert_model, args.bert_config_json_path)
    if args.max_seq_length > positions:
        raise StiltsError(f"--max_seq_length {args.max_seq_length}: {args.bert_model} has position embeddings "
                          f"for {positions} tokens (max_position_embeddings of its config)")


@functools.lru_cache(maxsize=None)
def model_positions(bert_model, config_path):
    """max_position_embeddings of the model's config (cached: stilts-run checks every run)."""
    return ModelSource(bert_model, config_path).config().max_position_embeddings


def set_seed(args, ctx):
    seed = args.seed if args.seed != -1 else int(np.random.randint(0, 2 ** 31 - 1))
    seed = distributed.broadcast_object(ctx, seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    args.seed = seed


def train_config(args):
    return TrainConfig(
        train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_proportion=args.warmup_proportion,
        num_train_epochs=args.num_train_epochs,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        group_by_length=not (args.no_group_by_length or args.pad_to_max_length),
        pad_to_max_length=args.pad_to_max_length,
        max_seq_length=args.max_seq_length,
        precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        loss_scale=args.loss_scale,
        torch_compile=args.torch_compile,
        save_every=args.train_save_every or 0,
        save_mode=args.bert_save_mode,
        verbose=not args.not_verbose,
    )


@report_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.WARNING if args.not_verbose else logging.INFO)
    if args.local_rank >= 0 and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    task, data_dir, mm_task, mm_dir = check_args(args)
    # One writer per folder: a second run on it is refused while this one lives (rank 0 holds it).
    in_use = (run_folder.locked(args.output_dir, must_be_empty=not args.force_overwrite)
              if distributed.is_main_process() else contextlib.nullcontext())
    with in_use:
        ctx = distributed.init_distributed(no_cuda=args.no_cuda, local_rank=args.local_rank)
        try:
            run(args, ctx, task, data_dir, mm_task, mm_dir)
        finally:
            distributed.shutdown(ctx)


def run(args, ctx, task, data_dir, mm_task, mm_dir):
    seed_given = args.seed != -1
    set_seed(args, ctx)
    source = ModelSource(args.bert_model, args.bert_config_json_path, args.bert_vocab_path)
    tokenizer = load_tokenizer(source.vocab(), args.do_lower_case)
    model = build_model(source.config(), task)
    pretrained = source.pretrained_encoder_state() if args.bert_load_mode == "from_pretrained" else None
    checkpoint = load_weights(model, args.bert_load_mode, args.bert_load_path,
                              base_path_from_args(args.bert_base_path, args.bert_load_args), pretrained)
    if args.bert_load_mode == "state_all" and not seed_given and "train_state" in checkpoint:
        args.seed = checkpoint["train_state"]["seed"]  # resuming without --seed: the run's own data order
        set_seed(args, ctx)
    if args.print_trainable_params:
        print_trainable_params(model)
    if args.not_verbose:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    else:
        for key, value in vars(args).items():
            print(f"  {key}: {value}")

    splits = load_splits(args, task, data_dir, mm_task, mm_dir, tokenizer)
    # Every input has now been read and checked: only from here on is anything written, and
    # run_status.json says whether the folder's outputs are all this run's.
    with run_folder.recording(args.output_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            write_json(os.path.join(args.output_dir, "args.json"), vars(args))
        write_outputs(args, ctx, task, model, checkpoint, splits, mm_task)
    sys.stdout.flush()


def write_outputs(args, ctx, task, model, checkpoint, splits, mm_task):
    """Train, save, score dev and predict test, as the --do_* flags ask."""
    trainer = Trainer(model, task, train_config(args), ctx, args.output_dir, vars(args))
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731

    if args.do_train:
        resume = checkpoint if args.bert_load_mode == "state_all" else None
        history = trainer.train(splits["train"], splits.get("dev") if args.do_val_history else None, resume=resume)
        if ctx.is_main:
            note = ", dev evaluations included" if args.do_val_history else ""
            print(f"trained {trainer.train_examples} examples in {trainer.train_seconds:.1f} s "
                  f"({trainer.train_examples / trainer.train_seconds:.1f} examples/s{note})")
        if args.do_val_history and ctx.is_main:
            write_json(out("val_metrics_history.json"), history)

    if args.do_save:
        trainer.save(out("all_state.p"), args.bert_save_mode)

    if args.do_val:
        result = trainer.validate(splits["dev"])
        metrics = dict(result["metrics"])
        if ctx.is_main:
            write_logits_csv(out("val_preds.csv"), result["logits"])
        if mm_task is not None:
            mm_result = trainer.validate(splits["mm_dev"], task=mm_task)
            metrics.update({"mm-" + k: v for k, v in mm_result["metrics"].items()})
            if ctx.is_main:
                write_logits_csv(out("mm_val_preds.csv"), mm_result["logits"])
        report = {"loss": result["loss"], "metrics": metrics}
        if ctx.is_main:
            write_json(out("val_metrics.json"), report)
            print(json.dumps(report, indent=2))

    if args.do_test:
        logits, _ = trainer.predict(splits["test"], desc="Predicting (test)")
        if ctx.is_main:
            write_logits_csv(out("test_preds.csv"), logits)
        if mm_task is not None:
            mm_logits, _ = trainer.predict(splits["mm_test"], desc="Predicting (mm test)")
            if ctx.is_main:
                write_logits_csv(out("mm_test_preds.csv"), mm_logits)


def load_splits(args, task, data_dir, mm_task, mm_dir, tokenizer):
    """Features of every split the run needs (train subsampled if asked), keyed train/dev/test/mm_dev/mm_test."""
    cache_dir = None if args.no_features_cache else (args.features_cache_dir or default_cache_dir())
    wanted = [("train", task, "train", data_dir)] if args.do_train else []
    if args.do_val or args.do_val_history:
        wanted.append(("dev", task, "dev", data_dir))
    if args.do_test:
        wanted.append(("test", task, "test", data_dir))
    if mm_task is not None:
        wanted += [("mm_" + key, mm_task, split, mm_dir) for key, _, split, _ in wanted if key != "train"]
    splits = {key: load_features(t, split, folder, tokenizer, args.max_seq_length, cache_dir)
              for key, t, split, folder in wanted}
    if args.do_train and args.train_examples_number is not None:
        n = len(splits["train"])
        if not 0 < args.train_examples_number <= n:
            raise StiltsError(f"--train_examples_number {args.train_examples_number}: the train set has {n} examples")
        picked = np.random.default_rng(args.seed).choice(n, args.train_examples_number, replace=False)
        splits["train"] = splits["train"].subset(np.sort(picked))
    return splits
