"""Two gloo processes on CPU (torchrun) give the results of one process with the same global batch.

The train set (33 examples) divides neither by the batch (8) nor by the world size (2), and each
global batch is cut into 2 accumulation micro-batches: the last batch of an epoch holds a single
example, so one rank gets an empty slice and runs it with zero weight. Dropout is off, so the
only difference left between the runs is float summation order.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, TRAIN_PY, make_tiny_bert, run_train

pytestmark = pytest.mark.slow  # see conftest.py
ARGS = ["--task_name", "rte", "--data_dir", os.path.join(FIXTURES, "RTE"), "--do_train", "--do_val", "--do_test",
        "--do_save", "--do_lower_case", "--not-verbose", "--no_cuda", "--seed", "5", "--train_examples_number", "33",
        "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--num_train_epochs", "2",
        "--learning_rate", "1e-2", "--eval_batch_size", "9", "--max_seq_length", "64"]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"),
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def torchrun(nproc, *args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               TRAIN_PY, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=300)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def read_csv(path):
    return np.loadtxt(path, delimiter=",", ndmin=2)


def test_two_gloo_processes_equal_one_process(no_dropout_bert, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_train(*ARGS, "--bert_model", no_dropout_bert, "--output_dir", single)
    result = torchrun(2, *ARGS, "--bert_model", no_dropout_bert, "--output_dir", ddp)

    assert sorted(os.listdir(ddp)) == sorted(os.listdir(single)), "rank 1 must not write files of its own"
    assert result.stdout.count('"metrics"') == 1, "only rank 0 prints the dev report"
    one, two = (json.loads((d / "val_metrics.json").read_text()) for d in (single, ddp))
    assert one["metrics"].keys() == two["metrics"].keys()
    assert np.allclose(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    for key, value in one["metrics"].items():
        assert np.isclose(two["metrics"][key], value, rtol=1e-5, atol=1e-6), key
    for name in ("val_preds.csv", "test_preds.csv"):
        a, b = read_csv(single / name), read_csv(ddp / name)
        assert a.shape == b.shape == (40, 2)
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name}: max diff {np.abs(a - b).max()}"

    # The weights agree far more closely than training moved them: a batch seen twice, missed or
    # weighted wrongly on one rank would show up here.
    initial = load_file(os.path.join(no_dropout_bert, "model.safetensors"))
    w1, w2 = (torch.load(d / "all_state.p", weights_only=True)["model"] for d in (single, ddp))
    moved = max((w1["bert." + k] - v).abs().max().item() for k, v in initial.items() if "bert." + k in w1)
    differ = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-3
    assert differ < 1e-5, f"weights differ by {differ} (training moved them by {moved})"
