"""Atomic writes: a kill mid-save leaves the previous checkpoint, and every output goes through them."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import torch

import stilts.io
from conftest import FIXTURES, REPO
from stilts.cli.train import main

# Saves a ~40 MB checkpoint to the same path over and over; each tensor holds its version number.
SAVER = """
import itertools, sys, torch
from stilts.checkpoints import save_checkpoint
weights = torch.empty(10_000_000)
for version in itertools.count(1):
    weights.fill_(version)
    save_checkpoint(sys.argv[1], {"version": version, "weights": weights})
    print(version, flush=True)
"""


def kill_mid_save(path, saves_before_kill=2):
    """Start the saver, let it finish some saves, SIGKILL it; returns the last version it reported."""
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        for _ in range(saves_before_kill):
            last = int(saver.stdout.readline())
        time.sleep(0.05)  # into the next save: the loop does little else
        os.kill(saver.pid, signal.SIGKILL)
        saver.wait(timeout=60)
        for line in saver.stdout:  # a save that completed between the sleep and the kill
            last = int(line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            saver.kill()
        saver.stdout.close()
    return last


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "all_state.p"
    for _ in range(5):  # until a kill lands inside a save (it nearly always does at once)
        last = kill_mid_save(path)
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["version"] >= last
        assert torch.all(checkpoint["weights"] == checkpoint["version"]), "a checkpoint mixing two saves"
        visible = [name for name in os.listdir(tmp_path) if not name.startswith(".")]
        assert visible == ["all_state.p"]
        leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".all_state.p.")]
        if leftovers:  # the temporary file of the interrupted save: the kill landed inside it
            assert all(name.endswith(".tmp") for name in leftovers)
            break
    else:
        raise AssertionError("no kill landed during a save in 5 attempts")


def test_every_output_file_is_written_atomically(tiny_bert_dir, tmp_path, monkeypatch):
    written = []
    real_atomic_write = stilts.io.atomic_write

    def recording_atomic_write(path, mode="w"):
        written.append(os.path.abspath(path))
        return real_atomic_write(path, mode)

    monkeypatch.setattr(stilts.io, "atomic_write", recording_atomic_write)
    out = tmp_path / "out"
    main(["--task_name", "mnli", "--data_dir", os.path.join(FIXTURES, "MNLI"), "--bert_model", tiny_bert_dir,
          "--do_train", "--do_val", "--do_test", "--do_save", "--do_val_history", "--train_save_every", "2",
          "--train_batch_size", "16", "--num_train_epochs", "1", "--do_lower_case", "--not-verbose", "--no_cuda",
          "--max_seq_length", "32", "--seed", "1", "--output_dir", str(out)])
    files = sorted(os.listdir(out))
    assert {"args.json", "all_state.p", "val_metrics.json", "val_metrics_history.json", "val_preds.csv",
            "mm_val_preds.csv", "test_preds.csv", "mm_test_preds.csv"} < set(files)
    assert any(name.startswith("all_state___epoch") for name in files)
    assert {os.path.join(out, name) for name in files} <= set(written), "a file written without atomic_write"
