"""The shell scripts in scripts/, run for real on a tiny random BERT and the fixture data.

The per-task wrappers are also run with a stand-in Python that records its arguments, which
checks every task's command line without nine training runs.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO
from stilts import run_settings
from stilts.tasks import get_task

SCRIPTS = os.path.join(REPO, "scripts")
TASKS = ("cola", "sst", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
TINY = ["--num_train_epochs", "1", "--train_examples_number", "8", "--eval_batch_size", "64", "--not-verbose"]
DEMO_DATA = os.path.join(REPO, "demo", "glue_data")


def run_script(name, *args, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "BERT_MODEL", "OUTPUT_DIR", "GLUE_DIR")}
    full_env.update(env or {})
    result = subprocess.run(["bash", os.path.join(SCRIPTS, name), *map(str, args)], capture_output=True, text=True,
                            env=full_env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def recording_python(tmp_path):
    """A stand-in for Python that appends its arguments, as one JSON list per call, to a log."""
    log = tmp_path / "calls.jsonl"
    stub = tmp_path / "python"
    stub.write_text(f"#!/bin/sh\n{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" "
                    f">> {log}\n")
    stub.chmod(0o755)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return str(stub), calls


@pytest.mark.parametrize("task", TASKS)
def test_task_script_command(task, recording_python, tmp_path, monkeypatch):
    stub, calls = recording_python
    run_script(f"run_{task}.sh", "--learning_rate", "3e-5",
               env={"PYTHON": stub, "GLUE_DIR": FIXTURES, "BERT_MODEL": "my-model", "OUTPUT_DIR": str(tmp_path)})
    (argv,) = calls()
    assert argv[0] == os.path.join(REPO, "glue", "train.py")
    args = run_settings.build_parser().parse_args(argv[1:])
    assert (args.task_name, args.bert_model, args.output_dir) == (task, "my-model", os.path.join(tmp_path, task))
    assert (args.train_batch_size, args.num_train_epochs, args.bert_save_mode) == (24, 3.0, "model_all")
    assert args.do_train and args.do_val and args.do_test and args.do_val_history and args.do_save
    assert args.do_lower_case and args.bert_load_mode == "from_pretrained"
    assert args.learning_rate == 3e-5, "extra flags come last and override the defaults"
    monkeypatch.setenv("GLUE_DIR", FIXTURES)
    args.bert_model = "bert-base-uncased"  # a config at hand: check_args reads its position count
    run_settings.check_args(args)  # the task's files are where the script expects them


def test_python_and_environment_defaults(tmp_path):
    show = "source scripts/lib.sh; echo \"$PYTHON|$BERT_MODEL|$OUTPUT_DIR|$BERT_ALL_DIR\""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "BERT_MODEL", "OUTPUT_DIR", "BERT_ALL_DIR")}
    out = subprocess.run(["bash", "-c", show], env=dict(env, GLUE_DIR=FIXTURES), cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    venv = os.path.join(REPO, ".venv", "bin", "python")
    python = venv if os.access(venv, os.X_OK) else "python3"
    assert out == f"{python}|bert-large-uncased|runs|{os.path.join(REPO, 'cache', 'bert_metadata')}"
    out = subprocess.run(["bash", "-c", show], env=dict(env, GLUE_DIR=FIXTURES, PYTHON="/opt/py", BERT_ALL_DIR="/b"),
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "/opt/py|bert-large-uncased|runs|/b"


def test_missing_glue_dir_and_usage(recording_python):
    stub, calls = recording_python
    result = run_script("run_rte.sh", env={"PYTHON": stub}, check=False)
    assert result.returncode != 0 and "set GLUE_DIR" in result.stderr
    result = run_script("stilts.sh", "mnli", env={"PYTHON": stub, "GLUE_DIR": FIXTURES}, check=False)
    assert result.returncode == 2 and "usage: scripts/stilts.sh INTERMEDIATE TARGET" in result.stderr
    assert calls() == []


# ---------------------------------------------------------------------------------------------
# Real runs


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("scripts")
    return {"PYTHON": sys.executable, "GLUE_DIR": FIXTURES, "BERT_MODEL": tiny_bert_dir,
            "OUTPUT_DIR": str(root / "runs"), "STILTS_CACHE_DIR": str(root / "cache")}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_run_rte_for_real(env):
    run_script("run_rte.sh", *TINY, env=env)
    out = os.path.join(env["OUTPUT_DIR"], "rte")
    assert {"all_state.p", "val_metrics.json", "val_metrics_history.json", "test_preds.csv"} <= set(os.listdir(out))
    args = read_json(os.path.join(out, "args.json"))
    assert (args["train_batch_size"], args["learning_rate"], args["bert_model"]) == (24, 2e-5, env["BERT_MODEL"])


@pytest.fixture(scope="module")
def stilts_runs(env):
    result = run_script("stilts.sh", "mnli", "rte", *TINY, env=env)
    return os.path.join(env["OUTPUT_DIR"], "mnli"), os.path.join(env["OUTPUT_DIR"], "mnli__rte"), result


def test_stilts_script_two_stages(stilts_runs):
    stage_a, stage_b, _ = stilts_runs
    assert os.path.isfile(os.path.join(stage_a, "all_state.p"))
    assert read_json(os.path.join(stage_a, "args.json"))["task_name"] == "mnli"
    args = read_json(os.path.join(stage_b, "args.json"))
    assert (args["task_name"], args["bert_load_mode"]) == ("rte", "state_model_only")
    assert args["bert_load_path"].endswith("mnli/all_state.p")
    assert {"all_state.p", "val_metrics.json", "test_preds.csv"} <= set(os.listdir(stage_b))


def test_stilts_script_reuses_stage_a(stilts_runs, env, recording_python):
    stub, calls = recording_python
    result = run_script("stilts.sh", "mnli", "mrpc", env=dict(env, PYTHON=stub))
    assert "reusing" in result.stderr
    (argv,) = calls()  # stage B only
    args = run_settings.build_parser().parse_args(argv[1:])
    assert args.task_name == "mrpc" and args.bert_load_path == os.path.join(stilts_runs[0], "all_state.p")


def test_predict_script_reproduces_dev_metrics(stilts_runs, env):
    _, stage_b, _ = stilts_runs
    run_script("predict.sh", "rte", os.path.join(stage_b, "all_state.p"), "--bert_load_mode", "state_full_model",
               "--not-verbose", env=env)
    out = os.path.join(env["OUTPUT_DIR"], "rte_predict")
    assert read_json(os.path.join(out, "val_metrics.json"))["metrics"] == \
        read_json(os.path.join(stage_b, "val_metrics.json"))["metrics"]
    assert os.path.isfile(os.path.join(out, "test_preds.csv"))


def test_demo_data_is_real_glue_rows():
    counts = {("mnli", "train", "MNLI"): 3000, ("mnli", "dev", "MNLI"): 1000,
              ("mnli-mm", "dev", "MNLI/tokenized"): 1000,
              ("rte", "train", "RTE"): 2490, ("rte", "dev", "RTE"): 277, ("rte", "test", "RTE"): 3000}
    for (task, split, folder), n in counts.items():
        examples = get_task(task).read(split, os.path.join(DEMO_DATA, folder))
        assert len(examples) == n, (task, split)
        if split != "test":
            labels = [e.label for e in examples]
            assert min(labels.count(label) for label in get_task(task).labels) > n / 4


@pytest.mark.slow  # see conftest.py
def test_demo_with_tiny_sizes(env, tmp_path):
    demo_env = dict(env, OUTPUT_DIR=str(tmp_path / "demo"), DEMO_RESTARTS="1", DEMO_EPOCHS="1",
                    DEMO_RTE_EXAMPLES="8", DEMO_MNLI_EXAMPLES="8", DEMO_BF16="0", DEMO_TEST="1")
    demo_env.pop("GLUE_DIR")  # the demo's own data
    result = run_script("demo.sh", env=demo_env)
    assert "| rte | stilts | acc |" in result.stdout and "| rte | baseline | acc |" in result.stdout
    assert "demo: finished in" in result.stdout
    stage_a = read_json(tmp_path / "demo" / "intermediate_mnli" / "args.json")
    assert stage_a["data_dir"] == os.path.join(DEMO_DATA, "MNLI")
    assert stage_a["mnli_mm_data_dir"] == os.path.join(DEMO_DATA, "MNLI", "tokenized")
    assert (stage_a["train_examples_number"], stage_a["num_train_epochs"], stage_a["learning_rate"]) == (8, 1.0, 1e-4)
    target = read_json(tmp_path / "demo" / "rte" / "stilts" / "seed_1" / "args.json")
    assert (target["train_batch_size"], target["max_seq_length"], target["bf16"]) == (32, 128, False)
    summary = read_json(tmp_path / "demo" / "summary.json")
    assert set(summary["targets"]["rte"]) >= {"stilts", "baseline", "majority_baseline"}
    assert len((tmp_path / "demo" / "submission_input" / "rte" / "test_preds.csv").read_text().splitlines()) == 3000
