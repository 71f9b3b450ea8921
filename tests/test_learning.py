"""Real learning: the pretrained MiniLM fine-tuned on 600 real SST-2 sentences beats the majority class."""
import json
import os

import pytest

from conftest import REPO, run_train
from stilts.metrics import majority_baseline
from stilts.tasks import get_task

pytestmark = pytest.mark.slow  # see conftest.py
SST2 = os.path.join(REPO, "tests", "fixtures", "glue_learn", "SST-2")


def test_minilm_learns_sst2(minilm_dir, tmp_path):
    task = get_task("sst")
    train_labels = [int(e.label) for e in task.read("train", SST2)]
    dev_labels = [int(e.label) for e in task.read("dev", SST2)]
    baseline = majority_baseline(get_task("sst"), train_labels, dev_labels)["acc"]
    run_train("--task_name", "sst", "--data_dir", SST2, "--do_train", "--do_val", "--do_lower_case",
              "--bert_model", minilm_dir, "--learning_rate", "1e-4", "--num_train_epochs", "2",
              "--train_batch_size", "32", "--eval_batch_size", "100", "--seed", "1", "--not-verbose",
              "--output_dir", tmp_path / "sst")
    acc = json.load(open(tmp_path / "sst" / "val_metrics.json"))["metrics"]["acc"]
    assert acc > baseline + 0.15, f"dev accuracy {acc:.3f} vs majority baseline {baseline:.3f}"
