"""`glue/train.py`: fine-tune, evaluate and predict one GLUE task, with the seed's flags and outputs.

Flow: parse (stilts.settings declares every flag), check every input up front (flags, data
files, output folder, model config) so a run never dies hours in on a typo, take the output
folder, then hand over to stilts.finetune. Heavy imports wait until the flags are parsed, so
`--help` and flag errors answer at once.
"""
import contextlib
import functools
import logging
import math
import os
import time

from stilts import reporting, run_folder, settings
from stilts.cli import DefaultsOnce, OneLineErrors, report_errors
from stilts.errors import CannotResume, NonFiniteTraining, StiltsError
from stilts.io import check_writable_folder
from stilts.tasks import get_task, resolve_data_dir, run_splits

def build_parser():
    from transformers import HfArgumentParser  # its module alone: well under a second

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    return Parser(settings.GROUPS, allow_abbrev=False, formatter_class=DefaultsOnce,
                  description="Fine-tune, evaluate and predict one GLUE task (the seed's glue/train.py). Every "
                              "flag: docs/cli.md.")


def check_args(args, data_flag="--data_dir"):
    """Every check that needs no model: fail before anything is written or computed. `data_flag`: the
    caller's flag for the data folder (stilts-run's --glue_dir), for the messages."""
    task = get_task(args.task_name, data_dir=args.data_dir)
    if not (args.do_train or args.do_val or args.do_test):
        raise StiltsError("nothing to do: pass at least one of --do_train, --do_val, --do_test")
    check_numbers(args)
    reporting.check_available(args.report_to)
    if args.fp16 and args.bf16:
        raise StiltsError("choose one of --fp16 and --bf16")
    if args.bert_load_mode != "from_pretrained" and not args.bert_load_path:
        raise StiltsError(f"--bert_load_mode {args.bert_load_mode} needs --bert_load_path")
    for flag in ("bert_load_path", "bert_config_json_path", "bert_vocab_path"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise StiltsError(f"{path}: file not found (--{flag})")
    base = settings.base_path_from_args(args.bert_base_path, args.bert_load_args)
    if base and not os.path.exists(base):
        raise StiltsError(f"{base}: base BERT weights not found (a state dict file or a model folder)")

    data_dir = resolve_data_dir(task, args.data_dir)
    asked_by = {"train": "--do_train", "dev": "--do_val", "test": "--do_test"}
    for split_file in splits_of(args, task, data_dir):
        try:
            split_file.task.check_split(split_file.split, split_file.folder)
        except StiltsError as e:
            flag = "--mnli_mm_data_dir" if split_file.key.startswith("mm_") else data_flag
            raise StiltsError(f"{e} (needed by {asked_by[split_file.split]} for {split_file.task.name}); "
                              f"check {flag}") from None
    check_writable_folder(args.output_dir, "--output_dir")
    if os.path.isdir(args.output_dir) and not args.force_overwrite:
        run_folder.check_empty(args.output_dir)
    if not args.no_features_cache:
        check_writable_folder(settings.features_cache_dir(args), "--features_cache_dir")
    check_max_seq_length(args, task)
    return task, data_dir


def splits_of(args, task, data_dir):
    """The split files the --do_* flags ask for (stilts.finetune reads the same list)."""
    return run_splits(task, data_dir, args.mnli_mm_data_dir, train=args.do_train,
                      dev=args.do_val or args.do_val_history, test=args.do_test)


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
    ("dev_examples_number", lambda v: v is None or v >= 1, "at least 1"),
    ("train_save_every", lambda v: v is None or v >= 1, "at least 1 (steps between checkpoints)"),
    ("logging_steps", lambda v: v >= 1, "at least 1"),
    ("pad_to_multiple_of", lambda v: v is None or v >= 1, "at least 1"),
    ("seed", lambda v: v == -1 or 0 <= v < 2 ** 32, "-1 (draw one) or from 0 to 2**32 - 1"),
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
    """Room for the special tokens and a token of each text, and no more positions than the model has
    (beyond them, training would crash at the first long batch)."""
    positions, layout = model_limits(args.bert_model, args.bert_config_json_path, args.bert_vocab_path,
                                     task.has_pairs)
    if args.max_seq_length < len(layout):
        raise StiltsError(f"--max_seq_length {args.max_seq_length}: {task.name} inputs are {' '.join(layout)}, "
                          f"which needs at least {len(layout)} tokens")
    if args.max_seq_length > positions:
        raise StiltsError(f"--max_seq_length {args.max_seq_length}: {args.bert_model} has position embeddings "
                          f"for {positions} tokens (max_position_embeddings of its config)")


@functools.lru_cache(maxsize=None)
def model_limits(bert_model, config_path, vocab_path, pair):
    """The longest input the model's positions cover, and its input layout with one token per text
    (cached: stilts-run checks every run)."""
    from stilts.modeling import ModelSource, usable_positions

    source = ModelSource(bert_model, config_path, vocab_path)
    return usable_positions(source.config()), source.input_layout(pair)


@report_errors
def main(argv=None):
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.WARNING if args.not_verbose else logging.INFO)
    if args.local_rank >= 0 and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    task, data_dir = check_args(args)
    from stilts import distributed, finetune  # torch and transformers: only once the flags are good

    # One writer per folder: a second run on it is refused while this one lives (rank 0 holds it).
    in_use = (run_folder.locked(args.output_dir, must_be_empty=not args.force_overwrite)
              if distributed.is_main_process() else contextlib.nullcontext())
    with in_use:
        ctx = distributed.init_distributed(no_cuda=args.no_cuda, local_rank=args.local_rank)
        try:
            finetune.run(args, ctx, task, splits_of(args, task, data_dir), started)
        except NonFiniteTraining as e:
            raise StiltsError(f"{e}. Try a lower --learning_rate, or fp32 instead of --fp16/--bf16") from None
        except CannotResume as e:
            advice = (" (saved with --bert_save_mode model_all or model_tunable?); resuming needs one written with "
                      "--bert_save_mode all or tunable") if e.missing else ""
            raise StiltsError(f"--bert_load_mode state_all: {e.describe(lambda name: '--' + name)}{advice}") from None
        finally:
            distributed.shutdown(ctx)


if __name__ == "__main__":
    main()
