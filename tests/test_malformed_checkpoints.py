"""Checkpoints that hold no code but are malformed, with every load mode that reads a file.

Each is one line on stderr naming the file and what is wrong, exit status 2, and the output folder
is neither created nor changed. A file that is not a torch checkpoint at all is reported as such,
not as a pickle that could run code.
"""
import random

import pytest
import torch
from safetensors.torch import save_file

from conftest import RTE, refused, rte_args
from stilts.checkpoints import make_checkpoint
from stilts.cli.train import main
from stilts.modeling import ModelSource, build_model
from stilts.tasks import get_task

PLAIN_MODES = ("model_only", "full_model_only")
STATE_MODES = ("state_model_only", "state_full_model", "state_all", "state_adapter")
BASE = "--bert_base_path"  # stands for "the file is the base weights" in the cases below
ALL_STATE = "an all_state.p checkpoint (a dict with a 'model' entry)"
KEY = "bert.pooler.dense.bias"  # a key the model has: a value that is not a tensor fails on use, not on lookup


def train_state(**changes):
    """A train_state as Trainer._train_state writes it, with `changes` (None: the field is left out)."""
    state = {"epoch": 0, "batch": 1, "global_step": 1, "seed": 3, "val_history": {},
             "rng_per_rank": [{"torch_rng": torch.get_rng_state()}]}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_bert_dir):
    """name -> path of a malformed checkpoint for the tiny RTE model, and "good" -> a well-formed all_state.p."""
    folder = tmp_path_factory.mktemp("malformed")
    model = build_model(ModelSource(tiny_bert_dir).config(), get_task("rte"))
    weights = model.state_dict()
    optimizer = torch.optim.AdamW(model.parameters())
    good = make_checkpoint(model, "all", {}, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                           train_state=train_state())
    objects = {
        "good": good,
        "list": list(weights.values()),
        "str value": {**weights, KEY: "0.5"},
        "model list": {**good, "model": list(weights.values())},
        "model str value": {**good, "model": {**weights, KEY: "0.5"}},
        "train_state {}": {**good, "train_state": {}},
        "no global_step": {**good, "train_state": train_state(global_step=None)},
    }
    paths = {}
    for name, obj in objects.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.p"
        torch.save(obj, paths[name])
    paths["random bytes"] = folder / "random.p"
    paths["random bytes"].write_bytes(random.Random(0).randbytes(4096))  # seeded: b"\x80" first would be a pickle
    paths["safetensors"] = folder / "renamed_safetensors.p"
    save_file(weights, paths["safetensors"])
    return paths


CASES = [
    *[("list", mode, "holds a list, expected a state dict (a dict of tensors)") for mode in (*PLAIN_MODES, BASE)],
    *[("list", mode, f"holds a list, expected {ALL_STATE}") for mode in STATE_MODES],
    *[("str value", mode, f"holds a str under key '{KEY}', expected tensors") for mode in (*PLAIN_MODES, BASE)],
    *[("model list", mode, "'model' entry holds a list, expected a state dict (a dict of tensors)")
      for mode in STATE_MODES],
    *[("model str value", mode, f"'model' entry holds a str under key '{KEY}', expected tensors")
      for mode in STATE_MODES],
    ("train_state {}", "state_all", "'train_state' entry lacks epoch, batch, global_step, seed, rng_per_rank"),
    ("no global_step", "state_all", "'train_state' entry lacks global_step"),
    *[("random bytes", mode, "not a torch checkpoint (neither a zip nor a pickle)")
      for mode in (*PLAIN_MODES, *STATE_MODES, BASE)],
    *[("safetensors", mode, "a safetensors file, not a torch checkpoint: rename it to .safetensors")
      for mode in (*PLAIN_MODES, *STATE_MODES, BASE)],
]


def load_args(files, name, mode, model_dir):
    """Flags loading file `name` in `mode`; BASE: as the base weights under a good adapter checkpoint."""
    if mode == BASE:
        return ["--bert_load_mode", "state_adapter", "--bert_load_path", files["good"], BASE, files[name]]
    base = [BASE, model_dir] if mode == "state_adapter" else []
    return ["--bert_load_mode", mode, "--bert_load_path", files[name], *base]


@pytest.mark.parametrize("name,mode,expected", CASES, ids=[f"{name}-{mode}" for name, mode, _ in CASES])
def test_malformed_checkpoint_is_one_line(files, tiny_bert_dir, tmp_path, capsys, name, mode, expected):
    out = tmp_path / "out"
    err = refused(capsys, *rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE,
                                    *load_args(files, name, mode, tiny_bert_dir)))
    assert f"{files[name]}: {expected}" in err
    assert not out.exists()


def test_output_folder_is_not_changed(files, tiny_bert_dir, tmp_path, capsys):
    """With --force-overwrite into earlier results, a refused checkpoint leaves them as they were."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "val_preds.csv").write_text("earlier results\n")

    def all_files():
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}

    before = all_files()
    refused(capsys, *rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE, "--force-overwrite",
                              *load_args(files, "no global_step", "state_all", tiny_bert_dir)))
    assert all_files() == before


def test_well_formed_checkpoint_loads(files, tiny_bert_dir, tmp_path):
    """The intact all_state.p passes every check: each case above is refused for its one defect."""
    main(rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                  *load_args(files, "good", "state_all", tiny_bert_dir)))
    assert (tmp_path / "out" / "val_metrics.json").exists()


def test_renamed_safetensors_loads_as_the_message_says(files, tiny_bert_dir, tmp_path):
    """The advice for a safetensors file named .p works: named .safetensors, it loads."""
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes(files["safetensors"].read_bytes())
    main(rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                  "--bert_load_mode", "full_model_only", "--bert_load_path", renamed))
    assert (tmp_path / "out" / "val_metrics.json").exists()


def test_optimizer_state_of_another_run_is_one_line(files, tiny_bert_dir, tmp_path, capsys):
    """"good" holds an AdamW with one parameter group; the trainer's has two (with and without decay)."""
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_train", "--data_dir", RTE,
                                    *load_args(files, "good", "state_all", tiny_bert_dir)))
    assert f"--bert_load_mode state_all: {files['good']}: its optimizer state does not fit this run" in err
    assert not (tmp_path / "out").exists(), "refused before anything is written"
