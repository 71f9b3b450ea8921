"""A run resumed from a `--train_save_every` checkpoint ends with the weights of an uninterrupted run.

Dropout stays on: the checkpoint carries each process's torch RNG state, and the batch order of an epoch is
a function of (seed, epoch), so the resumed run replays exactly the same steps.
RTE's 40 train examples in batches of 8 make 5 steps an epoch; 2 epochs, a checkpoint every 3
steps: after steps 3 (mid-epoch 0), 5 (end of epoch 0), 6, 9 and 10.
"""
import json
import os

import pytest
import torch

from conftest import MID_EPOCH, RESUMABLE_RTE as ARGS
from stilts.cli.train import main

EPOCH_END = "all_state___epoch0000___batch000004.p"   # after step 5, before epoch 0's dev evaluation


def train(*args):
    """glue/train.py's main in this process (the subprocess start-up is most of a tiny run)."""
    main([str(a) for a in args])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert_dir):
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    train(*ARGS, "--seed", "11", "--bert_model", tiny_bert_dir, "--output_dir", out)
    return out


def model_weights(folder):
    return torch.load(os.path.join(folder, "all_state.p"), weights_only=True)["model"]


@pytest.mark.parametrize("checkpoint,seed_args", [
    (MID_EPOCH, ["--seed", "11"]),
    (EPOCH_END, []),  # without --seed the resumed run takes the checkpoint's seed
])
def test_resumed_run_ends_with_the_same_weights(uninterrupted, tiny_bert_dir, tmp_path, checkpoint, seed_args):
    assert os.path.isfile(uninterrupted / MID_EPOCH) and os.path.isfile(uninterrupted / EPOCH_END)
    resumed = tmp_path / "resumed"
    train(*ARGS, *seed_args, "--bert_model", tiny_bert_dir, "--output_dir", resumed,
          "--bert_load_mode", "state_all", "--bert_load_path", uninterrupted / checkpoint)

    expected, got = model_weights(uninterrupted), model_weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    start = torch.load(uninterrupted / checkpoint, weights_only=True)["model"]
    assert any(not torch.equal(start[k], expected[k]) for k in expected), "the resumed run must still train"
    # The dev history of the epochs before the checkpoint travels with it.
    history = [json.loads((d / "val_metrics_history.json").read_text()) for d in (uninterrupted, resumed)]
    assert history[0] == history[1] and set(history[0]) == {"0", "1"}
    assert json.loads((resumed / "args.json").read_text())["seed"] == 11


def test_resuming_with_another_batch_size_is_refused(uninterrupted, tiny_bert_dir, tmp_path, capsys):
    other_batch = [a if a != "8" else "4" for a in ARGS]
    with pytest.raises(SystemExit) as stop:
        train(*other_batch, "--bert_model", tiny_bert_dir, "--output_dir", tmp_path / "out",
              "--bert_load_mode", "state_all", "--bert_load_path", uninterrupted / MID_EPOCH)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "the checkpoint's run used --train_batch_size 8, this one 4; resuming needs the same value" in err
    assert not (tmp_path / "out").exists(), "refused before anything is written"
