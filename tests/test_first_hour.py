"""What a new user meets first: the casing follows the model unless --do_lower_case says otherwise,
a casing that turns many words into [UNK] is warned about, dev predictions a person can read, no
progress-bar noise in logs, and the pace a run records for stilts-run's estimates."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, TRAIN_PY, make_tiny_bert
from stilts import pace
from stilts.cli.train import main as train_main

RTE = os.path.join(FIXTURES, "RTE")
FLAGS = ["--no_cuda", "--max_seq_length", "32", "--seed", "1", "--num_train_epochs", "1", "--train_batch_size", "8",
         "--train_examples_number", "16"]


@pytest.fixture(scope="module")
def lowercasing_bert(tmp_path_factory):
    """A tiny uncased BERT whose tokenizer_config.json says do_lower_case: true, as MiniLM's does."""
    folder = make_tiny_bert(tmp_path_factory.mktemp("uncased"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    return folder


def run(model, out, *extra, task="rte", data=RTE):
    train_main(["--task_name", task, "--data_dir", data, "--bert_model", model, "--output_dir", str(out),
                "--do_train", "--do_val", *FLAGS, *extra])
    with open(out / "args.json") as f:
        return json.load(f)


@pytest.mark.parametrize("flag,lower,why", [
    ([], True, "tokenizer_config.json says do_lower_case: true; --do_lower_case false to change it"),
    (["--do_lower_case"], True, "--do_lower_case true"),
    (["--do_lower_case", "false"], False, "--do_lower_case false"),
])
def test_casing_follows_the_model_unless_the_flag_says(lowercasing_bert, tmp_path, capsys, flag, lower, why):
    args = run(lowercasing_bert, tmp_path / "out", *flag)
    assert args["do_lower_case"] is lower  # args.json records the casing used, a bool as in the seed
    printed = capsys.readouterr().out
    assert f"casing: {'lower-cased' if lower else 'as written'} (" in printed and why in printed


def test_a_model_that_says_nothing_keeps_the_seeds_casing(tiny_bert_dir, tmp_path, capsys):
    assert run(tiny_bert_dir, tmp_path / "out")["do_lower_case"] is False
    assert "no --do_lower_case and no do_lower_case in the model's tokenizer files: the seed's default" in \
        capsys.readouterr().out


def test_a_casing_that_makes_unknown_words_is_warned_about(lowercasing_bert, tmp_path, caplog):
    """RTE's capitalised words are not in an uncased vocabulary: kept as written, a good share of its
    word pieces are [UNK], and the run says so; lower-cased, none are. The share survives the cache."""
    with caplog.at_level(logging.WARNING, logger="stilts.features"):
        run(lowercasing_bert, tmp_path / "cased", "--do_lower_case", "false")
    warned = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
    assert warned and "of the word pieces of rte train are [UNK]" in warned[0]
    share = float(warned[0].split("%")[0])
    assert 5 < share < 60, share
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stilts.features"):
        run(lowercasing_bert, tmp_path / "cached", "--do_lower_case", "false")  # features from the cache
    assert [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()][0] == warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stilts.features"):
        run(lowercasing_bert, tmp_path / "lower")
    assert not [r for r in caplog.records if "[UNK]" in r.getMessage()]


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("task,folder", [("rte", "RTE"), ("stsb", "STS-B")])
def test_val_predictions_name_each_example_its_label_and_the_prediction(tiny_bert_dir, tmp_path, task, folder):
    from stilts.tasks import get_task

    data = os.path.join(FIXTURES, folder)
    run(tiny_bert_dir, tmp_path / "out", "--do_lower_case", task=task, data=data)
    readable = pd.read_csv(tmp_path / "out" / "val_predictions.csv", dtype={"id": str, "label": str, "prediction": str})
    logits = np.loadtxt(tmp_path / "out" / "val_preds.csv", delimiter=",", ndmin=2)
    examples = get_task(task).read("dev", data)
    dev = pd.read_csv(os.path.join(data, "dev.tsv"), sep="\t", dtype=str, quoting=3, keep_default_na=False)
    assert list(readable["id"]) == list(dev["index"])  # the file's own index column
    if task == "rte":
        labels = ["entailment", "not_entailment"]
        assert list(readable.columns) == ["id", "label", "prediction", "p_entailment", "p_not_entailment"]
        assert list(readable["label"]) == [e.label for e in examples]
        assert list(readable["prediction"]) == [labels[i] for i in logits.argmax(axis=1)]
        np.testing.assert_allclose(readable[["p_entailment", "p_not_entailment"]].to_numpy(float), softmax(logits),
                                   rtol=1e-6)
    else:
        assert list(readable.columns) == ["id", "label", "prediction"]
        np.testing.assert_allclose(readable["label"].astype(float), [e.label for e in examples])
        np.testing.assert_allclose(readable["prediction"].astype(float), logits[:, 0], rtol=1e-6)


def test_a_dev_sample_is_scored_and_recorded(tiny_bert_dir, tmp_path):
    run(tiny_bert_dir, tmp_path / "out", "--do_lower_case", "--dev_examples_number", "15")
    report = json.loads((tmp_path / "out" / "val_metrics.json").read_text())
    assert report["dev_sample"] == {"dev": {"rows": 15, "seed": 1}}
    readable = pd.read_csv(tmp_path / "out" / "val_predictions.csv", dtype={"id": str})
    assert len(readable) == 15 and len(np.loadtxt(tmp_path / "out" / "val_preds.csv", delimiter=",")) == 15
    dev_ids = pd.read_csv(os.path.join(RTE, "dev.tsv"), sep="\t", dtype=str, quoting=3)["index"].tolist()
    assert readable["id"].tolist() == sorted(readable["id"].tolist(), key=dev_ids.index)  # file order, a subset


def test_no_progress_bar_noise_when_the_output_is_a_file(tiny_bert_dir, tmp_path):
    """Not a terminal (a study's run log, a redirect): no progress bars, whose \\r updates and escape
    codes are junk in a file; the settings listing and the results still come."""
    result = subprocess.run([sys.executable, TRAIN_PY, "--task_name", "rte", "--data_dir", RTE, "--bert_model",
                             tiny_bert_dir, "--output_dir", str(tmp_path / "out"), "--do_train", "--do_val",
                             "--do_lower_case", *FLAGS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "\r" not in output and "\x1b[" not in output and "%|" not in output
    assert "trained 16 rows x 1 epochs (16 examples)" in output and '"acc"' in output


def test_a_finished_run_records_its_pace(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STILTS_CACHE_DIR", str(tmp_path / "cache"))
    run(tiny_bert_dir, tmp_path / "out", "--do_lower_case")
    import torch

    key = pace.PaceKey(os.path.abspath(tiny_bert_dir), 32, "fp32", "cpu", torch.get_num_threads())
    found, source = pace.lookup(str(tmp_path / "cache"), key)
    assert source == "this machine's recorded pace"
    assert found.train_per_s > 0 and found.score_per_s > 0 and found.overhead_s >= 0
    halved, source = pace.lookup(str(tmp_path / "cache"), pace.PaceKey(key.model, 32, "fp32", "cpu", 2 * key.threads))
    assert halved.train_per_s == pytest.approx(2 * found.train_per_s) and "scaled" in source
    assert pace.lookup(str(tmp_path / "cache"), pace.PaceKey(key.model, 64, "fp32", "cpu", key.threads)) == (None, None)
    (tmp_path / "cache" / pace.FILE_NAME).write_text("{broken")  # a damaged record is only a lost record
    assert pace.lookup(str(tmp_path / "cache"), key) == (None, None)
