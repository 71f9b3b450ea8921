"""Adapters (issue 7): near-identity start, what trains, tunable checkpoints, STILTs with adapters.

The CLI tests share two tiny-model MNLI runs (module fixture `mnli_runs`): the same adapter
training saved once with `model_all` and once with `model_tunable`; the last tests run stilts-run --adapters.
"""
import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig

from conftest import FIXTURES, REPO, refused, refused_by, run_train
from stilts.cli import run as stilts_run
from stilts.adapters import Adapter
from stilts.checkpoints import load_checkpoint, load_weights
from stilts.errors import StiltsError
from stilts.metrics import majority_baseline
from stilts.modeling import BertForGlue, ModelSource
from stilts.tasks import get_task

ADAPTER_SIZE = 8
SST2_LEARN = os.path.join(REPO, "tests", "fixtures", "glue_learn", "SST-2")


def write_adapter_config(model_dir, path, adapter_size=ADAPTER_SIZE):
    """The tiny model's config.json plus the seed's adapter keys."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    config.update(use_adapter=True, adapter_size=adapter_size, adapter_initializer_range=1e-4)
    with open(path, "w") as f:
        json.dump(config, f)
    return str(path)


@pytest.fixture(scope="module")
def adapter_config(tiny_bert_dir, tmp_path_factory):
    return write_adapter_config(tiny_bert_dir, tmp_path_factory.mktemp("cfg") / "adapter.json")


def seed_trainable_names(num_layers, head="classifier"):
    """Trainable parameter names in the seed's checkpoints: adapters, LayerNorms, the head."""
    names = ["bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias", f"{head}.weight", f"{head}.bias"]
    for i in range(num_layers):
        for block in ("attention.output", "output"):
            prefix = f"bert.encoder.layer.{i}.{block}."
            names += [prefix + "LayerNorm.weight", prefix + "LayerNorm.bias"]
            names += [f"{prefix}adapter.{proj}.{p}" for proj in ("down_project", "up_project")
                      for p in ("weight", "bias")]
    return set(names)


def build(config, tiny_bert_dir, num_labels=2):
    model = BertForGlue(config, num_labels)
    load_weights(model, "from_pretrained", pretrained_state=ModelSource(tiny_bert_dir).pretrained_encoder_state())
    return model.eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (3, 9), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return ids, mask, torch.zeros_like(ids)


def adapters_of(model):
    return [m for m in model.modules() if isinstance(m, Adapter)]


def perturb_adapters(model):
    with torch.no_grad():
        for adapter in adapters_of(model):
            adapter.down_project.weight.normal_(std=0.5)
            adapter.up_project.weight.normal_(std=0.5)


# ----------------------------------------------------------------------------- in process

def test_near_identity_init_matches_plain_model(tiny_bert_dir, adapter_config):
    torch.manual_seed(0)
    plain = build(ModelSource(tiny_bert_dir).config(), tiny_bert_dir)
    with_adapters = build(BertConfig.from_json_file(adapter_config), tiny_bert_dir)
    with_adapters.classifier.load_state_dict(plain.classifier.state_dict())
    assert len(adapters_of(with_adapters)) == 2 * 2 and not adapters_of(plain)
    with torch.no_grad():
        hidden_plain = plain.bert(*inputs()[:2]).last_hidden_state
        hidden_adapters = with_adapters.bert(*inputs()[:2]).last_hidden_state
        assert (hidden_plain - hidden_adapters).abs().max() < 1e-3
        assert torch.allclose(plain(*inputs()), with_adapters(*inputs()), atol=1e-3)
        # The adapters do run (a transformers upgrade that bypassed the dropout hook would fail here).
        perturb_adapters(with_adapters)
        assert (with_adapters.bert(*inputs()[:2]).last_hidden_state - hidden_plain).abs().max() > 1e-2


def test_seed_parameter_names_and_freezing(tiny_bert_dir, adapter_config):
    model = build(BertConfig.from_json_file(adapter_config), tiny_bert_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == seed_trainable_names(num_layers=2)
    assert "bert.encoder.layer.0.attention.output.adapter.down_project.weight" in model.state_dict()
    assert not model.bert.pooler.dense.weight.requires_grad  # the seed freezes the pooler too


def test_gradients_only_on_adapters_layernorms_and_head(tiny_bert_dir, adapter_config):
    model = build(BertConfig.from_json_file(adapter_config), tiny_bert_dir).train()
    model(*inputs()).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_adapters_survive_deepcopy_and_torch_compile(tiny_bert_dir, adapter_config):
    model = build(BertConfig.from_json_file(adapter_config), tiny_bert_dir)
    perturb_adapters(model)
    with torch.no_grad():
        expected = model(*inputs())
        clone = copy.deepcopy(model)
        assert torch.equal(clone(*inputs()), expected)
        perturb_adapters(clone)  # the clone's hooks run the clone's adapters, not the original's
        assert not torch.allclose(clone(*inputs()), expected)
        assert torch.equal(model(*inputs()), expected)
        # Dynamo traces the hook ("eager" backend: the tracing without the slow code generation).
        assert torch.allclose(torch.compile(model, backend="eager", dynamic=True)(*inputs()), expected, atol=1e-6)


def test_plain_weights_into_adapter_model(tiny_bert_dir, adapter_config, tmp_path):
    """Missing adapter keys are expected when loading plain BERT; any other missing key is an error."""
    plain_state = {"bert." + k: v for k, v in load_file(os.path.join(tiny_bert_dir, "model.safetensors")).items()}
    torch.save(plain_state, tmp_path / "plain.bin")
    model = BertForGlue(BertConfig.from_json_file(adapter_config), 2)
    load_weights(model, "model_only", str(tmp_path / "plain.bin"))
    assert torch.equal(model.bert.pooler.dense.weight, plain_state["bert.pooler.dense.weight"])
    del plain_state["bert.encoder.layer.1.output.dense.weight"]
    torch.save(plain_state, tmp_path / "incomplete.bin")
    with pytest.raises(StiltsError, match="missing 1 keys.*layer.1.output.dense.weight"):
        load_weights(model, "model_only", str(tmp_path / "incomplete.bin"))


def test_adapter_checkpoint_into_plain_config_is_refused(tiny_bert_dir, adapter_config, tmp_path):
    adapter_model = BertForGlue(BertConfig.from_json_file(adapter_config), 2)
    torch.save({"model": adapter_model.state_dict()}, tmp_path / "all_state.p")
    plain = BertForGlue(ModelSource(tiny_bert_dir).config(), 2)
    with pytest.raises(StiltsError, match="adapter config"):
        load_weights(plain, "state_full_model", str(tmp_path / "all_state.p"))


# ----------------------------------------------------------------------------- glue/train.py

def tiny_mnli_args(tiny_bert_dir, adapter_config, output_dir, *extra):
    return ("--task_name", "mnli", "--data_dir", os.path.join(FIXTURES, "MNLI"), "--do_lower_case",
            "--bert_model", tiny_bert_dir, "--bert_config_json_path", adapter_config, "--max_seq_length", "64",
            "--seed", "3", "--not-verbose", "--output_dir", output_dir, *extra)


@pytest.fixture(scope="module")
def mnli_runs(tiny_bert_dir, adapter_config, tmp_path_factory):
    """Two identical adapter trainings (2 optimizer steps), saved model_all and model_tunable."""
    root = tmp_path_factory.mktemp("mnli-adapters")
    train = ("--do_train", "--do_save", "--train_examples_number", "32", "--train_batch_size", "16",
             "--num_train_epochs", "1", "--learning_rate", "1e-2")
    runs = {}
    for mode in ("model_all", "model_tunable"):
        out = root / mode
        result = run_train(*tiny_mnli_args(tiny_bert_dir, adapter_config, out, *train, "--bert_save_mode", mode,
                                           "--do_val", "--print-trainable-params"))
        runs[mode] = (out, result.stdout)
    return runs


def test_frozen_weights_bit_identical_after_training(mnli_runs, tiny_bert_dir):
    trained = load_checkpoint(str(mnli_runs["model_all"][0] / "all_state.p"))["model"]
    base = load_file(os.path.join(tiny_bert_dir, "model.safetensors"))
    tunable = seed_trainable_names(num_layers=2)
    compared = 0
    for key, value in base.items():
        name = "bert." + key
        if name in tunable or name not in trained:  # buffers such as position_ids are not saved
            continue
        assert torch.equal(trained[name], value), f"frozen {name} changed"
        compared += 1
    assert compared > 20
    for name in tunable:
        if "LayerNorm" in name:
            assert not torch.equal(trained[name], base[name[len("bert."):]]), f"{name} did not train"
        elif "up_project.bias" in name:  # initialised to zero; an Adam step at lr 1e-2 moves it ~1e-2
            assert trained[name].abs().max() > 1e-3, f"{name} did not train"


def test_print_trainable_params_lists_only_tunable(mnli_runs, adapter_config):
    stdout = mnli_runs["model_all"][1]
    listed = re.findall(r"^\s+(\S+)\s+\(", stdout.split("TRAINABLE PARAMS:")[1], flags=re.M)
    assert set(listed) == seed_trainable_names(num_layers=2) and len(listed) == len(set(listed))
    model = BertForGlue(BertConfig.from_json_file(adapter_config), 3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert f"total: {trainable:,} of {total:,}" in stdout


def test_tunable_checkpoint_is_small_and_holds_only_tunable(mnli_runs):
    all_path, tunable_path = (str(mnli_runs[m][0] / "all_state.p") for m in ("model_all", "model_tunable"))
    assert os.path.getsize(tunable_path) * 20 < os.path.getsize(all_path)
    assert set(load_checkpoint(tunable_path)["model"]) == seed_trainable_names(num_layers=2)


def seed_style_base(tiny_bert_dir, path):
    """The base file the seed's `--bert_load_args bert_model_path:` took: pytorch-pretrained-BERT's
    pytorch_model.bin (bert.-prefixed keys, LayerNorm gamma/beta, the pretraining `cls.` head)."""
    state = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in load_file(os.path.join(tiny_bert_dir, "model.safetensors")).items()}
    state["cls.predictions.bias"] = torch.zeros(30522)
    torch.save(state, path)
    return str(path)


def read_preds(folder, name="val_preds.csv"):
    return np.loadtxt(os.path.join(folder, name), delimiter=",")


@pytest.mark.parametrize("base_form", ["--bert_base_path folder", "--bert_load_args seed file"])
def test_state_adapter_round_trip(mnli_runs, tiny_bert_dir, adapter_config, tmp_path, base_form):
    trained = mnli_runs["model_tunable"][0]
    if base_form.startswith("--bert_base_path"):
        base = ("--bert_base_path", tiny_bert_dir)
    else:
        base = ("--bert_load_args", "bert_model_path:" + seed_style_base(tiny_bert_dir, tmp_path / "base.bin"))
    run_train(*tiny_mnli_args(tiny_bert_dir, adapter_config, tmp_path / "out", "--do_val",
                              "--bert_load_mode", "state_adapter", "--bert_load_path", trained / "all_state.p", *base))
    for name in ("val_preds.csv", "mm_val_preds.csv"):
        np.testing.assert_allclose(read_preds(tmp_path / "out", name), read_preds(trained, name), atol=1e-6)


def test_stilts_stage_b_continues_from_adapters_with_new_head(mnli_runs, tiny_bert_dir, adapter_config, tmp_path):
    stage_a = load_checkpoint(str(mnli_runs["model_tunable"][0] / "all_state.p"))["model"]
    args = ("--task_name", "rte", "--data_dir", os.path.join(FIXTURES, "RTE"), "--do_lower_case", "--do_val",
            "--bert_model", tiny_bert_dir, "--bert_config_json_path", adapter_config, "--not-verbose",
            "--bert_load_mode", "state_model_only", "--bert_load_path", mnli_runs["model_tunable"][0] / "all_state.p")
    refused = run_train(*args, "--output_dir", tmp_path / "no-base", check=False)
    assert refused.returncode == 2 and "--bert_base_path" in refused.stderr
    run_train(*args, "--bert_base_path", os.path.join(tiny_bert_dir, "model.safetensors"), "--do_save",
              "--bert_save_mode", "model_tunable", "--output_dir", tmp_path / "b")
    stage_b = load_checkpoint(str(tmp_path / "b" / "all_state.p"))["model"]
    encoder_keys = [k for k in stage_a if k.startswith("bert.")]
    assert encoder_keys and all(torch.equal(stage_b[k], stage_a[k]) for k in encoder_keys)
    assert stage_a["classifier.weight"].shape[0] == 3 and stage_b["classifier.weight"].shape[0] == 2


def test_bad_adapter_inputs_exit_2(mnli_runs, tiny_bert_dir, tmp_path, capsys):
    trained = mnli_runs["model_tunable"][0] / "all_state.p"
    narrow = write_adapter_config(tiny_bert_dir, tmp_path / "narrow.json", adapter_size=ADAPTER_SIZE // 2)
    cases = {
        "adapter_size": ("--bert_config_json_path", narrow, "--bert_base_path", tiny_bert_dir),
        "base BERT weights not found": ("--bert_config_json_path", narrow,
                                        "--bert_base_path", tmp_path / "missing.bin"),
    }
    for message, extra in cases.items():
        out = tmp_path / message.replace(" ", "_")
        err = refused(capsys, "--task_name", "mnli", "--data_dir", os.path.join(FIXTURES, "MNLI"), "--do_val",
                      "--bert_model", tiny_bert_dir, "--bert_load_mode", "state_adapter",
                      "--bert_load_path", trained, "--output_dir", out, *extra)
        assert message in err and not os.path.exists(out)


@pytest.mark.slow  # see conftest.py
def test_pipeline_with_adapters(tiny_bert_dir, adapter_config, tmp_path):
    """stilts-run --adapters: a model_tunable stage A, and STILTs runs over --bert_model's base weights."""
    out = tmp_path / "study"
    result = subprocess.run(
        [sys.executable, "-m", "stilts.cli.run", "--adapters", "--intermediate", "mnli", "--targets", "rte",
         "--restarts", "1", "--no_test", "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", out,
         "--bert_config_json_path", adapter_config, "--do_lower_case", "--not-verbose", "--num_train_epochs", "1",
         "--train_examples_number", "8", "--train_batch_size", "4", "--max_seq_length", "64"],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stage_a = load_checkpoint(str(out / "intermediate_mnli" / "all_state.p"))["model"]
    assert set(stage_a) == seed_trainable_names(num_layers=2)
    target_args = json.load(open(out / "rte" / "stilts" / "seed_1" / "args.json"))
    assert target_args["bert_base_path"] == os.path.abspath(tiny_bert_dir)
    assert target_args["bert_load_mode"] == "state_model_only"
    assert target_args["bert_config_json_path"] == adapter_config


def test_pipeline_adapters_needs_an_adapter_config(tiny_bert_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stilts_run.main(["--adapters", "--intermediate", "mnli", "--targets", "rte", "--restarts", "1",
                       "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", str(tmp_path / "s")])
    assert exit_info.value.code == 2 and "--bert_config_json_path" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.slow  # see conftest.py
def test_minilm_adapters_learn_sst2(minilm_dir, tmp_path):
    """Adapters need a higher learning rate than full fine-tuning (3e-3 here vs 1e-4)."""
    task = get_task("sst")
    baseline = majority_baseline(get_task("sst"), [int(e.label) for e in task.read("train", SST2_LEARN)],
                                 [int(e.label) for e in task.read("dev", SST2_LEARN)])["acc"]
    run_train("--task_name", "sst", "--data_dir", SST2_LEARN, "--do_train", "--do_val", "--do_lower_case",
              "--bert_model", minilm_dir,
              "--bert_config_json_path", os.path.join(REPO, "configs", "minilm-adapter.json"),
              "--learning_rate", "3e-3", "--num_train_epochs", "2", "--max_seq_length", "64",
              "--eval_batch_size", "100", "--seed", "1", "--not-verbose", "--output_dir", tmp_path / "sst")
    acc = json.load(open(tmp_path / "sst" / "val_metrics.json"))["metrics"]["acc"]
    assert acc > baseline + 0.1, f"dev accuracy {acc:.3f} vs majority baseline {baseline:.3f}"


def test_an_adapter_model_cannot_be_exported(mnli_runs, tmp_path, capsys):
    """stilts-export says in one line why: adapters do not merge into the weights."""
    from stilts.cli.export import main as export_main

    err = refused_by(capsys, export_main, [mnli_runs["model_all"][0], "--out", tmp_path / "export"])
    assert "an adapter model cannot be exported: its adapters are not linear" in err
    assert not (tmp_path / "export").exists()
