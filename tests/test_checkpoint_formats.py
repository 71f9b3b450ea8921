"""--checkpoint_format safetensors: every checkpoint of a run without pickle, the same load and save
modes, the training state beside the weights, resume exact: a run resumed from a .safetensors
periodic checkpoint ends with the weights of the uninterrupted run that wrote .p files."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from conftest import MID_EPOCH, RESUMABLE_RTE as ARGS, refused_by, study_argv, values
from stilts.checkpoints import read_weights
from stilts.cli.run import main as study_main
from stilts.cli.train import main


def train(*args):
    main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):
    """The same run in each format: (folder of the .p run, folder of the .safetensors run)."""
    root = tmp_path_factory.mktemp("formats")
    for name, extra in (("p", []), ("safe", ["--checkpoint_format", "safetensors"])):
        train(*ARGS, "--seed", "11", "--bert_model", tiny_bert_dir, "--output_dir", root / name, "--do_val", *extra)
    return root / "p", root / "safe"


def test_every_checkpoint_is_safetensors_and_holds_what_the_pickle_holds(runs):
    pickled, safe = runs
    names = sorted(os.listdir(safe))
    assert "all_state.safetensors" in names and not [n for n in names if n.endswith(".p")]
    assert [n.replace(".safetensors", ".p") for n in names if n.startswith("all_state")] == \
        sorted(n for n in os.listdir(pickled) if n.startswith("all_state"))
    with safe_open(safe / "all_state.safetensors", "pt") as f:  # a plain safetensors file, with metadata
        assert "stilts_checkpoint" in f.metadata() and "checkpoint.model.bert.pooler.dense.weight" in f.keys()
    a, b = torch.load(pickled / MID_EPOCH, weights_only=True), read_weights(str(safe / MID_EPOCH.replace(".p", ".safetensors")))
    assert set(a) == set(b) == {"args", "model", "optimizer", "scheduler", "train_state"}
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] == 3
    assert a["scheduler"] == b["scheduler"] and a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads((safe / "val_metrics.json").read_text()) == json.loads((pickled / "val_metrics.json").read_text())


def test_a_run_resumed_from_safetensors_ends_with_the_uninterrupted_weights(runs, tiny_bert_dir, tmp_path):
    pickled, safe = runs
    resumed = tmp_path / "resumed"
    train(*ARGS, "--seed", "11", "--bert_model", tiny_bert_dir, "--output_dir", resumed, "--checkpoint_format",
          "safetensors", "--bert_load_mode", "state_all", "--bert_load_path", safe / MID_EPOCH.replace(".p", ".safetensors"))
    expected = torch.load(pickled / "all_state.p", weights_only=True)["model"]
    got = read_weights(str(resumed / "all_state.safetensors"))["model"]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("mode", ["state_full_model", "state_model_only"])
def test_load_modes_read_safetensors_checkpoints(runs, tiny_bert_dir, tmp_path, mode):
    pickled, safe = runs
    for folder, name in ((pickled, "all_state.p"), (safe, "all_state.safetensors")):
        train(*ARGS[:4], "--do_val", "--do_lower_case", "--not-verbose", "--no_cuda", "--max_seq_length", "64",
              "--bert_model", tiny_bert_dir, "--output_dir", tmp_path / name, "--bert_load_mode", mode,
              "--bert_load_path", folder / name, "--seed", "5")
    p, s = ((tmp_path / name / "val_preds.csv").read_text() for name in ("all_state.p", "all_state.safetensors"))
    assert p == s


def test_a_safetensors_run_exports_to_transformers(runs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from stilts.cli.export import main as export_main

    _, safe = runs
    export_main([str(safe), "--out", str(tmp_path / "export")])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    trained = read_weights(str(safe / "all_state.safetensors"))["model"]
    assert torch.equal(model.classifier.weight, trained["classifier.weight"])


def test_a_damaged_safetensors_checkpoint_is_one_line(runs, tiny_bert_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, bad, metadata={"stilts_checkpoint": '{"dict": [["model", {"tensor": "gone"}]]}'})
    err = refused_by(capsys, main, [*ARGS[:4], "--do_val", "--bert_model", tiny_bert_dir, "--output_dir",
                                    tmp_path / "out", "--bert_load_mode", "state_full_model", "--bert_load_path", bad])
    assert "bad.safetensors: a damaged stilts checkpoint" in err


@pytest.mark.slow  # a study: see conftest.py
def test_a_study_in_safetensors(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    study_main([str(a) for a in study_argv(out, tiny_bert_dir, "--checkpoint_format", "safetensors",
                                           targets="rte", seeds="1")])
    assert (out / "intermediate_mnli" / "all_state.safetensors").is_file() and len(values(out)) == 2
    assert not list(out.glob("**/*.p"))


def test_stilts_run_continues_from_the_newest_safetensors_checkpoint(tmp_path):
    from stilts import attempt
    from stilts.study import Run

    for name in ("all_state___epoch0000___batch000009.safetensors", "all_state___epoch0001___batch000002.safetensors",
                 "all_state___epoch0000___batch000019.safetensors", "all_state.safetensors"):
        (tmp_path / name).write_bytes(b"")
    run = Run("r", str(tmp_path), ["--task_name", "rte"], ("val_metrics.json",), resumable=True)
    command = attempt.command_for(run, attempt.Attempts())
    assert command[command.index("--bert_load_path") + 1] == str(tmp_path / "all_state___epoch0001___batch000002.safetensors")
