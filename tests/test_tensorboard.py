"""--report_to tensorboard: the curves read back with TensorBoard's own reader, and a one-line error
when the package is missing."""
import importlib.util
import json

import pytest

from conftest import RTE, refused, rte_args
from stilts.cli.train import main


def test_curves_read_back_with_tensorboards_reader(tiny_bert_dir, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    # 40 examples in batches of 8: 5 steps an epoch, 10 in all; the host looks every 2 steps and at epoch ends.
    main(rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--do_val_history", "--data_dir", RTE,
                  "--num_train_epochs", "2", "--train_batch_size", "8", "--logging_steps", "2",
                  "--report_to", "tensorboard"))
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    curves = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert set(curves) == {"train/loss", "train/learning_rate", "train/grad_norm", "train/examples_per_s",
                           "eval/acc", "eval/loss"}
    for name in ("loss", "learning_rate", "grad_norm", "examples_per_s"):
        assert sorted(curves[f"train/{name}"]) == [2, 4, 5, 6, 8, 10], name
    assert all(v > 0 for v in curves["train/examples_per_s"].values())
    assert all(0.3 < v < 1.2 for v in curves["train/loss"].values()), "a mean cross-entropy of 2 labels"
    history = json.loads((out / "val_metrics_history.json").read_text())
    final = json.loads((out / "val_metrics.json").read_text())
    assert curves["eval/acc"] == pytest.approx({5: history["0"]["metrics"]["acc"], 10: final["metrics"]["acc"]})
    assert curves["eval/loss"] == pytest.approx({5: history["0"]["loss"], 10: final["loss"]})


def test_missing_tensorboard_is_one_line(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                                    "--report_to", "tensorboard"))
    assert "--report_to tensorboard needs the tensorboard package: pip install tensorboard" in err
    assert not (tmp_path / "out").exists()
