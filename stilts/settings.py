"""The settings of one fine-tuning run, declared once: glue/train.py's flags with the seed's names
and defaults, their help, and the groups the code reads them in.

The dataclasses build the command line (stilts/run_settings.py, through transformers'
HfArgumentParser: every field a flag, with its help, default and choices; `--a_b` and `--a-b`
both work, so the seed's `--force-overwrite` and `--not-verbose` keep working). The parsed flags stay one flat namespace,
whose dict is the run's args.json as in the seed; `TrainSettings.of(args)` is the part the Trainer
reads, stilts-run checks the flags it passes on with the same parser, and scripts/benchmark.py
starts from the same defaults. Nothing heavy is imported here, so `--help` answers at once.
"""
import dataclasses
import os
from typing import ClassVar, Literal, Optional

from stilts.errors import StiltsError
from stilts.tasks import TASKS

LOAD_MODES = ("from_pretrained", "model_only", "state_model_only", "full_model_only",
              "state_full_model", "state_all", "state_adapter")
SAVE_MODES = ("all", "tunable", "model_all", "model_tunable")
STATE_SAVE_MODES = ("all", "tunable")  # they keep the optimizer and the position: a run resumes from them


def setting(help, default=dataclasses.MISSING, **flag):
    """A field that is a flag: a field without a default is a required flag; `flag` holds more of
    argparse's add_argument options."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclasses.dataclass
class ModelSettings:
    """Which encoder, and which weights go into it (see stilts/checkpoints.py for the modes)."""
    bert_model: str = setting("bert-base-uncased / bert-large-uncased (config and vocab from $BERT_ALL_DIR), "
                              "a local transformers model folder, or a Hugging Face hub id: BERT, RoBERTa, "
                              "XLM-R, DeBERTa-v2/v3, ELECTRA, DistilBERT, ALBERT or ModernBERT")
    bert_load_path: Optional[str] = setting("checkpoint to load (all modes but from_pretrained)", None)
    bert_load_mode: Literal[LOAD_MODES] = setting(
        "from_pretrained: --bert_model's weights, new head; model_only / state_model_only: the encoder of a "
        "state dict / all_state.p, new head (STILTs stage B); full_model_only / state_full_model: the whole "
        "model, head kept; state_all: resume training; state_adapter: adapters over base weights",
        "from_pretrained")
    bert_load_args: Optional[str] = setting("the seed's form bert_model_path:FILE: base weights under "
                                            "--bert_load_mode state_adapter", None)
    bert_config_json_path: Optional[str] = setting("BERT config JSON instead of --bert_model's "
                                                   "(an adapter config, e.g. configs/minilm-adapter.json)", None)
    bert_vocab_path: Optional[str] = setting("BERT: vocab.txt instead of --bert_model's", None)
    bert_base_path: Optional[str] = setting("base weights (state dict file or model folder) under a *_tunable "
                                            "or adapter checkpoint", None)


@dataclasses.dataclass
class DataSettings:
    """Which task, where its files are, and how its texts become model inputs."""
    task_name: str = setting(f"a GLUE task ({' '.join(TASKS)}) or the path of a task file (*.json, docs/tasks.md)")
    data_dir: Optional[str] = setting("the task's folder (default: $GLUE_DIR/<official folder name>; a task file's "
                                      "own folder)", None)
    mnli_mm_data_dir: Optional[str] = setting("MNLI: the folder with dev_mismatched.tsv / test_mismatched.tsv "
                                              "(default: the MNLI folder)", None)
    max_seq_length: int = setting("word pieces per example, [CLS] and [SEP] included; longer pairs are "
                                  "truncated as the seed does", 128)
    do_lower_case: Optional[bool] = setting(
        "BERT: lower-case the texts (for uncased models); `--do_lower_case false` keeps their case; without the "
        "flag, what the model's tokenizer_config.json says, else cased as in the seed. Other encoders' "
        "tokenizers normalise texts by their own rules", None, nargs="?", const=True)
    train_examples_number: Optional[int] = setting("train on a random subsample of this many examples", None)
    dev_examples_number: Optional[int] = setting("score a random sample of this many dev examples (MNLI: of each "
                                                 "half), recorded in val_metrics.json: cheaper dev scores of a "
                                                 "large intermediate task", None)
    features_cache_dir: Optional[str] = setting("tokenized-features cache (default: $STILTS_CACHE_DIR or "
                                                "~/.cache/stilts)", None)
    no_features_cache: bool = setting("tokenize every time; read and write no cache", False)


@dataclasses.dataclass
class TrainSettings:
    """How to train and evaluate: what the Trainer reads."""
    train_batch_size: int = setting("examples per optimizer step, over all processes", 32)
    eval_batch_size: int = setting("examples per evaluation batch", 32)
    learning_rate: float = setting("peak learning rate of AdamW (MiniLM needs 5e-5 to 1e-4)", 5e-5)
    num_train_epochs: float = setting("epochs; a fraction trains part of the last one", 3.0)
    warmup_proportion: float = setting("share of the steps over which the learning rate rises linearly", 0.1)
    seed: int = setting("random seed; -1 draws one (recorded in args.json)", -1)
    gradient_accumulation_steps: int = setting("micro batches per optimizer step (same updates, less memory)", 1)
    fp16: bool = setting("float16 autocast with a gradient scaler", False)
    loss_scale: float = setting("fp16: 0 = dynamic loss scaling, > 0 = this fixed starting scale", 0)
    bf16: bool = setting("bfloat16 autocast (CPUs with AVX512-BF16 or AMX, Ampere and newer GPUs)", False)
    torch_compile: bool = setting("run the model through torch.compile (on one GPU with CUDA graphs, one per "
                                  "batch shape); pays on long GPU runs, compiling takes a minute or more", False)
    pad_to_multiple_of: Optional[int] = setting("round each batch's padded width up to a multiple of this: length "
                                                "buckets, a bounded set of batch shapes (default 32 with "
                                                "--torch_compile, else 1: each batch padded to its longest row)",
                                                None)
    pad_to_max_length: bool = setting("the seed's fixed padding to --max_seq_length and random batches "
                                      "(slower; for comparison)", False)
    no_group_by_length: bool = setting("plain random batches instead of length-grouped ones", False)
    weight_decay: float = setting("AdamW weight decay (not on biases and LayerNorms)", 0.01)
    max_grad_norm: float = setting("clip the global gradient norm to this; 0 turns clipping off", 1.0)
    train_save_every: Optional[int] = setting("write a resumable checkpoint every N optimizer steps", None)
    train_save_mode: Optional[Literal[SAVE_MODES]] = setting(
        "what the checkpoints of --train_save_every keep, as --bert_save_mode says (default: --bert_save_mode): "
        "with all or tunable they resume, whatever the final all_state.p keeps", None)
    logging_steps: int = setting("bring the running loss to the host every N optimizer steps (progress bar, "
                                 "non-finite check); between them the host never waits for the device", 50)
    checkpoint_format: Literal["p", "safetensors"] = setting(
        "p: the seed's pickle files (all_state.p); safetensors: every checkpoint without pickle "
        "(all_state.safetensors, the training state beside the weights; every load mode reads both)", "p")
    bert_save_mode: Literal[SAVE_MODES] = setting(
        "what all_state.p keeps: all / tunable: model (all or trainable parameters) + optimizer and training "
        "position; model_all / model_tunable: the model alone", "all")

    adam_epsilon: ClassVar[float] = 1e-6  # BERT's value; not a flag

    @classmethod
    def of(cls, args):
        """The training settings among a run's parsed flags."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def precision(self):
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def periodic_save_mode(self):
        """The save mode of the periodic checkpoints."""
        return self.train_save_mode or self.bert_save_mode

    @property
    def resumable(self):
        """Whether the periodic checkpoints keep the training state, and so can resume the run."""
        return bool(self.train_save_every) and self.periodic_save_mode in STATE_SAVE_MODES

    @property
    def group_by_length(self):
        return not (self.no_group_by_length or self.pad_to_max_length)

    @property
    def width_multiple(self):
        """What batch widths are rounded up to: compiled code and CUDA graphs are made per shape."""
        return self.pad_to_multiple_of or (32 if self.torch_compile else 1)


@dataclasses.dataclass
class RunSettings:
    """What the command does and where it writes."""
    output_dir: str = setting("the run's folder: args.json, checkpoints, predictions, metrics")
    do_train: bool = setting("fine-tune on the train split", False)
    do_val: bool = setting("score the dev split: val_preds.csv, val_metrics.json", False)
    do_test: bool = setting("predict the test split: test_preds.csv", False)
    do_val_history: bool = setting("also score the dev split after each epoch: val_metrics_history.json", False)
    do_save: bool = setting("write the checkpoint all_state.p (see --bert_save_mode)", False)
    no_cuda: bool = setting("stay on the CPU even when a GPU is there", False)
    local_rank: int = setting("set by older launchers; torchrun sets LOCAL_RANK instead", -1)
    print_trainable_params: bool = setting("list the parameters that train", False)
    not_verbose: bool = setting("warnings and errors only: no progress bars or settings listing", False)
    force_overwrite: bool = setting("write into a --output_dir that is not empty", False)
    report_to: Literal["none", "tensorboard"] = setting(
        "tensorboard: training and dev curves in <output_dir>/tensorboard/ (needs the tensorboard package)", "none")


GROUPS = (ModelSettings, DataSettings, TrainSettings, RunSettings)


def base_path_from_args(bert_base_path, bert_load_args):
    """`--bert_base_path FILE_OR_FOLDER`, or the seed's `--bert_load_args bert_model_path:FILE`."""
    if bert_base_path:
        return bert_base_path
    if bert_load_args:
        prefix = "bert_model_path:"
        if not bert_load_args.startswith(prefix):
            raise StiltsError(f"--bert_load_args {bert_load_args!r}: expected the form bert_model_path:FILE")
        return bert_load_args[len(prefix):]
    return None


def features_cache_dir(args):
    """Where tokenized features are cached: --features_cache_dir, $STILTS_CACHE_DIR, ~/.cache/stilts;
    None with --no_features_cache."""
    if args.no_features_cache:
        return None
    return (args.features_cache_dir or os.environ.get("STILTS_CACHE_DIR")
            or os.path.join(os.path.expanduser("~"), ".cache", "stilts"))


def checkpoint_name(stem, checkpoint_format):
    """A checkpoint's file name in the format of --checkpoint_format: all_state.p (the seed's pickle) or
    all_state.safetensors, and so for every checkpoint of a run."""
    return stem + (".safetensors" if checkpoint_format == "safetensors" else ".p")


def saved_checkpoint(folder):
    """The all_state.p or all_state.safetensors a run saved in `folder` (--do_save), or None."""
    found = [os.path.join(folder, checkpoint_name("all_state", fmt)) for fmt in ("p", "safetensors")]
    return next((path for path in found if os.path.isfile(path)), None)


def flag_names(name):
    """The spellings of a setting's flag on the command line."""
    return {f"--{name}", f"--{name.replace('_', '-')}"}
