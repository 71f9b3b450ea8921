"""glue/train.py's settings of one run, read and checked: the parser built from stilts.settings, and
every check that needs no model, made before anything is written or computed so that a run never
dies hours in on a typo. stilts-run checks each of its runs with the same two.
"""
import functools
import math
import os

from stilts import reporting, run_folder, settings
from stilts.errors import StiltsError
from stilts.flags import ArgumentParser, DefaultsOnce, OneLineErrors
from stilts.io import check_writable_folder, json_type, read_json
from stilts.tasks import get_task, resolve_data_dir, run_splits


def build_parser():
    from transformers import HfArgumentParser  # its module alone: well under a second

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    parser = Parser(settings.GROUPS, allow_abbrev=False, formatter_class=DefaultsOnce,
                    description="Fine-tune, evaluate and predict one GLUE task (the seed's glue/train.py). Every "
                                "flag: docs/cli.md.")
    parser.add_argument("--args_json", default=None,
                        help="a finished run's args.json: its settings, changed by the flags given after it "
                             "(replay: --args_json RUN/args.json --output_dir RUN2)")
    return parser


# What a run records in args.json beside its flags: decided while it ran, not a setting to replay.
RUN_DECISIONS = {"task_labels"}
# Recorded, but never replayed: a replay must say itself that it may overwrite a folder.
NOT_REPLAYED = {"force_overwrite"}


def parse_args(argv=None):
    """glue/train.py's settings from its flags. With `--args_json RUN/args.json` a finished run's recorded
    settings come first and the other flags given win, so that `glue/train.py --args_json
    RUN/args.json --output_dir RUN2` replays the run exactly (its seed, drawn or not, is recorded)."""
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--args_json")
    given, rest = pre.parse_known_args(argv)
    if given.args_json is None:
        args = build_parser().parse_args(rest)
    else:
        recorded = recorded_flags(given.args_json)
        checking = build_parser()
        checking.error = functools.partial(_refuse, given.args_json)  # a bad record names its file
        checking.parse_args(recorded)
        args = build_parser().parse_args(recorded + rest)
    del args.args_json  # how the settings were given, not one of them: args.json stays the seed's
    return args


def recorded_flags(path):
    """The flags that give back the settings recorded in an args.json."""
    actions = {action.dest: action for action in build_parser()._actions if action.option_strings}
    flags = []
    for key, value in read_json(path, dict).items():
        if key in RUN_DECISIONS or key in NOT_REPLAYED or value is None:
            continue
        if key not in actions or key == "args_json":
            raise StiltsError(f"{path}: {key!r} is not a glue/train.py setting")
        if isinstance(value, (dict, list)):
            raise StiltsError(f"{path}: {key}: expected a single value, found {json_type(value)}")
        flags.append(f"--{key}={str(value).lower() if isinstance(value, bool) else value}")
    return flags


def _refuse(path, message):
    raise StiltsError(f"{path}: {message}")


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
            flag = "--mnli_mm_data_dir" if split_file.prefix else data_flag
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
