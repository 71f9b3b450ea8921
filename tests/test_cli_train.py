"""glue/train.py end to end on a tiny random BERT: the seed README's examples, outputs, bad input."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FIXTURES, refused, rte_args, run_train
from stilts.cli.train import main as train_main
from stilts.trainer import Trainer
from stilts.tasks import get_task

COMMON = ["--do_lower_case", "--not-verbose", "--seed", "3", "--eval_batch_size", "64", "--train_batch_size", "8",
          "--num_train_epochs", "1"]


def fixture_dir(task):
    return os.path.join(FIXTURES, get_task(task).folder)


def n_rows(task, split):
    return len(get_task(task).read(split, fixture_dir(task)))


def read_logits(path):
    return pd.read_csv(path, header=None).to_numpy()


@pytest.fixture(scope="module")
def glue_env():
    return {"GLUE_DIR": FIXTURES}


@pytest.fixture(scope="module")
def mnli_run(tmp_path_factory, tiny_bert_dir, glue_env):
    """The seed README's example 2 (MNLI from vanilla BERT), with a local model folder."""
    out = tmp_path_factory.mktemp("runs") / "mnli"
    run_train("--task_name", "mnli", "--do_train", "--do_val", "--do_test", "--do_val_history", "--do_save",
              "--bert_model", tiny_bert_dir, "--bert_load_mode", "from_pretrained", "--bert_save_mode", "model_all",
              "--learning_rate", "2e-5", "--output_dir", out, *COMMON, env=glue_env)
    return out


def test_example_2_outputs(mnli_run):
    files = set(os.listdir(mnli_run))
    assert {"args.json", "all_state.p", "val_preds.csv", "mm_val_preds.csv", "val_metrics.json",
            "val_metrics_history.json", "test_preds.csv", "mm_test_preds.csv"} <= files
    args = json.load(open(mnli_run / "args.json"))
    assert args["task_name"] == "mnli" and args["seed"] == 3
    val = read_logits(mnli_run / "val_preds.csv")
    mm_val = read_logits(mnli_run / "mm_val_preds.csv")
    assert val.shape == (n_rows("mnli", "dev"), 3) and mm_val.shape == (n_rows("mnli-mm", "dev"), 3)
    assert not np.allclose(val[: len(mm_val)], mm_val), "mm_val_preds.csv must hold the mismatched logits"
    assert read_logits(mnli_run / "test_preds.csv").shape == (n_rows("mnli", "test"), 3)
    assert read_logits(mnli_run / "mm_test_preds.csv").shape == (n_rows("mnli-mm", "test"), 3)
    metrics = json.load(open(mnli_run / "val_metrics.json"))
    assert set(metrics) == {"loss", "metrics"} and set(metrics["metrics"]) == {"acc", "mm-acc"}
    labels = [get_task("mnli").labels.index(e.label) for e in get_task("mnli").read("dev", fixture_dir("mnli"))]
    assert metrics["metrics"]["acc"] == pytest.approx(float(np.mean(val.argmax(1) == labels)))
    history = json.load(open(mnli_run / "val_metrics_history.json"))
    assert list(history) == ["0"] and set(history["0"]) == {"loss", "metrics"}
    checkpoint = torch.load(mnli_run / "all_state.p", weights_only=True)
    assert set(checkpoint) == {"args", "model"} and checkpoint["model"]["classifier.weight"].shape[0] == 3


def test_examples_3_4_and_1(mnli_run, tiny_bert_dir, glue_env, tmp_path):
    # Example 4: MNLI -> RTE from all_state.p with state_model_only (the 3-way head is dropped).
    rte = tmp_path / "mnli__rte"
    run_train("--task_name", "rte", "--do_train", "--do_val", "--do_test", "--do_val_history", "--do_save",
              "--bert_model", tiny_bert_dir, "--bert_load_path", mnli_run / "all_state.p",
              "--bert_load_mode", "state_model_only", "--bert_save_mode", "model_all", "--output_dir", rte,
              *COMMON, env=glue_env)
    assert read_logits(rte / "val_preds.csv").shape == (n_rows("rte", "dev"), 2)
    # Example 3: fine-tuning from a plain MNLI state dict (like the seed's released mnli.p) with model_only.
    mnli_p = tmp_path / "mnli.p"
    torch.save(torch.load(mnli_run / "all_state.p", weights_only=True)["model"], mnli_p)
    run_train("--task_name", "rte", "--do_train", "--do_val", "--bert_model", tiny_bert_dir, "--bert_load_path",
              mnli_p, "--bert_load_mode", "model_only", "--output_dir", tmp_path / "rte3", *COMMON, env=glue_env)
    # Example 1: predict with the fine-tuned model; the reloaded model reproduces the logits it was saved with.
    rte_p = tmp_path / "mnli__rte.p"
    torch.save(torch.load(rte / "all_state.p", weights_only=True)["model"], rte_p)
    predicted = tmp_path / "rte_output"
    run_train("--task_name", "rte", "--do_val", "--do_test", "--do_lower_case", "--bert_model", tiny_bert_dir,
              "--bert_load_mode", "full_model_only", "--bert_load_path", rte_p, "--eval_batch_size", "64",
              "--output_dir", predicted, "--not-verbose", env=glue_env)
    for name in ("val_preds.csv", "test_preds.csv"):
        np.testing.assert_allclose(read_logits(predicted / name), read_logits(rte / name), rtol=1e-5, atol=1e-6)
    assert json.load(open(predicted / "val_metrics.json"))["metrics"] == json.load(open(rte / "val_metrics.json"))["metrics"]


def test_regression_task_writes_one_column(tiny_bert_dir, glue_env, tmp_path):
    run_train("--task_name", "stsb", "--do_train", "--do_val", "--do_test", "--bert_model", tiny_bert_dir,
              "--output_dir", tmp_path / "stsb", *COMMON, env=glue_env)
    assert read_logits(tmp_path / "stsb" / "val_preds.csv").shape == (n_rows("stsb", "dev"), 1)
    metrics = json.load(open(tmp_path / "stsb" / "val_metrics.json"))["metrics"]
    assert set(metrics) == {"pearson", "spearmanr", "corr"}


def test_ax_test_predictions(mnli_run, tiny_bert_dir, glue_env, tmp_path):
    run_train("--task_name", "ax", "--do_test", "--bert_model", tiny_bert_dir, "--bert_load_mode", "state_full_model",
              "--bert_load_path", mnli_run / "all_state.p", "--output_dir", tmp_path / "ax", "--not-verbose", env=glue_env)
    assert read_logits(tmp_path / "ax" / "test_preds.csv").shape == (n_rows("ax", "test"), 3)


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_is_one_line_exit_2(tiny_bert_dir, glue_env, tmp_path, capsys, monkeypatch):
    """In this process (each case costs no start-up); the script's own wrapper is run by the next test."""
    monkeypatch.setenv("GLUE_DIR", glue_env["GLUE_DIR"])
    base = ["--bert_model", tiny_bert_dir, "--not-verbose"]
    assert "unknown task 'nope'" in refused(
        capsys, "--task_name", "nope", "--do_val", "--output_dir", tmp_path / "a", *base)
    assert "--bert_load_mode/--bert-load-mode: invalid choice: 'magic'" in refused(
        capsys, "--task_name", "rte", "--do_val", "--bert_load_mode", "magic", "--output_dir", tmp_path / "b", *base)
    assert "train.tsv: file not found" in refused(
        capsys, "--task_name", "rte", "--do_train", "--data_dir", tmp_path, "--output_dir", tmp_path / "c", *base)
    assert "missing.p: file not found" in refused(
        capsys, "--task_name", "rte", "--do_val", "--bert_load_mode", "state_all", "--bert_load_path",
        tmp_path / "missing.p", "--output_dir", tmp_path / "d", *base)
    mnli_no_mm = tmp_path / "MNLI"
    mnli_no_mm.mkdir()
    for name in ("train.tsv", "dev_matched.tsv"):
        (mnli_no_mm / name).write_bytes(open(os.path.join(fixture_dir("mnli"), name), "rb").read())
    err = refused(capsys, "--task_name", "mnli", "--do_train", "--do_val", "--data_dir", mnli_no_mm,
                  "--output_dir", tmp_path / "e", *base)
    assert "dev_mismatched.tsv: file not found" in err and "--mnli_mm_data_dir" in err
    assert not any((tmp_path / d).exists() for d in "abcde"), "a failed check must not create the output folder"


def test_existing_output_folder_is_left_alone(tiny_bert_dir, glue_env, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "val_preds.csv").write_text("precious\n")
    result = run_train("--task_name", "rte", "--do_val", "--bert_model", tiny_bert_dir, "--output_dir", out,
                       check=False, env=glue_env)
    assert_clean_failure(result, "not empty", "--force-overwrite")
    assert os.listdir(out) == ["val_preds.csv"] and (out / "val_preds.csv").read_text() == "precious\n"


def test_dev_set_is_scored_once_per_epoch_with_val_history(tiny_bert_dir, tmp_path, monkeypatch):
    """--do_val after --do_val_history reuses the last epoch's scores: the same weights, scored once."""
    scored = []
    predict = Trainer.predict
    monkeypatch.setattr(Trainer, "predict", lambda self, features, desc="": (scored.append(desc),
                                                                           predict(self, features, desc))[1])
    out = tmp_path / "out"
    train_main(rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--do_val_history", "--num_train_epochs", "2",
                        "--data_dir", os.path.join(FIXTURES, "RTE")))
    assert scored == ["Evaluating (rte dev)"] * 2
    history = json.load(open(out / "val_metrics_history.json"))
    assert json.load(open(out / "val_metrics.json")) == history["1"]
