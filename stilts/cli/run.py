"""`stilts-run`: a whole STILTs study in one command.

Stage A fine-tunes the encoder on each intermediate task once; every target then trains from each
stage A checkpoint and, with --compare, from the plain model, once per seed (stilts.study has the
layout). Each run is a stilts-train (glue/train.py) subprocess with its own folder, so any
glue/train.py flag passes through and a crash in one run leaves the others intact. This module only
reads the command line: it builds a `Study` and `LaunchSettings`, checks the study, prints its plan
and hands it to the launcher (stilts.launchers). Repeating the command skips finished runs, so a
study that crashed resumes where it stopped.
"""
import os
import shlex
import sys

from stilts import launchers, run_folder
from stilts.cli import report_errors
from stilts.errors import StiltsError
from stilts.flags import ArgumentParser, add_flags
from stilts.study import Study, check_before_training, describe, parse_seeds


def build_parser():
    p = ArgumentParser(
        prog="stilts-run", allow_abbrev=False,
        description="STILTs study: intermediate task once, then each target with restarts "
                    "(and without STILTs with --compare). Other flags go to every glue/train.py run.")
    p.add_argument("--intermediate", help="intermediate task, e.g. mnli, or a task file (*.json); or NAME=MODEL, "
                                          "an intermediate model you have (an all_state.p, a state dict such as "
                                          "the seed's mnli.p, a model folder or a hub id): no stage A for it")
    p.add_argument("--intermediates", help="several intermediate tasks, e.g. mnli,qnli,qqp,sst (or NAME=MODEL): "
                                           "each trains once, every target from each (the transfer matrix); "
                                           "instead of --intermediate")
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
    p.add_argument("--export", action="store_true",
                   help="write each target's best dev run as a transformers folder with a model card, "
                        "OUT/export/<target>/ (as stilts-export does; the target runs then save all_state.p)")
    launch = p.add_argument_group("where the runs run (docs/pipeline.md#many-gpus-and-clusters)")
    add_flags(launch, launchers.LaunchSettings)
    p.add_argument("--adapters", action="store_true",
                   help="train adapters instead of the whole encoder: the adapter config (configs/ for "
                        "bert-base/large-uncased, else --bert_config_json_path), a model_tunable stage A, and "
                        "--bert_model's folder as the base weights of stage B")
    return p


def parse_args(argv=None):
    """(the Study, where its runs run) from stilts-run's flags; every other flag is a glue/train.py flag
    passed through to every run."""
    flags, passthrough = build_parser().parse_known_args(argv)
    launch = launchers.LaunchSettings.from_flags(flags)  # cheap checks first: the Study may load the model's config
    try:
        intermediate_flags = shlex.split(flags.intermediate_args)
    except ValueError as e:  # an unbalanced quote
        raise StiltsError(f"--intermediate_args {flags.intermediate_args!r}: {e}") from None
    if (flags.intermediate is None) == (flags.intermediates is None):
        raise StiltsError("give one of --intermediate TASK and --intermediates TASK,TASK,...")
    if flags.intermediate and "," in flags.intermediate:
        raise StiltsError(f"--intermediate {flags.intermediate}: one task; for several, --intermediates")
    names = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    study = Study(intermediates=names(flags.intermediates or flags.intermediate), targets=names(flags.targets),
                  seeds=parse_seeds(flags.seeds, flags.restarts), bert_model=flags.bert_model,
                  output_dir=flags.output_dir, train_flags=passthrough, intermediate_flags=intermediate_flags,
                  intermediate_seed=flags.intermediate_seed, intermediate_dev_examples=flags.intermediate_dev_examples,
                  compare=flags.compare, glue_dir=flags.glue_dir, no_test=flags.no_test, adapters=flags.adapters,
                  export=flags.export)
    return study, launch


def report(line):
    print(line, flush=True)


@report_errors
def main(argv=None):
    study, launch = parse_args(argv)
    from stilts import study_summary  # SciPy: only once the flags are good
    from stilts.attempt import log_path

    stage_a, runs = study.plan()
    examples, settings = check_before_training(study, stage_a + runs)
    baselines = study_summary.majority_baselines(study, examples)
    at_once, parallel = launch.at_once()
    pace = lambda: study.pace(*launch.run_device())  # noqa: E731

    def estimate(todo):
        found, source = pace()
        return None if found is None else (sum(found.seconds(*run.work) for run in todo) / parallel, source, found)

    report("\n".join(describe(study, stage_a, runs, examples, settings, at_once, estimate)))
    with run_folder.locked(study.output_dir):  # one stilts-run per study folder at a time
        study.import_intermediates(report)  # NAME=MODEL intermediates: checked, written once
        failed = launchers.run_study(study, stage_a, runs, launch.executor(study.output_dir), baselines, report,
                                     pace=lambda: pace()[0])
    if failed:
        for run, outcome in failed:
            why = outcome.error or "its stage A failed"
            print(f"stilts-run: {run.label} {outcome.status}: {why} (log: {log_path(run)})", file=sys.stderr)
        print("stilts-run: repeat the same command to retry them: finished runs are kept", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
