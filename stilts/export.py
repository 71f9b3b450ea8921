"""A stilts run's model as a standard transformers folder, which `AutoModelForSequenceClassification`
(`AutoModelForMultipleChoice` for multiple choice) and `pipeline("text-classification")` load, and
which can go on the hub as it is.

The folder holds config.json (the task's labels as id2label / label2id, and problem_type),
model.safetensors, the tokenizer the run used (BERT: its vocabulary and casing; the run's
--max_seq_length as model_max_length) and README.md, a model card saying how the model was made:
base model, intermediate task, target task, dev metrics, seeds and the command that trained it.

BERT (the seed's BertForGlue) keeps its encoder's parameter names, which are those of
BertForSequenceClassification, and its head (`classifier`, or the seed's `regressor` for STS-B-like
tasks) becomes that class's `classifier`: the same linear layer on the pooled [CLS]. Multiple choice
becomes BertForMultipleChoice, the same one-score-per-choice head. Other encoders are transformers'
own <Family>ForSequenceClassification already. Adapters cannot be exported: they are not linear,
so they do not merge into the weights, and transformers' classes have no place for them.
"""
import dataclasses
import os
import shlex
import shutil
import tempfile

from stilts.checkpoints import load_weights, read_weights
from stilts.errors import StiltsError
from stilts.io import UMASK, atomic_write, cannot_write, check_writable_folder, read_json
from stilts.modeling import BertForGlue, ModelSource, base_weights, build_model, uses_token_types
from stilts.settings import GROUPS, base_path_from_args, saved_checkpoint
from stilts.tasks import get_task

ENCODER_LOAD_MODES = ("model_only", "state_model_only")  # stage B from another run's encoder


@dataclasses.dataclass
class Restart:
    """One restart of the exported run's target and arm, for the model card (from a study's summary)."""
    seed: int
    value: float


def export(source, out, restarts=(), metric=None, replace=False):
    """Write the transformers folder `out` for the run folder or checkpoint `source`; `restarts` (with
    the name of their `metric`) are the study's runs of the same target and arm. Everything is
    checked and built in a temporary folder beside `out`, which then takes its name: a failure
    leaves nothing behind. An existing `out` is refused, or with `replace` (a study's own export
    folder) swapped for the new one once that is complete."""
    checkpoint_path, run_dir = locate(source)
    if not replace:
        check_new_folder(out)
    checkpoint = read_weights(checkpoint_path)  # .p or .safetensors (--checkpoint_format)
    args = run_record(checkpoint, checkpoint_path)
    metrics = dev_metrics(run_dir)
    model_source = ModelSource(args["bert_model"], args.get("bert_config_json_path"), args.get("bert_vocab_path"))
    config = model_source.config()
    if getattr(config, "use_adapter", False):
        raise StiltsError(f"{checkpoint_path}: an adapter model cannot be exported: its adapters are not linear, "
                          f"so they do not merge into the weights, and transformers' classes have no place for them")
    task = get_task(args["task_name"], data_dir=args.get("data_dir"))
    labels = tuple(args["task_labels"]) if args.get("task_labels") else task.labels
    model = build_model(config, task)
    base = base_weights(base_path_from_args(args.get("bert_base_path"), args.get("bert_load_args")))
    load_weights(model, "state_full_model", checkpoint_path, base)
    exported = as_transformers(model, task, labels)
    tokenizer = as_trained(model_source.tokenizer(args.get("do_lower_case")), config, args.get("max_seq_length"))

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # a bar for writing one file: noise, in a study's output above all

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    earlier = None
    building = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.")
    os.chmod(building, 0o777 & ~UMASK)  # mkdtemp makes it private; the export is for others too
    try:
        exported.save_pretrained(building, safe_serialization=True)
        tokenizer.save_pretrained(building)
        with atomic_write(os.path.join(building, "README.md")) as f:
            f.write(model_card(args, task, labels, checkpoint_path, metrics, restarts, metric))
        if os.path.isdir(out):  # empty (check_new_folder), or an earlier export to replace
            earlier = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.old.")
            os.rename(out, os.path.join(earlier, "export"))
        os.rename(building, out)
    except BaseException as e:
        shutil.rmtree(building, ignore_errors=True)
        if earlier and not os.path.exists(out):  # put the earlier export back
            os.rename(os.path.join(earlier, "export"), out)
            os.rmdir(earlier)
        worded = cannot_write(out, e) if isinstance(e, OSError) else None  # a full disk, no permission
        if worded:
            raise worded from None
        raise
    if earlier:
        shutil.rmtree(earlier, ignore_errors=True)
    return out


def export_study(output_dir, summary, report=print):
    """stilts-run --export: each target's best dev run (any arm) as a transformers folder,
    OUT/export/<target>/, replacing an earlier export of the study."""
    from stilts.study_summary import best_run

    for target, entry in summary["targets"].items():
        best = best_run(entry)
        if best is None:
            continue
        arm, run = best
        out = os.path.join(output_dir, "export", target)
        export(os.path.join(output_dir, run["dir"]), out, [Restart(r["seed"], r["value"]) for r in entry[arm]["runs"]],
               entry[arm]["metric"], replace=True)
        report(f"stilts-run: exported {target} ({arm} seed {run['seed']}, the best dev {entry[arm]['metric']}) "
               f"to {out}")


def locate(source):
    """(the checkpoint file, the run folder holding its records or None) for a run folder or a file."""
    if os.path.isdir(source):
        path = saved_checkpoint(source)
        if path is None:
            raise StiltsError(f"{source}: no all_state.p or all_state.safetensors in this run folder (a run saves "
                              f"it with --do_save)")
        return path, source
    if not os.path.isfile(source):
        raise StiltsError(f"{source}: no such run folder or checkpoint file")
    folder = os.path.dirname(os.path.abspath(source))
    return source, folder if os.path.isfile(os.path.join(folder, "args.json")) else None


def dev_metrics(run_dir):
    """The run's dev metrics (val_metrics.json), or None when its folder has none."""
    path = os.path.join(run_dir or "", "val_metrics.json")
    if run_dir is None or not os.path.isfile(path):
        return None
    metrics = read_json(path, dict).get("metrics")
    return metrics if isinstance(metrics, dict) else None


def check_new_folder(out):
    """--out must be a new or empty folder whose parent can be written: an export never mixes with
    other files, or replaces an earlier export."""
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise StiltsError(f"--out {out}: {'is a file' if not os.path.isdir(out) else 'is not empty'}; "
                          f"name a new folder")
    check_writable_folder(os.path.dirname(os.path.abspath(out)), "--out")


def run_record(checkpoint, path):
    """The flags of the run that wrote the checkpoint (its 'args' entry): which model and task it is."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise StiltsError(f"{path}: a plain state dict, without the record of the run that made it; stilts-export "
                          f"reads a stilts run's checkpoint (its task and model are in its 'args' entry)")
    args = checkpoint.get("args")
    missing = [key for key in ("task_name", "bert_model") if not isinstance((args or {}).get(key), str)]
    if not isinstance(args, dict) or missing:
        raise StiltsError(f"{path}: its 'args' entry lacks {', '.join(missing or ['task_name', 'bert_model'])}: "
                          f"not a checkpoint of a stilts run")
    return args


def as_transformers(model, task, labels):
    """The transformers model class that `model` (stilts' task model, weights loaded) is, with its
    weights and the task's labels in its config."""
    from transformers import BertForMultipleChoice, BertForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config = type(model.config).from_dict(model.config.to_dict())  # a copy without stilts' attention choice
    config._attn_implementation = None
    state = model.state_dict()
    if isinstance(model, BertForGlue):
        head = model.head_name + "."
        state = {("classifier." + k[len(head):] if k.startswith(head) else k): v for k, v in state.items()}
        cls = BertForMultipleChoice if task.is_multiple_choice else BertForSequenceClassification
    elif task.is_multiple_choice:
        raise StiltsError(f"a multiple-choice {config.model_type} model cannot be exported: transformers' "
                          f"{config.model_type} multiple-choice class has another head than the one stilts "
                          f"trained (only BERT's are the same)")
    else:
        cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    if not task.is_multiple_choice:
        config.num_labels = 1 if labels is None else len(labels)
        config.problem_type = "regression" if labels is None else "single_label_classification"
        if labels is not None:
            config.id2label = dict(enumerate(labels))
            config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = [cls.__name__]
    exported = cls(config)
    missing, unexpected = exported.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:  # stilts builds these models from the same classes: a bug, not bad input
        raise RuntimeError(f"export to {cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return exported.eval()


def as_trained(tokenizer, config, max_seq_length):
    """The run's transformers tokenizer, saved to give the model what stilts gave it: segment ids
    exactly where the model has segment embeddings (ALBERT's tokenizer leaves them out, stilts
    trains with them), and inputs cut at the run's --max_seq_length."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # the transformers tokenizer in stilts' wrapper
    names = ["input_ids", "token_type_ids", "attention_mask"] if uses_token_types(config) else \
        ["input_ids", "attention_mask"]
    settings = {"model_input_names": names}
    if max_seq_length:
        settings["model_max_length"] = max_seq_length
    for name, value in settings.items():  # as attributes for now, and in init_kwargs for save_pretrained
        setattr(tokenizer, name, value)
        tokenizer.init_kwargs[name] = value
    return tokenizer


def model_card(args, task, labels, checkpoint_path, metrics, restarts, metric):
    """README.md of the exported folder: what the model is and how it was made."""
    base = args["bert_model"]
    on_hub = not os.path.exists(base)
    intermediate, encoder_from = intermediate_of(args)
    kind = ("multiple choice" if task.is_multiple_choice else "regression" if labels is None
            else f"classification: {', '.join(labels)}")
    lines = ["---", "library_name: transformers", "tags:", "- stilts", "- intermediate-task-transfer"]
    if on_hub:
        lines.append(f"base_model: {base}")
    if not task.is_multiple_choice:
        lines.append("pipeline_tag: text-classification")
    if encoder_from is None:
        started = "none (fine-tuned from the base model directly)"
    else:
        started = f"{intermediate or 'not recorded'} (stage B started from the encoder of `{encoder_from}`)"
    lines += ["---", "", f"# {task.name}, fine-tuned from {os.path.basename(base.rstrip('/'))}"
              + (f" through {intermediate}" if intermediate else ""), "",
              f"Made with stilts (supplementary training on intermediate labeled-data tasks) and exported "
              f"by `stilts-export` from `{checkpoint_path}`.", "",
              f"- Base model: `{base}`",
              f"- Intermediate task: {started}",
              f"- Target task: {task.name} ({kind})",
              f"- Seed: {args.get('seed')}", ""]
    if metrics:
        lines += ["## Dev metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items() if isinstance(value, (int, float))]
        lines.append("")
    if restarts:
        values = [r.value for r in restarts]
        lines += ["## Restarts", "", f"This run is the best of {len(restarts)} restarts by dev {metric} "
                  f"(mean {sum(values) / len(values):.4f}):", "", "| seed | dev " + metric + " |", "|---|---|"]
        lines += [f"| {r.seed} | {r.value:.4f} |" for r in restarts]
        lines.append("")
    lines += ["## How it was trained", "", "```bash", training_command(args), "```", "", "## Use", "", "```python"]
    if task.is_multiple_choice:
        lines += ["from transformers import AutoModelForMultipleChoice, AutoTokenizer",
                  'model = AutoModelForMultipleChoice.from_pretrained("THIS_FOLDER")',
                  "# inputs of shape (batch, choices, tokens): one (context, choice) pair per choice"]
    else:
        lines += ["from transformers import pipeline", 'model = pipeline("text-classification", model="THIS_FOLDER")',
                  'model({"text": "first sentence", "text_pair": "second sentence"})'
                  + ("  # function_to_apply='none' for the score" if labels is None else "")]
    lines += ["```", ""]
    return "\n".join(lines)


def intermediate_of(args):
    """(the intermediate task, the checkpoint whose encoder the run started from), or (None, None)
    for a run from the base model. The task is that of the run that wrote the checkpoint, when its
    folder says (args.json), else None."""
    path = args.get("bert_load_path")
    if args.get("bert_load_mode") not in ENCODER_LOAD_MODES or not isinstance(path, str):
        return None, None
    try:
        task_name = read_json(os.path.join(os.path.dirname(os.path.abspath(path)), "args.json"), dict).get("task_name")
    except StiltsError:  # no record of the run beside it
        task_name = None
    return (task_name if isinstance(task_name, str) else None), path


def training_command(args):
    """glue/train.py with the flags of the run that differ from their defaults."""
    defaults = {f.name: f.default for group in GROUPS for f in dataclasses.fields(group)}
    words = ["python", "glue/train.py"]
    for key, value in args.items():
        if key not in defaults or value is None or value is False or value == defaults[key]:
            continue
        words += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return shlex.join(words)
