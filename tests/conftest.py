"""Shared fixtures: a tiny random BERT model folder, the packaged MiniLM, fixture data paths.

Every test runs offline (HF_HUB_OFFLINE=1) and with its own features cache.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "glue")
VOCAB = os.path.join(REPO, "cache", "bert_metadata", "uncased_L-12_H-768_A-12", "vocab.txt")
TRAIN_PY = os.path.join(REPO, "glue", "train.py")
RTE = os.path.join(FIXTURES, "RTE")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The features cache and the recorded paces of runs the module-scoped fixtures make: never the user's.
os.environ["STILTS_CACHE_DIR"] = tempfile.mkdtemp(prefix="stilts-tests-cache-")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: real learning with MiniLM, the demo, the benchmark scripts and multi-process runs; "
                   "`make test` leaves them out, `make test-slow` runs them, and .ci/run runs both")
    config.addinivalue_line(
        "markers", "cluster: stilts-run on a real one-node SLURM and a two-node Ray (scripts/cluster/); "
                   "`make test-cluster` brings them up, runs these and takes them down; .ci/run runs it too")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STILTS_CACHE_DIR", str(tmp_path / "stilts-cache"))


def make_tiny_bert(folder, seed=0, **overrides):
    """A random 2-layer BERT (hidden 32) with the real uncased vocab, saved as a model folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    settings = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37, max_position_embeddings=512)
    settings.update(overrides)
    BertModel(BertConfig(**settings)).save_pretrained(folder)
    shutil.copy(VOCAB, os.path.join(folder, "vocab.txt"))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2, unpacked from its PyPI wheel by scripts/fetch_minilm.sh."""
    folder = os.path.join(os.environ.get("STILTS_MODEL_DIR", os.path.join(REPO, ".cache", "models")),
                          "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        result = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch_minilm.sh")],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"could not fetch the MiniLM wheel: {result.stderr.strip()[-300:]}")
    return folder


def refused_by(capsys, main, argv):
    """`main(argv)` in this process must exit 2 with one line on stderr and no traceback; returns the line."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def refused(capsys, *args):
    """Run glue/train.py's main; it must exit 2 with one line on stderr, which is returned."""
    from stilts.cli.train import main

    return refused_by(capsys, main, args)


def rte_args(model_dir, out, *extra):
    """glue/train.py flags for a quick RTE run of `model_dir` on the fixtures, plus `extra`."""
    args = ["--task_name", "rte", "--bert_model", model_dir, "--output_dir", out, "--do_lower_case",
            "--not-verbose", "--no_cuda", "--max_seq_length", "32", *extra]
    return [str(a) for a in args]


def run_train(*args, check=True, env=None):
    """Run glue/train.py in a subprocess, as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    result = subprocess.run([sys.executable, TRAIN_PY, *map(str, args)], capture_output=True, text=True, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# An RTE run with periodic checkpoints: 40 examples in batches of 8 are 5 steps an epoch; 2 epochs,
# a checkpoint every 3 steps (tests/test_resume.py, tests/test_checkpoint_formats.py).
RESUMABLE_RTE = ["--task_name", "rte", "--data_dir", os.path.join(FIXTURES, "RTE"), "--do_train", "--do_save",
                 "--do_val_history", "--do_lower_case", "--not-verbose", "--no_cuda", "--train_batch_size", "8",
                 "--num_train_epochs", "2", "--learning_rate", "1e-3", "--max_seq_length", "64",
                 "--train_save_every", "3"]
MID_EPOCH = "all_state___epoch0000___batch000002.p"   # after step 3


# A small stilts-run study, run as a user runs it (the launcher tests and the engine tests).
TRAIN_FLAGS = ["--do_lower_case", "--not-verbose", "--num_train_epochs", "1", "--train_examples_number", "8",
               "--train_batch_size", "4", "--eval_batch_size", "64", "--max_seq_length", "64", "--no_test"]


# Runs long enough to stop in the middle: 48 steps (32 rows, 6 epochs), a periodic checkpoint every step.
LONG_TRAINING = ["--train_examples_number", "32", "--num_train_epochs", "6", "--train_save_every", "1"]


def study_argv(out, model, *extra, targets="rte,stsb", seeds="1,2"):
    """A stilts-run study of the fixtures' MNLI and the targets, from and without stage A, on `model`."""
    return ["--intermediate", "mnli", "--targets", targets, "--seeds", seeds, "--compare", "--bert_model", model,
            "--glue_dir", FIXTURES, "--output_dir", str(out), *TRAIN_FLAGS, *extra]


def run_study(out, model, *extra, **kwargs):
    """The console command in a subprocess, as a user runs it."""
    env = dict(os.environ, STILTS_CACHE_DIR=str(out) + "-cache")
    return subprocess.run([sys.executable, "-m", "stilts.cli.run", *study_argv(out, model, *extra, **kwargs)],
                          capture_output=True, text=True, cwd=REPO, env=env)


def values(out):
    """Every run's dev score by (target, arm, seed), from summary.json."""
    summary = json.loads((out / "summary.json").read_text())
    return {(target, arm, run["seed"]): run["value"] for target, entry in summary["targets"].items()
            for arm, s in entry.items() if isinstance(s, dict) and "runs" in s for run in s["runs"]}


def one_step_gradients(trainer, features, batch):
    """Take one training step on `batch` and return the gradients it stepped with ({name: tensor}).

    Tests compare these rather than the weights after the step: Adam's first step moves each weight by
    about lr * sign(gradient), so a gradient of rounding-noise size (a key's bias gets one: its true
    gradient is zero) can move a weight by a full +-lr on one machine and not on another."""
    import torch
    gradients = {}
    trainer.make_optimizer(total_steps=1)
    trainer.optimizer.register_step_pre_hook(lambda *_: gradients.update(
        {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.wrapped.train()
    trainer.train_step(features, batch)
    moved = sum(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())
    assert gradients.keys() == before.keys() and moved > len(before) // 2  # the step did update the weights
    return gradients


def assert_same_gradients(gradients, expected, msg=""):
    """Equal up to rounding noise, which scales with the largest gradient of the step."""
    import torch
    atol = 1e-6 * max(g.abs().max().item() for g in expected.values())
    assert gradients.keys() == expected.keys(), msg
    for name, want in expected.items():
        torch.testing.assert_close(gradients[name], want, rtol=1e-4, atol=atol, msg=f"{msg}: {name}")
