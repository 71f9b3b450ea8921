"""A STILTs study: which runs it is made of, where each lives, and what is checked before any starts.

Stage A fine-tunes the encoder on each intermediate task once. Every target task then trains from
each stage A checkpoint (a STILTs arm) and, with `compare`, from the plain model (the baseline arm),
once per seed; the same seeds in every arm, so that runs pair up. Each run is a stilts-train
(glue/train.py) process with its own folder and its own command line:

    OUT/intermediate_<task>/            stage A; its all_state.p is loaded by every run of its arm
    OUT/<target>/stilts/seed_<s>/       target runs from the stage A encoder (state_model_only);
                                        with several intermediates, OUT/<target>/stilts_<task>/seed_<s>/
    OUT/<target>/baseline/seed_<s>/     target runs from bert_model (compare)
    OUT/submission_input/<target>/      test predictions of the best dev run, for the submission export
    OUT/summary.json, summary.md, summary.png, and with compare transfer_matrix.md, .png

`Study` holds what the user asked for, typed; `Study.plan()` turns it into `Run`s, which the
launchers carry out (stilts.launchers) and the summary reads back (stilts.study_summary).
"""
import dataclasses
import functools
import json
import os
from typing import Optional

from stilts import imported, resources, run_folder
from stilts.errors import StiltsError
from stilts.io import check_writable_folder, read_json
from stilts.settings import TrainSettings, checkpoint_name, flag_names
from stilts.tasks import get_task, resolve_data_dir, run_splits

# glue/train.py flags the study sets for each run; passing them through would break the layout.
OWNED_FLAGS = set().union(*map(flag_names, ("task_name", "data_dir", "output_dir", "seed", "bert_load_mode",
                                            "bert_load_path", "do_train", "do_val", "do_test", "force_overwrite")),
                           {"--args_json"})
# Stage A must leave a checkpoint whose "model" entry holds the whole encoder.
STAGE_A_SAVE = ["--do_save", "--bert_save_mode", "model_all"]
# With adapters it holds only what trained (adapters, LayerNorms, head); stage B adds the base weights.
STAGE_A_SAVE_ADAPTERS = ["--do_save", "--bert_save_mode", "model_tunable"]
# Its periodic checkpoints (--train_save_every) keep the training state, so that it resumes when pre-empted;
# the whole model, adapters or not (stage A's flags name no base weights that a `tunable` resume would need).
STAGE_A_PERIODIC = ["--train_save_mode", "all"]
ADAPTER_CONFIGS = {name: resources.data_path("configs", f"{name}-adapter.json")
                   for name in ("bert-base-uncased", "bert-large-uncased")}
# What a study writes beside its tasks' folders (compared case-blind, for case-blind file systems); a
# task may not be named so, nor intermediate_<x>.
STUDY_NAMES = {"summary.json", "summary.md", "summary.png", "transfer_matrix.md", "transfer_matrix.png",
               "submission_input", "submitit", "export", run_folder.LOCK_NAME}
# Settings that change how a run executes or what it keeps, not what it learns: a finished run made
# with other values of these still counts when the study is repeated.
EXECUTION_ONLY = {"output_dir", "bert_load_path", "force_overwrite", "not_verbose", "print_trainable_params",
                  "local_rank", "no_cuda", "eval_batch_size", "features_cache_dir", "no_features_cache",
                  "do_test", "do_save", "bert_save_mode", "train_save_every", "train_save_mode", "do_val_history", "torch_compile",
                  "pad_to_multiple_of", "logging_steps", "report_to"}


def train_parser():
    """glue/train.py's parser: every run's flags are checked and read with it."""
    from stilts.run_settings import build_parser

    return build_parser()


@dataclasses.dataclass(frozen=True)
class Arm:
    """How a target is trained: from one intermediate's stage A (a STILTs arm) or from the plain model."""
    key: str                    # in summary.json: "stilts", "stilts:<intermediate>" or "baseline"
    intermediate: Optional[str] = None

    @property
    def folder(self):
        return self.key.replace(":", "_")


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

    @property
    def stage(self):
        """"stage A" or "target": runs of one stage and task take about as long."""
        return "stage A" if self.after is None and not self.arm else "target"

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


def parse_seeds(seeds, restarts):
    """The seeds of the target runs: --seeds S1,S2,... or 1..--restarts."""
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


def study_tasks(intermediates, targets):
    """{name: Task} of the study's task specs (GLUE names or task files): the study's folders,
    summaries and runs name tasks by name, so two tasks may not share one, nor take a study file's."""
    tasks = {}
    for task in map(get_task, intermediates + targets):
        if tasks.get(task.name, task).spec != task.spec:
            raise StiltsError(f"two tasks are named {task.name!r} ({tasks[task.name].spec} and {task.spec}); "
                              f"give them different names")
        tasks[task.name] = task
    for task in tasks.values():
        check_free_name(task.name, task.spec, "task name", "give the task another 'name'")
    return tasks


def check_free_name(name, where, what="name", advice="give it another name"):
    """A task or intermediate name must not be one of the study's own files and folders."""
    if name.lower() in STUDY_NAMES or name.lower().startswith("intermediate_"):
        raise StiltsError(f"{where}: the {what} {name!r} is taken by the study's own files and folders "
                          f"({', '.join(sorted(STUDY_NAMES))}, intermediate_<task>); {advice}")


def adapter_flags(bert_model, config_path):
    """Adapters: (the config flag every run needs, unless given; the folder of the base weights that
    stage B loads under the adapters)."""
    from stilts.modeling import WEIGHT_FILES, ModelSource  # torch and transformers: after parsing

    given = config_path
    config_path = config_path or ADAPTER_CONFIGS.get(bert_model)
    if config_path is None:
        raise StiltsError(f"--adapters with --bert_model {bert_model}: pass its adapter config too, "
                          f"--bert_config_json_path (e.g. configs/minilm-adapter.json for all-MiniLM-L6-v2)")
    if not getattr(ModelSource(bert_model, config_path).config(), "use_adapter", False):
        raise StiltsError(f"{config_path}: --adapters needs a config with \"use_adapter\": true")
    folder = ModelSource(bert_model).folder
    if not (folder and any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES)):
        raise StiltsError(f"--adapters: stage B loads the base weights under the adapters from --bert_model's "
                          f"folder, and {bert_model} has no local {' or '.join(WEIGHT_FILES)}; "
                          f"pass a model folder as --bert_model")
    return ([] if given else ["--bert_config_json_path", config_path]), os.path.abspath(folder)


@dataclasses.dataclass
class Study:
    """What the user asked for. Task specs are resolved to tasks, paths made absolute, the glue/train.py
    flags checked, in __post_init__: a Study that exists is a study that can be planned."""
    intermediates: list           # task specs: GLUE names or task files
    targets: list
    seeds: list                   # one target run per seed and arm
    bert_model: str
    output_dir: str
    train_flags: list = dataclasses.field(default_factory=list)         # glue/train.py flags of every run
    intermediate_flags: list = dataclasses.field(default_factory=list)  # ... of stage A only, after those
    intermediate_seed: int = 0    # fixed, so that adding restarts later reuses stage A
    intermediate_dev_examples: Optional[int] = None  # stage A scores a sample of its dev set
    compare: bool = False         # also train each target from bert_model (the baseline arm)
    glue_dir: Optional[str] = None
    no_test: bool = False
    adapters: bool = False
    export: bool = False          # each target's best dev run as a transformers folder, OUT/export/<target>/
    tasks: dict = dataclasses.field(init=False)       # name -> Task
    given: dict = dataclasses.field(init=False)       # intermediate name -> its model, taken as it is (imported)
    shared: object = dataclasses.field(init=False)    # the parsed glue/train.py settings of every run
    adapter_base: Optional[str] = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        if not self.intermediates:
            raise StiltsError("--intermediates: give at least one task, e.g. --intermediates mnli,qnli")
        if not self.targets:
            raise StiltsError("--targets: give at least one task, e.g. --targets rte,mrpc")
        parsed = {spec: imported.parse(spec) for spec in self.intermediates}  # name=PATH: no stage A
        self.given = dict(given for given in parsed.values() if given)
        self.tasks = study_tasks([spec for spec, given in parsed.items() if not given], self.targets)
        names = [given[0] if given else get_task(spec).name for spec, given in parsed.items()]
        clash = next((name for name in self.given if names.count(name) > 1), None)
        if clash:
            raise StiltsError(f"--intermediates: two intermediates are named {clash}; give the one taken as it "
                              f"is another name (NAME=PATH)")
        for name in self.given:
            check_free_name(name, f"--intermediate {name}=")
        self.intermediates = list(dict.fromkeys(names))
        self.targets = list(dict.fromkeys(get_task(t).name for t in self.targets))
        if not 0 <= self.intermediate_seed < 2 ** 32:
            raise StiltsError(f"--intermediate_seed {self.intermediate_seed}: must be from 0 to 2**32 - 1")
        for flags, where in ((self.train_flags, "pass-through"), (self.intermediate_flags, "--intermediate_args")):
            owned = [f for f in flags if f.split("=")[0] in OWNED_FLAGS]
            if owned:
                raise StiltsError(f"{owned[0]} ({where} flag): stilts-run sets it for each run; see stilts-run --help")
        dummy = ["--task_name", "rte", "--bert_model", "x", "--output_dir", "x"]
        _, unknown = train_parser().parse_known_args(self.train_flags + self.intermediate_flags + dummy)
        if unknown:
            raise StiltsError(f"not a stilts-run or glue/train.py flag: {' '.join(unknown)}")
        self.shared = train_parser().parse_args(self.train_flags + dummy)
        if self.intermediate_dev_examples is not None:
            if self.intermediate_dev_examples < 1:
                raise StiltsError(f"--intermediate_dev_examples {self.intermediate_dev_examples}: must be at least 1")
            self.intermediate_flags = self.intermediate_flags + ["--dev_examples_number",
                                                                 str(self.intermediate_dev_examples)]
        if any(task.default_folder() is None for task in self.tasks.values()):  # a GLUE task
            if not self.glue_dir:
                raise StiltsError("no GLUE data folder: pass --glue_dir or set GLUE_DIR")
            self.glue_dir = os.path.abspath(self.glue_dir)
        self.output_dir = os.path.abspath(self.output_dir)
        if os.path.isdir(self.bert_model):  # a local folder: the same absolute path in every run's args.json
            self.bert_model = os.path.abspath(self.bert_model)
        if self.adapters:
            config_flags, self.adapter_base = adapter_flags(self.bert_model, self.shared.bert_config_json_path)
            self.train_flags = self.train_flags + config_flags
            self.shared = train_parser().parse_args(self.train_flags + dummy)
        if self.export:
            check_exportable(self)

    def arms(self):
        """One STILTs arm per intermediate ("stilts" alone when there is one), and the baseline (compare)."""
        if len(self.intermediates) == 1:
            arms = [Arm("stilts", self.intermediates[0])]
        else:
            arms = [Arm(f"stilts:{name}", name) for name in self.intermediates]
        return arms + ([Arm("baseline")] if self.compare else [])

    def data_dir(self, task_name):
        return resolve_data_dir(self.tasks[task_name], glue_dir=self.glue_dir)

    def has_test(self, task_name):
        """Whether the target's test split(s) exist; a study on partial data skips the test predictions."""
        files = run_splits(self.tasks[task_name], self.data_dir(task_name), self.shared.mnli_mm_data_dir, test=True)
        try:
            for split in files:
                split.task.check_split("test", split.folder)
        except StiltsError as e:
            print(f"stilts-run: {e}: {task_name} runs will not predict the test set", flush=True)
            return False
        return True

    def plan(self):
        """(stage A runs, target runs): stage A of each intermediate, then for each target, seed and arm
        one run (arms side by side per seed)."""
        common = ["--bert_model", self.bert_model] + self.train_flags
        stage_a = {}
        checkpoints = {name: self.imported_checkpoint(name) for name in self.given}  # what the targets load
        for name in (name for name in self.intermediates if name not in self.given):
            folder = imported.folder(self, name)
            argv = (["--task_name", self.tasks[name].spec, "--data_dir", self.data_dir(name),
                     "--output_dir", folder, "--seed", str(self.intermediate_seed), "--do_train",
                     "--do_val", "--bert_load_mode", "from_pretrained"]
                    + merged_flags(common, self.intermediate_flags,
                                   STAGE_A_SAVE_ADAPTERS if self.adapters else STAGE_A_SAVE))
            settings = TrainSettings.of(train_parser().parse_args(argv))
            resumable = settings.train_save_every is not None
            if resumable:
                argv = merged_flags(argv, STAGE_A_PERIODIC)
            checkpoints[name] = os.path.join(folder, checkpoint_name("all_state", settings.checkpoint_format))
            stage_a[name] = Run(f"stage A: {name}", folder, argv,
                                outputs=(os.path.basename(checkpoints[name]), "val_metrics.json"), task=name,
                                resumable=resumable, metric=self.tasks[name].metric)
        runs = []
        resumable = TrainSettings.of(self.shared).resumable
        for target in self.targets:
            task = self.tasks[target]
            test = not self.no_test and self.has_test(target)
            outputs = ["val_metrics.json"]
            if test:
                outputs += [split.key + "_preds.csv" for split in
                            run_splits(task, self.data_dir(target), self.shared.mnli_mm_data_dir, test=True)]
            save = [] if self.shared.do_save or not self.export else [  # what --export reads: the model alone
                "--do_save", "--bert_save_mode", "model_all", "--train_save_mode",
                TrainSettings.of(self.shared).periodic_save_mode]
            if self.shared.do_save or self.export:
                outputs.append(checkpoint_name("all_state", self.shared.checkpoint_format))
            for seed in self.seeds:
                for arm in self.arms():
                    folder = os.path.join(self.output_dir, target, arm.folder, f"seed_{seed}")
                    after = stage_a.get(arm.intermediate)  # None: the baseline, or an intermediate taken as it is
                    source = (["--bert_load_mode", "state_model_only", "--bert_load_path",
                               checkpoints[arm.intermediate]]
                              + (["--bert_base_path", self.adapter_base] if self.adapters else [])
                              if arm.intermediate else ["--bert_load_mode", "from_pretrained"])
                    argv = (["--task_name", task.spec, "--data_dir", self.data_dir(target),
                             "--output_dir", folder, "--seed", str(seed), "--do_train", "--do_val"]
                            + (["--do_test"] if test else []) + source + common + save)
                    runs.append(Run(f"{target} {arm.key} seed {seed}", folder, argv, tuple(outputs), task=target,
                                    arm=arm.key, seed=seed, after=after, resumable=resumable, metric=task.metric))
        return list(stage_a.values()), runs

    def imported_checkpoint(self, name):
        """Where an intermediate taken as it is lies once imported, in the study's checkpoint format."""
        return os.path.join(imported.folder(self, name), checkpoint_name("all_state", self.shared.checkpoint_format))

    def import_intermediates(self, report=print):
        """Write the checkpoint of each intermediate taken as it is (stilts.imported), before any run;
        an intermediate this study imported before may not be trained now in its place."""
        for name in self.intermediates:
            if name not in self.given:
                imported.check_not_imported(self, name)
        for name, source in self.given.items():
            imported.bring_in(self, name, source, self.tasks[self.targets[0]], self.imported_checkpoint(name), report)

    def casing(self):
        """(lower-case?, why) of the study's runs, as glue/train.py decides it."""
        return model_casing(self.bert_model, self.shared.bert_config_json_path, self.shared.bert_vocab_path,
                            self.shared.do_lower_case)

    def precision(self):
        return TrainSettings.of(self.shared).precision

    def pace(self, gpu, threads):
        """The pace this machine recorded for the study's runs on a GPU or `threads` CPU cores each
        (stilts.pace), and where it came from."""
        import torch

        from stilts import pace
        from stilts.settings import features_cache_dir

        key = pace.key_of(self.bert_model, self.shared.max_seq_length, self.precision(),
                          torch.device("cuda" if gpu else "cpu"), threads)
        return pace.lookup(features_cache_dir(self.shared), key)


def check_exportable(study):
    """--export: refuse up front what stilts-export would refuse after the study (stilts/export.py)."""
    if study.adapters:
        raise StiltsError("--export with --adapters: an adapter model cannot be exported (its adapters do not "
                          "merge into the weights, and transformers' classes have no place for them)")
    choice = [name for name in study.targets if study.tasks[name].is_multiple_choice]
    if choice:
        from stilts.modeling import ModelSource  # torch and transformers: after parsing

        if not ModelSource(study.bert_model, study.shared.bert_config_json_path).is_bert():
            raise StiltsError(f"--export: {choice[0]} is a multiple-choice task, and only BERT's multiple-choice "
                              f"models export (transformers' other multiple-choice classes have another head)")


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


@functools.lru_cache(maxsize=None)
def model_casing(bert_model, config_path=None, vocab_path=None, do_lower_case=None):
    """(lower-case?, why), as glue/train.py decides it (stilts.modeling)."""
    from stilts.modeling import ModelSource

    return ModelSource(bert_model, config_path, vocab_path).casing(do_lower_case)


# ---------------------------------------------------------------------------------------------
# Checked before the first run


def check_before_training(study, runs):
    """Every data file (each row of it), flag and finished run is checked before the first run starts,
    so that bad input stops the study in one line, not a run hours in (where trying again would not
    help). Each split the runs will read is read here once. Returns (their examples, {(task name, split,
    folder): examples}; each run's parsed settings and split files, {run folder: (settings, files)})."""
    from stilts.run_settings import check_args

    check_writable_folder(study.output_dir, "--output_dir")
    splits, wanted = {}, []
    for run in runs:
        check_nothing_in_the_way(run)
        settings = train_parser().parse_args(run.argv + ["--force-overwrite"])
        if settings.bert_load_path and not os.path.isfile(settings.bert_load_path):  # stage A writes it
            settings.bert_load_mode, settings.bert_load_path = "from_pretrained", None
        task = study.tasks[run.task]
        check_args(settings, data_flag="--glue_dir" if task.default_folder() is None else f"the task file {task.spec}")
        files = run_splits(task, settings.data_dir, settings.mnli_mm_data_dir, train=True, dev=True,
                           test=settings.do_test)
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
    wanted = vars(train_parser().parse_args(run.argv))
    if wanted["do_lower_case"] is None:  # the run recorded the casing it followed from the model
        wanted["do_lower_case"] = bool(model_casing(wanted["bert_model"], wanted["bert_config_json_path"],
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


def _same(value):
    """A value as args.json stores it, with paths made absolute, for comparing settings."""
    value = json.loads(json.dumps(value))
    return os.path.realpath(value) if isinstance(value, str) and os.path.exists(value) else value


# ---------------------------------------------------------------------------------------------
# The plan, in a few lines


def describe(study, stage_a, runs, examples, settings, at_once, estimate):
    """The plan before the first run: what each stage trains (rows x epochs) and scores, how many runs
    are left (`at_once`: how they run, e.g. "1 at a time"), the casing, and `estimate(todo)`: (seconds,
    where the pace came from, the pace) or None. Sets each run's `work` (examples trained, examples
    scored), which the later estimates use."""
    from stilts.progress import format_seconds

    lines = [f"stilts-run: intermediate {name}: the encoder of {source}, taken as it is (no stage A)"
             for name, source in study.given.items()]
    for kind, group in (("stage A", stage_a), ("target runs", runs)):
        parts = []
        for task in dict.fromkeys(run.task for run in group):
            mine = [run for run in group if run.task == task]
            for run in mine:
                run.work = run_work(*settings[run.folder], examples)
            trained, scored = mine[0].work
            epochs = settings[mine[0].folder][0].num_train_epochs
            parts.append(f"{task} {round(trained / epochs)} rows x {epochs:g} epoch(s), {scored} rows scored"
                         + (f", {len(mine)} runs" if len(mine) > 1 else ""))
        if parts:
            lines.append(f"stilts-run: {kind}: " + "; ".join(parts))
    todo = [run for run in stage_a + runs if not run.finished()]
    lines.append(f"stilts-run: {len(todo)} of {len(stage_a) + len(runs)} runs to do, {at_once}")
    lower, why = study.casing()
    if lower is not None:
        lines.append(f"stilts-run: casing: {'lower-cased' if lower else 'as written'} ({why})")
    found = estimate(todo) if todo else None
    if not todo:
        lines.append("stilts-run: every run finished before: nothing to train")
    elif found is None:
        lines.append(f"stilts-run: no estimate yet: no run of {os.path.basename(study.bert_model)} at "
                     f"{study.shared.max_seq_length} tokens in {study.precision()} has finished on this machine; the "
                     f"estimate follows the first runs")
    else:
        seconds, source, pace = found
        lines.append(f"stilts-run: estimate: about {format_seconds(seconds)} ({source}: {pace.train_per_s:.0f} "
                     f"examples/s trained, {pace.score_per_s:.0f} scored)")
    return lines


def run_work(settings, files, examples):
    """(examples the run trains on, over its epochs; examples it scores: dev, sampled or not, and test)."""
    have = {split.key: len(examples[split.task.name, split.split, split.folder]) for split in files}
    rows = min(settings.train_examples_number or have["train"], have["train"])
    scored = sum(min(settings.dev_examples_number or n, n) if key.endswith("dev") else n
                 for key, n in have.items() if key != "train")
    return round(rows * settings.num_train_epochs), scored
