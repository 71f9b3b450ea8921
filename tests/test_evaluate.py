"""glue/evaluate.py: dev metrics from a saved predictions file equal the trainer's own."""
import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import FIXTURES, REPO, run_train
from stilts.cli import evaluate
from stilts.io import write_logits_csv
from stilts.metrics import compute_metrics
from stilts.tasks import get_task


def dev_labels(task, data_dir):
    """The labels as the trainer holds them (float32 STS-B scores)."""
    return task.label_ids(task.read("dev", data_dir))


def random_logits(task, rows):
    rng = np.random.default_rng(zlib.crc32(task.name.encode()))
    return rng.normal(loc=2.5, size=(rows, task.num_labels)).astype(np.float32)


def expected_metrics(task, logits, data_dir):
    """What the trainer computes from its in-memory logits."""
    return compute_metrics(task, task.predictions(logits), dev_labels(task, data_dir))


def run_evaluate(capsys, *argv):
    try:
        evaluate.main(list(map(str, argv)))
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("task_name", ["cola", "sst", "mrpc", "stsb", "qqp", "qnli", "rte", "wnli", "snli", "mnli-mm"])
def test_metrics_equal_compute_metrics_exactly(tmp_path, capsys, task_name):
    task = get_task(task_name)
    data_dir = os.path.join(FIXTURES, task.folder)
    logits = random_logits(task, len(dev_labels(task, data_dir)))
    write_logits_csv(tmp_path / "val_preds.csv", logits)
    status, out, _ = run_evaluate(capsys, "--task-name", task_name, "--pred-file-path", tmp_path / "val_preds.csv",
                                  "--task-data-dir", data_dir, "--output-path", tmp_path / "metrics.json")
    assert status == 0
    expected = expected_metrics(task, logits, data_dir)
    assert json.loads((tmp_path / "metrics.json").read_text()) == expected
    assert json.loads(out) == expected


def write_mnli_run(run_dir, data_dir, mismatched=True):
    matched, mm = get_task("mnli"), get_task("mnli-mm")
    logits = random_logits(matched, len(dev_labels(matched, data_dir)))
    write_logits_csv(run_dir / "val_preds.csv", logits)
    expected = expected_metrics(matched, logits, data_dir)
    if mismatched:
        mm_logits = random_logits(mm, len(dev_labels(mm, data_dir)))
        write_logits_csv(run_dir / "mm_val_preds.csv", mm_logits)
        expected.update({"mm-" + k: v for k, v in expected_metrics(mm, mm_logits, data_dir).items()})
    return expected


def test_mnli_scores_both_halves_with_mm_prefix(tmp_path, capsys):
    data_dir = os.path.join(FIXTURES, "MNLI")
    expected = write_mnli_run(tmp_path, data_dir)
    assert sorted(expected) == ["acc", "mm-acc"]
    status, _, _ = run_evaluate(capsys, "--task-name", "mnli", "--pred-file-path", tmp_path / "val_preds.csv",
                                "--task-data-dir", data_dir, "--output-path", tmp_path / "metrics.json", "--no-print")
    assert status == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == expected


def test_mnli_without_mm_predictions_scores_matched_only(tmp_path, capsys):
    data_dir = os.path.join(FIXTURES, "MNLI")
    expected = write_mnli_run(tmp_path, data_dir, mismatched=False)
    status, out, _ = run_evaluate(capsys, "--task-name", "MNLI", "--pred-file-path", tmp_path / "val_preds.csv",
                                  "--task-data-dir", data_dir)
    assert status == 0 and json.loads(out) == expected and list(expected) == ["acc"]


def test_mnli_mm_dev_from_another_folder_or_skipped(tmp_path, capsys, caplog):
    """The raw mismatched dev set may live elsewhere (--mnli-mm-data-dir); without it mm is skipped with a warning."""
    matched_only = tmp_path / "data"
    matched_only.mkdir()
    shutil.copy(os.path.join(FIXTURES, "MNLI", "dev_matched.tsv"), matched_only)
    expected = write_mnli_run(tmp_path, os.path.join(FIXTURES, "MNLI"))
    args = ["--task-name", "mnli", "--pred-file-path", tmp_path / "val_preds.csv", "--task-data-dir", matched_only]
    status, out, _ = run_evaluate(capsys, *args, "--mnli-mm-data-dir", os.path.join(FIXTURES, "MNLI"))
    assert status == 0 and json.loads(out) == expected
    status, out, _ = run_evaluate(capsys, *args)
    assert status == 0 and json.loads(out) == {"acc": expected["acc"]}
    assert "dev_mismatched.tsv" in caplog.text


def test_seed_tab_separated_predictions_read_too(tmp_path, capsys):
    task = get_task("rte")
    data_dir = os.path.join(FIXTURES, "RTE")
    logits = random_logits(task, 40)
    np.savetxt(tmp_path / "val_preds.tsv", logits, delimiter="\t", fmt="%.9g")   # 9 digits: float32 round trip
    status, out, _ = run_evaluate(capsys, "--task-name", "rte", "--pred-file-path", tmp_path / "val_preds.tsv",
                                  "--task-data-dir", data_dir)
    assert status == 0 and json.loads(out) == expected_metrics(task, logits, data_dir)


def test_glue_dir_is_the_default_data_folder(tmp_path, capsys, monkeypatch):
    task = get_task("stsb")
    logits = random_logits(task, 40)
    write_logits_csv(tmp_path / "val_preds.csv", logits)
    monkeypatch.setenv("GLUE_DIR", FIXTURES)
    status, out, _ = run_evaluate(capsys, "--task-name", "stsb", "--pred-file-path", tmp_path / "val_preds.csv")
    assert status == 0 and json.loads(out) == expected_metrics(task, logits, os.path.join(FIXTURES, "STS-B"))
    monkeypatch.delenv("GLUE_DIR")
    status, _, err = run_evaluate(capsys, "--task-name", "stsb", "--pred-file-path", tmp_path / "val_preds.csv")
    assert status == 2 and "pass --task-data-dir or set GLUE_DIR" in err


def test_row_count_mismatch_is_a_one_line_error(tmp_path, capsys):
    write_logits_csv(tmp_path / "val_preds.csv", random_logits(get_task("cola"), 39))
    status, _, err = run_evaluate(capsys, "--task-name", "cola", "--pred-file-path", tmp_path / "val_preds.csv",
                                  "--task-data-dir", os.path.join(FIXTURES, "CoLA"))
    assert status == 2
    assert f"{tmp_path / 'val_preds.csv'}: 39 prediction rows, but" in err and "has 40 dev examples" in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_column_count_names_file_and_line(tmp_path, capsys):
    (tmp_path / "val_preds.csv").write_text("0.1,0.2,0.3\n")
    status, _, err = run_evaluate(capsys, "--task-name", "rte", "--pred-file-path", tmp_path / "val_preds.csv",
                                  "--task-data-dir", os.path.join(FIXTURES, "RTE"))
    assert status == 2 and "val_preds.csv:1: expected 2 column(s) (one per label), found 3" in err


def test_glue_wrapper_script(tmp_path):
    task = get_task("rte")
    logits = random_logits(task, 40)
    write_logits_csv(tmp_path / "val_preds.csv", logits)
    result = subprocess.run([sys.executable, os.path.join(REPO, "glue", "evaluate.py"), "--task-name", "rte",
                             "--pred-file-path", str(tmp_path / "val_preds.csv"),
                             "--task-data-dir", os.path.join(FIXTURES, "RTE")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected_metrics(task, logits, os.path.join(FIXTURES, "RTE"))


@pytest.mark.parametrize("task_name", ["mnli", "stsb"])
def test_reproduces_the_trainers_val_metrics(tmp_path, capsys, tiny_bert_dir, task_name):
    """Run glue/train.py --do_val, then re-score its val_preds.csv: the metrics must be identical."""
    task = get_task(task_name)
    data_dir = os.path.join(FIXTURES, task.folder)
    run_dir = tmp_path / "run"
    run_train("--task_name", task_name, "--bert_model", tiny_bert_dir, "--data_dir", data_dir,
              "--output_dir", run_dir, "--do_val", "--no_cuda", "--seed", "1", "--not-verbose")
    status, _, _ = run_evaluate(capsys, "--task-name", task_name, "--pred-file-path", run_dir / "val_preds.csv",
                                "--task-data-dir", data_dir, "--output-path", tmp_path / "metrics.json", "--no-print")
    assert status == 0
    trainer_metrics = json.loads((run_dir / "val_metrics.json").read_text())["metrics"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == trainer_metrics
    if task_name == "mnli":
        assert sorted(trainer_metrics) == ["acc", "mm-acc"]
