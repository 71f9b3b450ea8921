"""Load and save modes: round trips, the seed's checkpoint format, and checkpoints that do not fit."""
import os

import pytest
import torch
from transformers import BertConfig

from stilts.checkpoints import load_weights, make_checkpoint
from stilts.errors import StiltsError
from stilts.modeling import BertForGlue, ModelSource
from stilts.tasks import get_task

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def tiny_model(task="rte", seed=0, **overrides):
    torch.manual_seed(seed)
    t = get_task(task)
    return BertForGlue(BertConfig(**{**TINY, **overrides}), t.num_labels, regression=t.is_regression)


def trained_like(task="rte", seed=1):
    """A model whose every weight differs from a fresh one (stands in for a fine-tuned model)."""
    model = tiny_model(task, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def same_tensors(a, b, keys=None):
    keys = keys if keys is not None else a.keys()
    return all(torch.equal(a[k], b[k]) for k in keys)


def save(path, obj):
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("save_mode,has_optimizer", [("all", True), ("tunable", True),
                                                     ("model_all", False), ("model_tunable", False)])
def test_save_modes_and_state_full_model_round_trip(tmp_path, save_mode, has_optimizer):
    model = trained_like()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[101, 102]]), torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)).sum().backward()
    optimizer.step()
    checkpoint = make_checkpoint(model, save_mode, {"task_name": "rte"}, optimizer)
    assert set(checkpoint) == ({"args", "model", "optimizer"} if has_optimizer else {"args", "model"})
    path = save(tmp_path / "all_state.p", checkpoint)
    restored = tiny_model(seed=5)
    load_weights(restored, "state_full_model", path)
    assert same_tensors(model.state_dict(), restored.state_dict())


def test_state_model_only_drops_the_head(tmp_path):
    mnli = trained_like("mnli")
    path = save(tmp_path / "all_state.p", make_checkpoint(mnli, "model_all", {}))
    rte = tiny_model("rte", seed=7)
    fresh_head = rte.classifier.weight.clone()
    load_weights(rte, "state_model_only", path)
    encoder = [k for k in rte.state_dict() if k.startswith("bert.")]
    assert same_tensors(mnli.state_dict(), rte.state_dict(), encoder)
    assert torch.equal(rte.classifier.weight, fresh_head) and rte.classifier.out_features == 2


def test_plain_state_dict_modes(tmp_path):
    model = trained_like()
    path = save(tmp_path / "model.p", model.state_dict())
    full = tiny_model(seed=3)
    load_weights(full, "full_model_only", path)
    assert same_tensors(model.state_dict(), full.state_dict())
    encoder_only = tiny_model(seed=3)
    load_weights(encoder_only, "model_only", path)
    assert torch.equal(encoder_only.bert.pooler.dense.weight, model.bert.pooler.dense.weight)
    assert not torch.equal(encoder_only.classifier.weight, model.classifier.weight)


def test_state_all_keeps_the_optimizer_for_resuming(tmp_path):
    model = trained_like()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save(tmp_path / "all_state.p", make_checkpoint(model, "all", {}, optimizer))
    checkpoint = load_weights(tiny_model(seed=2), "state_all", path)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]


def seed_format(state_dict):
    """Key names as pytorch-pretrained-BERT (the seed's fork) wrote them."""
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state_dict.items()}


def test_loads_a_checkpoint_written_by_the_seed(tmp_path):
    model = trained_like("stsb")
    seed_sd = seed_format(model.state_dict())
    assert any("LayerNorm.gamma" in k for k in seed_sd) and "regressor.weight" in seed_sd
    # glue/model_setup.py save_bert of the seed: {"args": vars(args), "model": state_dict}
    path = save(tmp_path / "all_state.p", {"args": {"task_name": "stsb", "bert_model": "bert-base-uncased"},
                                           "model": seed_sd})
    restored = tiny_model("stsb", seed=9)
    load_weights(restored, "state_full_model", path)
    assert same_tensors(model.state_dict(), restored.state_dict())
    plain = save(tmp_path / "mnli__stsb.p", seed_sd)  # the seed's released models: plain state dicts
    restored = tiny_model("stsb", seed=9)
    load_weights(restored, "full_model_only", plain)
    assert same_tensors(model.state_dict(), restored.state_dict())


def test_head_that_does_not_fit_is_an_error_not_a_reinit(tmp_path):
    path = save(tmp_path / "all_state.p", make_checkpoint(trained_like("mnli"), "model_all", {}))
    with pytest.raises(StiltsError, match="head 'classifier.weight' has shape \\[3, 32\\].*state_model_only"):
        load_weights(tiny_model("rte"), "state_full_model", path)
    with pytest.raises(StiltsError, match="its head 'classifier.weight' does not fit.*regressor"):
        load_weights(tiny_model("stsb"), "state_full_model", path)


def test_other_hidden_size_is_an_error(tmp_path):
    path = save(tmp_path / "all_state.p", make_checkpoint(tiny_model(hidden_size=48), "model_all", {}))
    with pytest.raises(StiltsError, match="has shape \\[.*48.*\\] but the model needs"):
        load_weights(tiny_model(), "state_model_only", path)


def test_mode_and_file_kind_must_agree(tmp_path):
    model = trained_like()
    state_file = save(tmp_path / "all_state.p", make_checkpoint(model, "model_all", {}))
    plain_file = save(tmp_path / "plain.p", model.state_dict())
    with pytest.raises(StiltsError, match="all_state.p checkpoint; use --bert_load_mode state_model_only"):
        load_weights(tiny_model(), "model_only", state_file)
    with pytest.raises(StiltsError, match="not an all_state.p checkpoint"):
        load_weights(tiny_model(), "state_model_only", plain_file)


def test_from_pretrained_reads_a_model_folder(tiny_bert_dir):
    source = ModelSource(tiny_bert_dir)
    model = BertForGlue(source.config(), 2)
    load_weights(model, "from_pretrained", pretrained_state=source.pretrained_encoder_state())
    from transformers import BertModel
    reference = BertModel.from_pretrained(tiny_bert_dir)
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, reference.encoder.layer[1].output.dense.weight)


def test_google_names_use_bert_all_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("BERT_ALL_DIR", raising=False)
    source = ModelSource("bert-large-uncased")
    assert source.config().hidden_size == 1024 and source.vocab().endswith("uncased_L-24_H-1024_A-16/vocab.txt")
    monkeypatch.setenv("BERT_ALL_DIR", str(tmp_path))
    with pytest.raises(StiltsError, match="hub.*uncased_L-12_H-768_A-12"):
        ModelSource("bert-base-uncased").pretrained_encoder_state()
    assert not os.listdir(tmp_path)
