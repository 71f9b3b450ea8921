"""stilts-run on a tiny random BERT and the fixture data: two targets, two restarts, --compare."""
import argparse
import collections
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import FIXTURES, REPO
from stilts import study_summary
from stilts.cli import run as stilts_run
from stilts.metrics import majority_baseline
from stilts.study import Arm, Run, parse_seeds
from stilts.tasks import get_task

TARGETS = ("rte", "stsb")  # a classification and a regression target
SEEDS = (1, 2)
ARMS = ("stilts", "baseline")
TRAIN_FLAGS = ["--do_lower_case", "--not-verbose", "--num_train_epochs", "1", "--train_examples_number", "8",
               "--train_batch_size", "4", "--eval_batch_size", "64", "--max_seq_length", "64"]


def study_argv(out, model, *extra):
    return ["--intermediate", "mnli", "--targets", ",".join(TARGETS), "--restarts", str(len(SEEDS)), "--compare",
            "--bert_model", model, "--glue_dir", FIXTURES, "--output_dir", str(out), *TRAIN_FLAGS, *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert_dir):
    """The study run as a user runs it: the console command in a subprocess."""
    out = tmp_path_factory.mktemp("study") / "out"
    env = dict(os.environ, STILTS_CACHE_DIR=str(out.parent / "cache"))
    result = subprocess.run([sys.executable, "-m", "stilts.cli.run",
                             *study_argv(out, tiny_bert_dir, "--report_to", "tensorboard")],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_dirs(out):
    return {(t, v, s): out / t / v / f"seed_{s}" for t in TARGETS for v in ARMS for s in SEEDS}


def test_folder_layout_and_run_settings(study):
    out, _ = study
    checkpoint = out / "intermediate_mnli" / "all_state.p"
    assert checkpoint.is_file()
    assert read_json(out / "intermediate_mnli" / "args.json")["bert_save_mode"] == "model_all"
    for (target, variant, seed), folder in run_dirs(out).items():
        assert {"args.json", "val_metrics.json", "val_preds.csv", "test_preds.csv"} <= set(os.listdir(folder))
        assert "all_state.p" not in os.listdir(folder), "target runs keep no checkpoint unless --do_save is passed"
        args = read_json(folder / "args.json")
        assert (args["task_name"], args["seed"]) == (target, seed)
        assert args["data_dir"] == os.path.join(FIXTURES, get_task(target).folder)
        if variant == "stilts":
            assert (args["bert_load_mode"], args["bert_load_path"]) == ("state_model_only", str(checkpoint))
        else:
            assert (args["bert_load_mode"], args["bert_load_path"]) == ("from_pretrained", None)
        assert args["learning_rate"] == 5e-5 and args["train_examples_number"] == 8  # pass-through reached it


def test_study_folder_is_one_tensorboard_log_root(study):
    """--report_to reaches every run, and each writes its curves into its own folder under the study."""
    out, _ = study
    folders = [out / "intermediate_mnli", *run_dirs(out).values()]
    assert all(list((folder / "tensorboard").glob("events.out.tfevents.*")) for folder in folders)


def test_summary_recomputed_from_val_metrics(study):
    out, _ = study
    summary = read_json(out / "summary.json")
    assert set(summary) == {"intermediate", "targets"} and summary["intermediate"] == "mnli"
    assert set(summary["targets"]) == set(TARGETS)
    for target in TARGETS:
        task = get_task(target)
        folder = os.path.join(FIXTURES, task.folder)
        train = task.label_ids(task.read("train", folder))
        dev = task.label_ids(task.read("dev", folder))
        baseline = majority_baseline(task, train, dev)[task.metric]
        entry = summary["targets"][target]
        assert entry["majority_baseline"] == pytest.approx(baseline)
        for variant in ARMS:
            s = entry[variant]
            assert set(s) == {"metric", "runs", "mean", "std", "min", "max", "degenerate", "best_dir"} | (
                {"gain"} if variant == "stilts" else set())
            values = [read_json(out / target / variant / f"seed_{seed}" / "val_metrics.json")["metrics"][task.metric]
                      for seed in SEEDS]
            assert s["metric"] == task.metric
            assert s["runs"] == [{"seed": seed, "dir": f"{target}/{variant}/seed_{seed}", "value": v}
                                 for seed, v in zip(SEEDS, values)]
            assert s["mean"] == pytest.approx(np.mean(values))
            assert s["std"] == pytest.approx(np.std(values, ddof=1))
            assert (s["min"], s["max"]) == (min(values), max(values))
            assert s["degenerate"] == sum(v <= baseline + 1e-9 for v in values)
            assert s["best_dir"] == f"{target}/{variant}/seed_{SEEDS[int(np.argmax(values))]}"
        differences = [a["value"] - b["value"] for a, b in zip(entry["stilts"]["runs"], entry["baseline"]["runs"])]
        gain = entry["stilts"]["gain"]
        assert gain["mean"] == pytest.approx(np.mean(differences)) and gain["paired_runs"] == len(SEEDS)
        assert gain["interval"] == "bootstrap" and min(differences) <= gain["ci95_low"] <= gain["ci95_high"]


def test_best_run_feeds_the_submission_input(study):
    out, _ = study
    summary = read_json(out / "summary.json")
    for target in TARGETS:
        entry = summary["targets"][target]
        runs = entry["stilts"]["runs"] + entry["baseline"]["runs"]
        best = max(runs, key=lambda r: r["value"])  # first of equal bests, STILTs first
        assert entry["submission_from"] == best["dir"]
        copied = (out / "submission_input" / target / "test_preds.csv").read_bytes()
        assert copied == (out / best["dir"] / "test_preds.csv").read_bytes()
        n_test = len(get_task(target).read("test", os.path.join(FIXTURES, get_task(target).folder)))
        assert len(copied.decode().splitlines()) == n_test


def test_table_plot_and_stdout(study):
    out, result = study
    table = (out / "summary.md").read_text()
    assert table in result.stdout
    summary = read_json(out / "summary.json")
    for target in TARGETS:
        for variant in ARMS:
            s = summary["targets"][target][variant]
            gain = study_summary.format_gain(s["gain"]) if variant == "stilts" else ""
            row = (f"| {target} | {variant} | {s['metric']} | {100 * s['mean']:.1f} ± {100 * s['std']:.1f} "
                   f"| {100 * s['min']:.1f} | {100 * s['max']:.1f} | {s['degenerate']}/2 | {gain} | {s['best_dir']} |")
            assert row in table
    matrix = (out / "transfer_matrix.md").read_text()
    assert matrix in result.stdout and "| mnli | " in matrix
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "summary.png").exists() and "matplotlib is not installed" in result.stdout
    else:
        for name in ("summary.png", "transfer_matrix.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_terminal_gets_a_line_per_run(study):
    """A study's terminal shows its plan, a start and an end line per run (its time and dev score) and
    the summary; each run's own output (settings, metrics) goes to its log."""
    out, result = study
    tables = set((out / "summary.md").read_text().splitlines() + (out / "transfer_matrix.md").read_text().splitlines())
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith(("stilts-run: ", "wrote ")) and line not in tables] == []
    assert len([line for line in lines if ": start (log: " in line]) == 9
    ends = [line for line in lines if ": done in " in line]
    assert len(ends) == 9 and all(", dev acc " in line or ", dev corr " in line for line in ends), ends
    assert "stilts-run: stage A: mnli 8 rows x 1 epoch(s), 80 rows scored" in result.stdout
    assert "stilts-run: 9 of 9 runs to do, 1 at a time" in result.stdout
    assert "stilts-run: no estimate yet: no run of" in result.stdout  # a fresh cache: no pace recorded
    for folder in run_dirs(out).values():
        assert '"metrics"' in (folder / "stilts-run.log").read_text()


def test_rerun_skips_finished_runs_and_redoes_a_crashed_one(study, tiny_bert_dir, capfd):
    out, first = study
    assert "9 run(s) done, 0 skipped" in first.stdout
    metrics_files = [folder / "val_metrics.json" for folder in run_dirs(out).values()]
    before = {p: p.stat().st_mtime_ns for p in metrics_files}
    checkpoint_time = (out / "intermediate_mnli" / "all_state.p").stat().st_mtime_ns

    stilts_run.main(study_argv(out, tiny_bert_dir))  # in-process: no run starts, so no subprocess
    assert "0 run(s) done, 9 skipped as finished" in capfd.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in metrics_files} == before
    assert (out / "intermediate_mnli" / "all_state.p").stat().st_mtime_ns == checkpoint_time

    # A run that died before writing its metrics is redone in place; the others are kept.
    crashed = out / "rte" / "baseline" / "seed_2"
    (crashed / "val_metrics.json").unlink()
    stilts_run.main(study_argv(out, tiny_bert_dir))
    resumed = capfd.readouterr().out
    assert "1 run(s) done, 8 skipped as finished" in resumed
    assert f"redoing the unfinished run in {crashed} (no val_metrics.json)" in resumed
    assert "--force-overwrite" in (crashed / "stilts-run.log").read_text()  # the command goes to the run's log
    assert (crashed / "val_metrics.json").is_file()
    assert all(p.stat().st_mtime_ns == before[p] for p in metrics_files if p.parent != crashed)


def run_main(capsys, *argv):
    """stilts_run.main in-process, for a command line it must refuse: (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        stilts_run.main(list(argv))
    return e.value.code, capsys.readouterr().err


def test_changed_settings_are_refused_before_any_run(study, tiny_bert_dir, capsys):
    out, _ = study
    code, err = run_main(capsys, *study_argv(out, tiny_bert_dir, "--learning_rate", "1e-3"))
    assert code == 2
    assert "used other settings" in err and "--learning_rate 5e-05 -> 0.001" in err


BASE = ["--intermediate", "mnli", "--targets", "rte", "--restarts", "2", "--bert_model", "x",
        "--output_dir", "out", "--glue_dir", FIXTURES]


@pytest.mark.parametrize("extra, message", [
    (["--task_name", "rte"], "--task_name (pass-through flag): stilts-run sets it"),
    (["--seed=3"], "--seed=3 (pass-through flag)"),
    (["--intermediate_args", "--do_test --bf16"], "--do_test (--intermediate_args flag)"),
    (["--no_such_flag", "1"], "not a stilts-run or glue/train.py flag: --no_such_flag 1"),
    (["--seeds", "1,2,3"], "--restarts 2 but --seeds lists 3 seeds"),
    (["--targets", "rte,nope"], "unknown task 'nope'"),
    (["--intermediates", "mnli,qnli"], "give one of --intermediate TASK and --intermediates TASK,TASK,..."),
])
def test_bad_command_lines(capsys, extra, message):
    code, err = run_main(capsys, *BASE, *extra)
    assert code == 2 and message in err


def test_a_study_needs_an_intermediate(capsys):
    code, err = run_main(capsys, *BASE[2:])
    assert code == 2 and "give one of --intermediate TASK and --intermediates" in err
    code, err = run_main(capsys, *BASE[2:], "--intermediates", "mnli,nope")
    assert code == 2 and "unknown task 'nope'" in err


def test_a_grid_of_intermediates_and_targets(tmp_path, tiny_bert_dir):
    """--intermediates: one stage A each, every target from each and from the plain model, paired
    by seed; summary.json has an arm per intermediate with its gain; the transfer matrix."""
    out = tmp_path / "grid"
    stilts_run.main(["--intermediates", "mnli,qnli", "--targets", "stsb", "--seeds", "1,2", "--compare",
                     "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", str(out), "--no_test",
                     *TRAIN_FLAGS, "--learning_rate", "1e-3"])
    summary = read_json(out / "summary.json")
    assert summary["intermediates"] == ["mnli", "qnli"] and "intermediate" not in summary
    entry = summary["targets"]["stsb"]
    assert set(entry) == {"majority_baseline", "stilts:mnli", "stilts:qnli", "baseline"}
    for intermediate in ("mnli", "qnli"):
        arm = entry[f"stilts:{intermediate}"]
        assert [r["dir"] for r in arm["runs"]] == [f"stsb/stilts_{intermediate}/seed_{s}" for s in (1, 2)]
        args = read_json(out / "stsb" / f"stilts_{intermediate}" / "seed_1" / "args.json")
        assert args["bert_load_path"] == str(out / f"intermediate_{intermediate}" / "all_state.p")
        differences = [a["value"] - b["value"] for a, b in zip(arm["runs"], entry["baseline"]["runs"])]
        assert arm["gain"]["mean"] == pytest.approx(np.mean(differences)) and arm["gain"]["paired_runs"] == 2
    assert "gain" not in entry["baseline"]
    # The two stage A runs learned different encoders, so the arms score differently.
    values = {key: [r["value"] for r in entry[key]["runs"]] for key in ("stilts:mnli", "stilts:qnli", "baseline")}
    assert len({tuple(v) for v in values.values()}) == 3, values
    matrix = (out / "transfer_matrix.md").read_text()
    for intermediate in ("mnli", "qnli"):
        gain = entry[f"stilts:{intermediate}"]["gain"]
        assert f"| {intermediate} | {study_summary.format_gain(gain)} (" in matrix
    assert "| stsb (corr) |" in matrix


def test_missing_data_is_reported_before_training(capsys, tmp_path):
    (tmp_path / "RTE").mkdir()
    code, err = run_main(capsys, *BASE, "--glue_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "MNLI/train.tsv: file not found" in err
    assert not (tmp_path / "out").exists()


def test_seeds():
    assert parse_seeds(None, 3) == [1, 2, 3]
    assert parse_seeds("7,3", None) == [7, 3]
    for bad in ("1,1", "a", "-1"):
        with pytest.raises(Exception, match="--seeds"):
            parse_seeds(bad, None)


def test_degenerate_and_best_rules(tmp_path):
    """At or below the baseline is degenerate (NaN too); ties go to the first run."""
    class Args:
        output_dir = str(tmp_path)
        tasks = {"rte": get_task("rte")}

    values = [0.6, 0.5, 0.6, 0.4, math.nan]
    runs = []
    for seed, value in enumerate(values):
        folder = tmp_path / f"seed_{seed}"
        folder.mkdir()
        (folder / "val_metrics.json").write_text(json.dumps({"loss": 1.0, "metrics": {"acc": value}}))
        runs.append(Run(f"rte seed {seed}", str(folder), [], ("val_metrics.json",), "rte", "stilts", seed))
    s = study_summary.arm_summary(Args, "rte", runs, baseline=0.5)
    assert s["degenerate"] == 3  # 0.5 (equal), 0.4, NaN
    assert s["best_dir"] == "seed_0"
    assert [r["seed"] for r in s["runs"]] == [0, 1, 2, 3, 4]


GLUE_TASKS = ("cola", "sst", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def hand_majority_baseline(task, folder):
    """The majority-class dev metric computed from the label strings, independently of stilts.metrics."""
    train = [e.label for e in task.read("train", folder)]
    dev = [e.label for e in task.read("dev", folder)]
    if task.is_regression:
        return 0.0  # a constant prediction has no correlation
    majority = collections.Counter(train).most_common(1)[0][0]
    if task.metric == "mcc":
        return 0.0  # a constant prediction has an MCC of 0
    acc = sum(d == majority for d in dev) / len(dev)
    if task.metric == "acc_and_f1":  # MRPC and QQP: F1 of the label "1"
        return (acc + f1_score(dev, [majority] * len(dev), pos_label="1", zero_division=0.0)) / 2
    return acc


def test_summary_for_every_glue_task_with_its_real_label_strings(tmp_path):
    """Majority baseline, degenerate count and tables on each task's real labels (MRPC/QQP: '0'/'1')."""
    args = argparse.Namespace(intermediate="mnli", targets=list(GLUE_TASKS), glue_dir=FIXTURES,
                              output_dir=str(tmp_path), no_test=True,
                              tasks={name: get_task(name) for name in ["mnli", *GLUE_TASKS]})
    folders = {name: os.path.join(FIXTURES, get_task(name).folder) for name in GLUE_TASKS}
    examples = {(name, split, folder): get_task(name).read(split, folder)
                for name, folder in folders.items() for split in ("train", "dev")}
    baselines = study_summary.majority_baselines(args, examples)
    runs = []
    for target in GLUE_TASKS:
        task = get_task(target)
        expected = hand_majority_baseline(task, os.path.join(FIXTURES, task.folder))
        assert baselines[target] == pytest.approx(expected, abs=1e-12), target
        for seed, value in enumerate([expected + 0.1, expected, expected - 0.1]):  # above, at, below
            folder = tmp_path / target / "stilts" / f"seed_{seed}"
            folder.mkdir(parents=True)
            (folder / "val_metrics.json").write_text(json.dumps({"loss": 0.5, "metrics": {task.metric: value}}))
            runs.append(Run(f"{target} seed {seed}", str(folder), [], ("val_metrics.json",),
                                     target, "stilts", seed))
    summary = study_summary.summarize(args, [Arm("stilts", "mnli")], runs, baselines)
    table = study_summary.markdown(args, summary)
    for target in GLUE_TASKS:
        entry = summary["targets"][target]["stilts"]
        assert entry["degenerate"] == 2, target
        assert entry["best_dir"] == f"{target}/stilts/seed_0"
        assert f"| {target} | stilts | {get_task(target).metric} |" in table
