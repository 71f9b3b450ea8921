"""A non-finite loss or gradient stops training (exit 2) after keeping the last good weights;
an fp16 gradient overflow is a step the scaler skips, not a failure."""
import math
import os
import re

import pytest
import torch

from conftest import FIXTURES
from stilts.cli.train import main
from stilts.distributed import DistContext
from stilts.errors import StiltsError
from stilts.features import load_features, load_tokenizer
from stilts.modeling import ModelSource, build_model
from stilts.tasks import get_task
from stilts.settings import TrainSettings
from stilts.trainer import Trainer

RTE = os.path.join(FIXTURES, "RTE")


def train_args(model_dir, out, *extra):
    return ["--task_name", "rte", "--data_dir", RTE, "--bert_model", model_dir, "--output_dir", str(out), "--do_train",
            "--do_lower_case", "--not-verbose", "--no_cuda", "--seed", "2", "--max_seq_length", "32", *extra]


def load_finite_checkpoint(path):
    checkpoint = torch.load(path, weights_only=True)
    for key, value in checkpoint["model"].items():
        assert torch.isfinite(value).all(), key
    return checkpoint


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_weights(tiny_bert_dir, tmp_path, capsys):
    # Step 1 has learning rate 0 (warmup); step 2's update to ~1e30 makes step 3's loss NaN, and every
    # loss after it. Those updates are skipped on the device; the host sees them at its next look
    # (--logging_steps 4: after step 4) and stops there.
    with pytest.raises(SystemExit) as stop:
        main(train_args(tiny_bert_dir, tmp_path / "out", "--learning_rate", "1e30", "--train_batch_size", "8",
                        "--logging_steps", "4"))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    match = re.search(r"training loss is (nan|inf|-inf) at step 3 \(epoch 0, batch 2\); stopped at step 4", err)
    assert match, err
    path = tmp_path / "out" / "all_state___last_good.p"
    assert str(path) in err
    checkpoint = load_finite_checkpoint(path)
    assert checkpoint["train_state"]["global_step"] == 4
    assert all(int(s["step"]) == 2 for s in checkpoint["optimizer"]["state"].values()), \
        "AdamW took exactly the two good steps"


def test_non_finite_gradient_stops_before_the_update(tiny_bert_dir, tmp_path):
    """A finite loss with an infinite gradient: the weights must not take the update."""
    task = get_task("rte")
    source = ModelSource(tiny_bert_dir)
    features = load_features(task, "train", RTE, load_tokenizer(source.vocab(), True), 32)
    model = build_model(source.config(), task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.classifier.weight.register_hook(lambda grad: grad * math.inf)
    trainer = Trainer(model, task, TrainSettings(train_batch_size=8, num_train_epochs=1, seed=0),
                      DistContext(), str(tmp_path), run_args={})
    with pytest.raises(StiltsError, match=r"gradient norm is (inf|nan) at step 1 \(epoch 0, batch 0\)"):
        trainer.train(features)
    kept = load_finite_checkpoint(tmp_path / "all_state___last_good.p")["model"]
    assert all(torch.equal(kept[k], before[k]) for k in before)


def test_fp16_overflow_steps_are_skipped_not_fatal(tiny_bert_dir, tmp_path):
    """With a loss scale of 2**20 the first steps' gradients overflow float16: the scaler halves the
    scale and skips each such step, then training goes on."""
    out = tmp_path / "out"
    main(train_args(tiny_bert_dir, out, "--fp16", "--loss_scale", str(2.0 ** 20), "--train_batch_size", "2",
                    "--train_examples_number", "20", "--num_train_epochs", "1", "--do_save"))
    checkpoint = load_finite_checkpoint(out / "all_state.p")
    skipped = math.log2(2.0 ** 20 / checkpoint["scaler"]["scale"])  # each overflow halves the fixed scale
    taken = checkpoint["optimizer"]["state"][0]["step"].item()
    assert skipped == int(skipped) and 0 < skipped < 10
    assert taken + skipped == 10
    assert not os.path.exists(out / "all_state___last_good.p")
