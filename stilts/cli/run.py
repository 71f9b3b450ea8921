"""`stilts-run`: a whole STILTs study in one command.

Stage A fine-tunes the encoder on each intermediate task once. Every target task then trains from
each stage A checkpoint (a STILTs arm) and, with --compare, from the plain model (the baseline arm),
once per seed; the same seeds in every arm, so that runs pair up. Each run is a stilts-train
(glue/train.py) subprocess with its own folder, so any glue/train.py flag passes through and a crash
in one run leaves the others intact:

    OUT/intermediate_<task>/            stage A; its all_state.p is loaded by every run of its arm
    OUT/<target>/stilts/seed_<s>/       target runs from the stage A encoder (state_model_only);
                                        with several intermediates, OUT/<target>/stilts_<task>/seed_<s>/
    OUT/<target>/baseline/seed_<s>/     target runs from --bert_model (--compare)
    OUT/submission_input/<target>/      test predictions of the best dev run, for the submission export
    OUT/summary.json, summary.md, summary.png, and with --compare transfer_matrix.md, .png

Repeating the command skips finished runs, so a study that crashed resumes where it stopped.
"""
import dataclasses
import functools
import json
import os
import shlex
import sys
import time
from typing import Optional

from stilts import resources, run_folder
from stilts.cli import ArgumentParser, report_errors
from stilts.cli import train as train_cli
from stilts.errors import StiltsError
from stilts.io import check_writable_folder, read_json
from stilts.settings import flag_names
from stilts.tasks import get_task, resolve_data_dir, run_splits

# glue/train.py flags the pipeline sets for each run; passing them through would break the layout.
OWNED_FLAGS = set().union(*map(flag_names, ("task_name", "data_dir", "output_dir", "seed", "bert_load_mode",
                                            "bert_load_path", "do_train", "do_val", "do_test", "force_overwrite")))
# Stage A must leave a checkpoint whose "model" entry holds the whole encoder.
STAGE_A_SAVE = ["--do_save", "--bert_save_mode", "model_all"]
# With --adapters it holds only what trained (adapters, LayerNorms, head); stage B adds the base weights.
STAGE_A_SAVE_ADAPTERS = ["--do_save", "--bert_save_mode", "model_tunable"]
ADAPTER_CONFIGS = {name: resources.data_path("configs", f"{name}-adapter.json")
                   for name in ("bert-base-uncased", "bert-large-uncased")}
# What a study writes beside its tasks' folders (compared case-blind, for case-blind file systems); a
# task may not be named so, nor intermediate_<x>.
STUDY_NAMES = {"summary.json", "summary.md", "summary.png", "transfer_matrix.md", "transfer_matrix.png",
               "submission_input", "submitit", run_folder.LOCK_NAME}
# Settings that change how a run executes or what it keeps, not what it learns: a finished run made
# with other values of these still counts when the study is repeated.
EXECUTION_ONLY = {"output_dir", "bert_load_path", "force_overwrite", "not_verbose", "print_trainable_params",
                  "local_rank", "no_cuda", "eval_batch_size", "features_cache_dir", "no_features_cache",
                  "do_test", "do_save", "bert_save_mode", "train_save_every", "do_val_history", "torch_compile",
                  "pad_to_multiple_of", "logging_steps", "report_to"}


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser():
    p = ArgumentParser(
        prog="stilts-run", allow_abbrev=False,
        description="STILTs study: intermediate task once, then each target with restarts "
                    "(and without STILTs with --compare). Other flags go to every glue/train.py run.")
    p.add_argument("--intermediate", help="intermediate task, e.g. mnli, or a task file (*.json)")
    p.add_argument("--intermediates", help="several intermediate tasks, e.g. mnli,qnli,qqp,sst: each trains once, "
                                           "every target from each (the transfer matrix); instead of --intermediate")
    p.add_argument("--targets", required=True,
                   help="comma-separated target tasks, e.g. rte,mrpc,stsb or rte,path/to/my_task.json")
    p.add_argument("--restarts", type=int, default=None, help="runs per target and variant (seeds 1..N)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one per restart (default 1..N)")
    p.add_argument("--intermediate_seed", type=int, default=0,
                   help="seed of stage A (fixed, so that adding restarts later reuses stage A)")
    p.add_argument("--compare", action="store_true", help="also train each target from --bert_model (baseline)")
    p.add_argument("--bert_model", required=True, help="as for glue/train.py")
    p.add_argument("--output_dir", required=True, help="the study folder")
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"),
                   help="folder holding the GLUE task folders (default $GLUE_DIR)")
    p.add_argument("--intermediate_args", default="",
                   help="extra glue/train.py flags for stage A only, after the shared ones, e.g. "
                        "\"--num_train_epochs 1\" (a single flag: --intermediate_args=--bf16)")
    p.add_argument("--intermediate_dev_examples", type=int, default=None,
                   help="stage A scores a random sample of this many dev examples (MNLI: of each half), not the "
                        "whole dev set, which for a large intermediate can cost more than its training; the "
                        "summary says it is a sample")
    p.add_argument("--no_test", action="store_true", help="do not predict the test sets (no submission input)")
    launch = p.add_argument_group("where the runs run (docs/pipeline.md#many-gpus-and-clusters)")
    launch.add_argument("--launcher", choices=("local", "submitit", "ray"), default="local",
                        help="local: --jobs runs at a time here; submitit: SLURM job arrays (or submitit's local "
                             "executor); ray: Ray tasks")
    launch.add_argument("--jobs", type=int, default=1, help="local: runs at a time (CPU: the cores are divided)")
    launch.add_argument("--gpus_per_run", type=int, default=0,
                        help="GPUs per run (more than 1: torchrun inside the run); local default: 1 on a GPU machine")
    launch.add_argument("--cpus_per_run", type=int, default=None,
                        help="submitit and ray: CPU cores per run (default: 1 per GPU, else 1)")
    launch.add_argument("--max_retries", type=int, default=1, help="tries after a run's first failure")
    launch.add_argument("--submitit_cluster", choices=("auto", "slurm", "local", "debug"), default="auto",
                        help="submitit's executor (auto: SLURM where sbatch exists, else local processes)")
    launch.add_argument("--slurm_partition", default=None)
    launch.add_argument("--slurm_time", type=int, default=60 * 24, help="minutes a run's job may take")
    launch.add_argument("--slurm_array_parallelism", type=int, default=None, help="jobs of an array at once")
    launch.add_argument("--slurm_extra", default="",
                        help="more sbatch options, KEY=VALUE,KEY=VALUE (e.g. account=abc,qos=high)")
    launch.add_argument("--ray_address", default=None, help="a running Ray cluster (default: start one here)")
    p.add_argument("--adapters", action="store_true",
                   help="train adapters instead of the whole encoder: the adapter config (configs/ for "
                        "bert-base/large-uncased, else --bert_config_json_path), a model_tunable stage A, and "
                        "--bert_model's folder as the base weights of stage B")
    return p


def parse_args(argv=None):
    """The pipeline's own flags, and the glue/train.py flags passed through to every run."""
    args, passthrough = build_parser().parse_known_args(argv)
    try:
        args.intermediate_extra = shlex.split(args.intermediate_args)
    except ValueError as e:  # an unbalanced quote
        raise StiltsError(f"--intermediate_args {args.intermediate_args!r}: {e}") from None
    for flags, where in ((passthrough, "pass-through"), (args.intermediate_extra, "--intermediate_args")):
        owned = [f for f in flags if f.split("=")[0] in OWNED_FLAGS]
        if owned:
            raise StiltsError(f"{owned[0]} ({where} flag): stilts-run sets it for each run; see stilts-run --help")
    # Check the pass-through flags now, not when the first run starts; keep their values for planning.
    dummy = ["--task_name", "rte", "--bert_model", "x", "--output_dir", "x"]
    _, unknown = train_cli.build_parser().parse_known_args(passthrough + args.intermediate_extra + dummy)
    if unknown:
        raise StiltsError(f"not a stilts-run or glue/train.py flag: {' '.join(unknown)}")
    args.shared = train_cli.build_parser().parse_args(passthrough + dummy)

    if (args.intermediate is None) == (args.intermediates is None):
        raise StiltsError("give one of --intermediate TASK and --intermediates TASK,TASK,...")
    if args.intermediate and "," in args.intermediate:
        raise StiltsError(f"--intermediate {args.intermediate}: one task; for several, --intermediates")
    intermediates = [get_task(t.strip()) for t in (args.intermediates or args.intermediate).split(",") if t.strip()]
    targets = [get_task(t.strip()) for t in args.targets.split(",") if t.strip()]
    if not intermediates:
        raise StiltsError("--intermediates: give at least one task, e.g. --intermediates mnli,qnli")
    if not targets:
        raise StiltsError("--targets: give at least one task, e.g. --targets rte,mrpc")
    args.tasks = {}  # name -> Task: the study's folders, summaries and runs name tasks by name
    for task in intermediates + targets:
        if args.tasks.get(task.name, task).spec != task.spec:
            raise StiltsError(f"two tasks are named {task.name!r} ({args.tasks[task.name].spec} and {task.spec}); "
                              f"give them different names")
        args.tasks[task.name] = task
    for task in args.tasks.values():
        if task.name.lower() in STUDY_NAMES or task.name.lower().startswith("intermediate_"):
            raise StiltsError(f"{task.spec}: the task name {task.name!r} is taken by the study's own files and "
                              f"folders ({', '.join(sorted(STUDY_NAMES))}, intermediate_<task>); give the task "
                              f"another 'name'")
    args.intermediates = list(dict.fromkeys(t.name for t in intermediates))
    args.targets = list(dict.fromkeys(t.name for t in targets))
    args.seeds = parse_seeds(args.seeds, args.restarts)
    if not 0 <= args.intermediate_seed < 2 ** 32:
        raise StiltsError(f"--intermediate_seed {args.intermediate_seed}: must be from 0 to 2**32 - 1")
    if args.intermediate_dev_examples is not None:
        if args.intermediate_dev_examples < 1:
            raise StiltsError(f"--intermediate_dev_examples {args.intermediate_dev_examples}: must be at least 1")
        args.intermediate_extra += ["--dev_examples_number", str(args.intermediate_dev_examples)]
    check_launcher(args)
    if any(task.default_folder() is None for task in args.tasks.values()):  # a GLUE task
        if not args.glue_dir:
            raise StiltsError("no GLUE data folder: pass --glue_dir or set GLUE_DIR")
        args.glue_dir = os.path.abspath(args.glue_dir)
    args.output_dir = os.path.abspath(args.output_dir)
    if os.path.isdir(args.bert_model):  # a local folder: the same absolute path in every run's args.json
        args.bert_model = os.path.abspath(args.bert_model)
    if args.adapters:
        passthrough = passthrough + adapter_flags(args)
    return args, passthrough


def adapter_flags(args):
    """--adapters: the adapter config flag for every run (unless given), and the base weights folder."""
    from stilts.modeling import WEIGHT_FILES, ModelSource  # torch and transformers: after parsing

    config_path = args.shared.bert_config_json_path or ADAPTER_CONFIGS.get(args.bert_model)
    if config_path is None:
        raise StiltsError(f"--adapters with --bert_model {args.bert_model}: pass its adapter config too, "
                          f"--bert_config_json_path (e.g. configs/minilm-adapter.json for all-MiniLM-L6-v2)")
    if not getattr(ModelSource(args.bert_model, config_path).config(), "use_adapter", False):
        raise StiltsError(f"{config_path}: --adapters needs a config with \"use_adapter\": true")
    folder = ModelSource(args.bert_model).folder
    if not (folder and any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES)):
        raise StiltsError(f"--adapters: stage B loads the base weights under the adapters from --bert_model's "
                          f"folder, and {args.bert_model} has no local {' or '.join(WEIGHT_FILES)}; "
                          f"pass a model folder as --bert_model")
    args.adapter_base = os.path.abspath(folder)
    return [] if args.shared.bert_config_json_path else ["--bert_config_json_path", config_path]


def check_launcher(args):
    """The launcher's flags, and its package (submitit and ray are optional extras)."""
    import importlib.util

    for flag in ("jobs", "gpus_per_run", "cpus_per_run", "max_retries", "slurm_time", "slurm_array_parallelism"):
        value = getattr(args, flag)
        least = 0 if flag in ("gpus_per_run", "max_retries") else 1
        if value is not None and value < least:
            raise StiltsError(f"--{flag} {value}: must be at least {least}")
    if args.jobs > 1 and args.launcher != "local":
        raise StiltsError(f"--jobs is for --launcher local; {args.launcher} spreads the runs itself")
    if args.launcher == "local" and args.gpus_per_run:
        from stilts.launchers import visible_gpus  # torch: after the flags

        if len(visible_gpus()) < args.gpus_per_run:
            raise StiltsError(f"--gpus_per_run {args.gpus_per_run}: this machine has {len(visible_gpus())} GPU(s) "
                              f"(CUDA_VISIBLE_DEVICES)")
    if args.launcher != "local" and importlib.util.find_spec(args.launcher) is None:
        raise StiltsError(f"--launcher {args.launcher} needs the {args.launcher} package: "
                          f"pip install 'stilts[{args.launcher}]'")
    try:
        args.slurm_extra = dict(item.split("=", 1) for item in args.slurm_extra.split(",") if item.strip())
    except ValueError:
        raise StiltsError(f"--slurm_extra {args.slurm_extra!r}: expected KEY=VALUE,KEY=VALUE") from None


def launch(args, stage_a, runs, pace):
    """Carry out every run with the chosen engine; {run folder: launchers.Outcome}. `pace()`: this
    machine's recorded pace for the runs, for the estimates."""
    from stilts import launchers

    attempts = launchers.Attempts(max_retries=args.max_retries, processes=max(1, args.gpus_per_run))
    report = lambda line: print(line, flush=True)  # noqa: E731
    if args.launcher == "local":
        gpus = args.gpus_per_run or (1 if launchers.visible_gpus() else 0)
        attempts.processes = max(1, gpus)
        return launchers.launch_local(stage_a, runs, attempts, args.jobs, gpus, report, pace)
    cpus = args.cpus_per_run or max(1, args.gpus_per_run)
    if args.launcher == "ray":
        return launchers.launch_ray(stage_a, runs, attempts, args.ray_address, cpus, args.gpus_per_run, report, pace)
    parameters = {"timeout_min": args.slurm_time, "cpus_per_task": cpus, "gpus_per_node": args.gpus_per_run,
                  "slurm_additional_parameters": args.slurm_extra}
    if args.slurm_partition:
        parameters["slurm_partition"] = args.slurm_partition
    if args.slurm_array_parallelism:
        parameters["slurm_array_parallelism"] = args.slurm_array_parallelism
    cluster = None if args.submitit_cluster == "auto" else args.submitit_cluster
    return launchers.launch_submitit(stage_a, runs, attempts, os.path.join(args.output_dir, "submitit"), cluster,
                                     parameters, report, pace)


def parse_seeds(seeds, restarts):
    if seeds is None:
        if restarts is None or restarts < 1:
            raise StiltsError("pass --restarts N (N >= 1) or --seeds S1,S2,...")
        return list(range(1, restarts + 1))
    try:
        parsed = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise StiltsError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if len(set(parsed)) != len(parsed) or any(not 0 <= s < 2 ** 32 for s in parsed):
        raise StiltsError(f"--seeds {seeds!r}: seeds must be distinct, from 0 to 2**32 - 1")
    if restarts is not None and restarts != len(parsed):
        raise StiltsError(f"--restarts {restarts} but --seeds lists {len(parsed)} seeds")
    return parsed


# ---------------------------------------------------------------------------------------------
# The runs of a study


@dataclasses.dataclass(frozen=True)
class Arm:
    """How a target is trained: from one intermediate's stage A (a STILTs arm) or from the plain model."""
    key: str                    # in summary.json: "stilts", "stilts:<intermediate>" or "baseline"
    intermediate: Optional[str] = None

    @property
    def folder(self):
        return self.key.replace(":", "_")


def study_arms(args):
    """One STILTs arm per intermediate ("stilts" alone when there is one), and the baseline (--compare)."""
    if len(args.intermediates) == 1:
        arms = [Arm("stilts", args.intermediates[0])]
    else:
        arms = [Arm(f"stilts:{name}", name) for name in args.intermediates]
    return arms + ([Arm("baseline")] if args.compare else [])


@dataclasses.dataclass
class Run:
    label: str          # for the progress lines, e.g. "rte stilts seed 2"
    folder: str
    argv: list          # glue/train.py flags
    outputs: tuple      # the files a finished run has
    task: str = ""
    arm: str = ""       # Arm.key
    seed: int = 0
    after: Optional["Run"] = None  # the run that must finish first (a STILTs run: its stage A)
    resumable: bool = False  # its periodic checkpoints hold the training state: continue from the newest
    metric: str = ""    # the dev metric its val_metrics.json must hold
    work: tuple = ()    # (examples trained, examples scored), for the estimates (stilts.pace)

    def unfinished(self):
        """Why the run must run (again), or None when its folder holds a finished run: every output there,
        run_status.json saying "finished" (folders older than that file: outputs alone), and its records
        readable (args.json an object, val_metrics.json with the dev metric). A damaged record is no
        reason to stop a study: the run it records is redone."""
        missing = [name for name in self.outputs if not os.path.isfile(os.path.join(self.folder, name))]
        if missing:
            return f"no {missing[0]}"
        state = run_folder.state(self.folder)
        if state not in (None, "finished"):
            return f"its {run_folder.STATUS_NAME} says {state!r}"
        try:
            args_path = os.path.join(self.folder, "args.json")
            if os.path.lexists(args_path):
                read_json(args_path, dict)
            if "val_metrics.json" in self.outputs:
                metrics = run_folder.dev_metrics(self.folder)
                if self.metric and self.metric not in metrics:
                    return f"its val_metrics.json has no dev {self.metric}"
        except StiltsError as e:
            return f"a damaged record ({e})"
        return None

    def finished(self):
        return self.unfinished() is None


def data_dir(args, task_name):
    return resolve_data_dir(args.tasks[task_name], glue_dir=args.glue_dir)


def has_test(args, task_name):
    """Whether the target's test split(s) exist; a study on partial data skips the test predictions."""
    task = args.tasks[task_name]
    splits = [(task, data_dir(args, task_name))]
    if task.name == "mnli":
        splits.append((get_task("mnli-mm"), args.shared.mnli_mm_data_dir or data_dir(args, task_name)))
    try:
        for split_task, folder in splits:
            split_task.check_split("test", folder)
    except StiltsError as e:
        print(f"stilts-run: {e}: {task_name} runs will not predict the test set", flush=True)
        return False
    return True


def plan(args, passthrough):
    """Stage A of each intermediate, then for each target, seed and arm one run (arms side by side
    per seed)."""
    common = ["--bert_model", args.bert_model] + passthrough
    stage_a = {}
    for name in args.intermediates:
        folder = os.path.join(args.output_dir, f"intermediate_{name}")
        stage_a[name] = Run(f"stage A: {name}", folder,
                            ["--task_name", args.tasks[name].spec, "--data_dir", data_dir(args, name),
                             "--output_dir", folder, "--seed", str(args.intermediate_seed), "--do_train", "--do_val",
                             "--bert_load_mode", "from_pretrained"]
                            + merged_flags(common, args.intermediate_extra,
                                           STAGE_A_SAVE_ADAPTERS if args.adapters else STAGE_A_SAVE),
                            outputs=("all_state.p", "val_metrics.json"), task=name, metric=args.tasks[name].metric)
    runs = []  # stage A saves the model alone (model_*), so only target runs can resume
    resumable = bool(args.shared.train_save_every) and args.shared.bert_save_mode in ("all", "tunable")
    for target in args.targets:
        test = not args.no_test and has_test(args, target)
        outputs = ["val_metrics.json"]
        if test:
            outputs += ["test_preds.csv"] + (["mm_test_preds.csv"] if target == "mnli" else [])
        if args.shared.do_save:
            outputs.append("all_state.p")
        for seed in args.seeds:
            for arm in study_arms(args):
                folder = os.path.join(args.output_dir, target, arm.folder, f"seed_{seed}")
                after = stage_a.get(arm.intermediate)
                source = (["--bert_load_mode", "state_model_only", "--bert_load_path",
                           os.path.join(after.folder, "all_state.p")]
                          + (["--bert_base_path", args.adapter_base] if args.adapters else [])
                          if after else ["--bert_load_mode", "from_pretrained"])
                argv = (["--task_name", args.tasks[target].spec, "--data_dir", data_dir(args, target),
                         "--output_dir", folder, "--seed", str(seed), "--do_train", "--do_val"]
                        + (["--do_test"] if test else []) + source + common)
                runs.append(Run(f"{target} {arm.key} seed {seed}", folder, argv, tuple(outputs), task=target,
                                arm=arm.key, seed=seed, after=after, resumable=resumable,
                                metric=args.tasks[target].metric))
    return list(stage_a.values()), runs


def merged_flags(*flag_lists):
    """The flags of the lists, a later list's flag replacing an earlier one's (with its values), so that a
    run's command line says each setting once, as it takes effect."""
    def groups(flags):  # [(name, [the flag and its values])]: a value never starts with "--"
        out = []
        for item in flags:
            if item.startswith("--"):
                out.append((item.split("=", 1)[0].replace("-", "_"), [item]))
            elif out:
                out[-1][1].append(item)
        return out

    merged = {}
    for flags in flag_lists:
        for name, group in groups(flags):
            merged.pop(name, None)  # replaced: it moves to where it now takes effect
            merged[name] = group
    return [item for group in merged.values() for item in group]


def check_before_training(args, runs):
    """Every data file (each row of it), flag and finished run is checked before the first run starts,
    so that bad input stops the study in one line, not a run hours in (where trying again would not
    help). Each split the runs will read is read here once; returns their examples,
    {(task name, split, folder): examples}."""
    check_writable_folder(args.output_dir, "--output_dir")
    splits, wanted = {}, []
    for run in runs:
        check_nothing_in_the_way(run)
        settings = train_cli.build_parser().parse_args(run.argv + ["--force-overwrite"])
        if settings.bert_load_path and not os.path.isfile(settings.bert_load_path):  # stage A writes it
            settings.bert_load_mode, settings.bert_load_path = "from_pretrained", None
        train_cli.check_args(settings, data_flag="--glue_dir" if args.tasks[run.task].default_folder() is None
                             else f"the task file {args.tasks[run.task].spec}")
        files = run_splits(args.tasks[run.task], settings.data_dir, settings.mnli_mm_data_dir, train=True,
                           dev=True, test=settings.do_test)
        for split in files:
            splits[split.task.name, split.split, split.folder] = split
        wanted.append((run, settings, files))
    examples = {key: split.task.read(split.split, split.folder) for key, split in splits.items()}
    for run, settings, files in wanted:
        check_sample_sizes(run, settings, files, examples)
        if run.finished():
            check_same_settings(run)
            check_same_data(run, files)
    return examples, {run.folder: (settings, files) for run, settings, files in wanted}


def check_nothing_in_the_way(run):
    """The run's folder can be written, and no folder stands where stilts-run writes the run's log or
    reads its records."""
    check_writable_folder(run.folder, f"the folder of {run.label}")
    for name in (run_folder.LOG_NAME, run_folder.STATUS_NAME, "args.json", "val_metrics.json"):
        path = os.path.join(run.folder, name)
        if os.path.isdir(path):
            raise StiltsError(f"{path}: a folder stands where {run.label} writes its {name}; move it away")


def check_sample_sizes(run, settings, files, examples):
    """--train_examples_number and --dev_examples_number must fit the splits they sample (glue/train.py
    refuses them too, but only once the run starts: hours into a study)."""
    for split in files:
        wanted, flag = {"train": (settings.train_examples_number, "--train_examples_number"),
                        "dev": (settings.dev_examples_number, "--dev_examples_number")}.get(split.split, (None, ""))
        have = len(examples[split.task.name, split.split, split.folder])
        if wanted is not None and wanted > have:
            raise StiltsError(f"{flag} {wanted} (for {run.label}): {split.task.where(split.split, split.folder)} has "
                              f"{have} examples; give at most that, or leave the flag out to use all")


def check_same_data(run, files):
    """A finished run is reused only if the data it read is unchanged (run_status.json's digests)."""
    recorded = run_folder.recorded_inputs(run.folder)
    for split in files:
        if recorded and split.key in recorded and recorded[split.key] != split.digest():
            raise StiltsError(f"{run.folder}: this finished run read other data: {split.task.where(split.split, split.folder)} "
                              f"changed since; use a new --output_dir, or delete that folder to redo it")


def check_same_settings(run):
    """A finished run is reused only if it was made with the settings asked for now."""
    path = os.path.join(run.folder, "args.json")
    if not os.path.isfile(path):
        return
    recorded = read_json(path, dict)
    wanted = vars(train_cli.build_parser().parse_args(run.argv))
    if wanted["do_lower_case"] is None:  # the run recorded the casing it followed from the model
        wanted["do_lower_case"] = bool(study_casing(wanted["bert_model"], wanted["bert_config_json_path"],
                                                    wanted["bert_vocab_path"])[0])
    if recorded.get("bert_load_mode") == "state_all" and os.path.dirname(str(recorded.get("bert_load_path"))) == \
            run.folder:  # resumed from its own periodic checkpoint: the planned training, continued
        recorded["bert_load_mode"] = wanted["bert_load_mode"]
    differ = [k for k, v in wanted.items()
              if k not in EXECUTION_ONLY and k in recorded and _same(v) != _same(recorded[k])]
    if differ:
        changes = ", ".join(f"--{k} {recorded[k]!r} -> {wanted[k]!r}" for k in differ)
        raise StiltsError(f"{run.folder}: this finished run used other settings ({changes}); "
                          f"use a new --output_dir, or delete that folder to redo it")


@functools.lru_cache(maxsize=None)
def study_casing(bert_model, config_path=None, vocab_path=None, do_lower_case=None):
    """(lower-case?, why) of the runs of a study, as glue/train.py decides it (stilts.modeling)."""
    from stilts.modeling import ModelSource

    return ModelSource(bert_model, config_path, vocab_path).casing(do_lower_case)


def _same(value):
    """A value as args.json stores it, with paths made absolute, for comparing settings."""
    value = json.loads(json.dumps(value))
    return os.path.realpath(value) if isinstance(value, str) and os.path.exists(value) else value


def describe(args, stage_a, runs, examples, settings):
    """The plan in a few lines, before the first run: what each stage trains (rows x epochs) and scores,
    how many runs are left, the casing, and the estimate from this machine's recorded pace. Sets each
    run's `work` (examples trained, examples scored), which the later estimates use."""
    lines = []
    for kind, group in (("stage A", stage_a), ("target runs", runs)):
        parts = []
        for task in dict.fromkeys(run.task for run in group):
            mine = [run for run in group if run.task == task]
            for run in mine:
                run.work = run_work(run, *settings[run.folder], examples)
            trained, scored = mine[0].work
            epochs = settings[mine[0].folder][0].num_train_epochs
            parts.append(f"{task} {round(trained / epochs)} rows x {epochs:g} epoch(s), {scored} rows scored"
                         + (f", {len(mine)} runs" if len(mine) > 1 else ""))
        lines.append(f"stilts-run: {kind}: " + "; ".join(parts))
    todo = [run for run in stage_a + runs if not run.finished()]
    at_once = f"{args.jobs} at a time" if args.launcher == "local" else f"spread by {args.launcher}"
    lines.append(f"stilts-run: {len(todo)} of {len(stage_a) + len(runs)} runs to do, {at_once}")
    lower, why = study_casing(args.bert_model, args.shared.bert_config_json_path, args.shared.bert_vocab_path,
                              args.shared.do_lower_case)
    if lower is not None:
        lines.append(f"stilts-run: casing: {'lower-cased' if lower else 'as written'} ({why})")
    found, source = study_pace(args)
    if not todo:
        lines.append("stilts-run: every run finished before: nothing to train")
    elif found is None:
        lines.append(f"stilts-run: no estimate yet: no run of {os.path.basename(args.bert_model)} at "
                     f"{args.shared.max_seq_length} tokens in {precision(args)} has finished on this machine; the "
                     f"estimate follows the first runs")
    else:
        from stilts.launchers import format_seconds

        seconds = sum(found.seconds(*run.work) for run in todo) / (args.jobs if args.launcher == "local" else 1)
        lines.append(f"stilts-run: estimate: about {format_seconds(seconds)} ({source}: {found.train_per_s:.0f} "
                     f"examples/s trained, {found.score_per_s:.0f} scored)")
    return lines


def run_work(run, settings, files, examples):
    """(examples the run trains on, over its epochs; examples it scores: dev, sampled or not, and test)."""
    have = {split.key: len(examples[split.task.name, split.split, split.folder]) for split in files}
    rows = min(settings.train_examples_number or have["train"], have["train"])
    scored = sum(min(settings.dev_examples_number or n, n) if key.endswith("dev") else n
                 for key, n in have.items() if key != "train")
    return round(rows * settings.num_train_epochs), scored


def precision(args):
    from stilts.settings import TrainSettings

    return TrainSettings.of(args.shared).precision


def study_pace(args):
    """The pace this machine recorded for the study's runs (stilts.pace), and where it came from."""
    import torch

    from stilts import pace
    from stilts.finetune import pace_key
    from stilts.settings import features_cache_dir

    gpu = args.gpus_per_run or (args.launcher == "local" and torch.cuda.is_available())
    threads = args.cpus_per_run or max(1, (os.cpu_count() or 1) // (args.jobs if args.launcher == "local" else 1))
    key = pace_key(args.bert_model, args.shared.max_seq_length, precision(args), torch.device("cuda" if gpu else "cpu"))
    key = dataclasses.replace(key, threads=0 if gpu else threads)  # the threads of a run, not of this process
    return pace.lookup(features_cache_dir(args.shared), key)


@report_errors
def main(argv=None):
    args, passthrough = parse_args(argv)
    from stilts import study_summary  # SciPy: only once the flags are good

    stage_a, runs = plan(args, passthrough)
    examples, settings = check_before_training(args, stage_a + runs)
    baselines = study_summary.majority_baselines(args, examples)
    print("\n".join(describe(args, stage_a, runs, examples, settings)), flush=True)
    with run_folder.locked(args.output_dir):  # one stilts-run per study folder at a time
        from stilts.launchers import format_seconds, log_path

        started = time.monotonic()
        outcomes = launch(args, stage_a, runs, pace=lambda: study_pace(args)[0])
        count = lambda *statuses: sum(o.status in statuses for o in outcomes.values())  # noqa: E731
        failed = [run for run in stage_a + runs if not outcomes[run.folder].ok]
        print(f"stilts-run: {count('finished')} run(s) done, {count('skipped')} skipped as finished, "
              f"{len(failed)} failed or not started, in {format_seconds(time.monotonic() - started)}", flush=True)
        study_summary.write_summary(args, study_arms(args), [r for r in runs if outcomes[r.folder].ok], baselines,
                                    missing=[study_summary.relative(args, r.folder) for r in failed])
    if failed:
        for run in failed:
            outcome = outcomes[run.folder]
            why = outcome.error or "its stage A failed"
            print(f"stilts-run: {run.label} {outcome.status}: {why} (log: {log_path(run)})", file=sys.stderr)
        print("stilts-run: repeat the same command to retry them: finished runs are kept", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
