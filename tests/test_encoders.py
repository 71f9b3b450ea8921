"""Every encoder stilts fine-tunes besides BERT (issue 15), as tiny random models (hidden 32, two
layers) with tokenizers trained here on the fixture texts: nothing is downloaded.

For each architecture: a STILTs run MNLI -> RTE with the seed's load and save modes, heads that do
not fit, the speed paths against fixed padding, token types, adapters where the layers take them.
BERT itself is held to the seed by the other test files.
"""
import copy
import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from conftest import FIXTURES, REPO, assert_same_gradients, one_step_gradients, refused_by
from stilts.checkpoints import load_weights, make_checkpoint
from stilts.cli.train import main
from stilts.distributed import DistContext
from stilts.errors import StiltsError
from stilts.features import ModelTokenizer, cache_key, collate, load_features
from stilts.modeling import ModelSource, build_model, transformers_for_glue, warn_if_fp16_overflows
from stilts.settings import TrainSettings
from stilts.tasks import get_task
from stilts.trainer import Trainer

MNLI, RTE = get_task("mnli"), get_task("rte")
MNLI_DIR, RTE_DIR = os.path.join(FIXTURES, "MNLI"), os.path.join(FIXTURES, "RTE")
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


# ----------------------------------------------------------------------------- tiny models
def fixture_texts():
    return [text for task, folder in ((RTE, RTE_DIR), (MNLI, MNLI_DIR))
            for e in task.read("train", folder) for text in (e.text_a, e.text_b)]


def trained(model, trainer, normalizer=None, pre_tokenizer=None):
    tokenizer = Tokenizer(model)
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.train_from_iterator(fixture_texts(), trainer)
    return json.loads(tokenizer.to_str())["model"]["vocab"], tokenizer


def byte_bpe(specials):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab, tokenizer = trained(models.BPE(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False), pre_tokenizer=byte_level)
    return vocab, [tuple(merge) for merge in json.loads(tokenizer.to_str())["model"]["merges"]], tokenizer


def unigram(specials, unk):
    vocab, _ = trained(models.Unigram(), trainers.UnigramTrainer(
        vocab_size=300, special_tokens=specials, unk_token=unk, show_progress=False),
        pre_tokenizer=pre_tokenizers.Metaspace())
    return [tuple(piece) for piece in vocab]


def wordpiece():
    vocab, _ = trained(models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=BERT_SPECIALS, show_progress=False),
        normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer())
    return vocab


def modernbert_tokenizer():
    """ModernBERT ships a plain tokenizer.json: byte-level BPE with [CLS] a [SEP] b [SEP]."""
    from transformers import PreTrainedTokenizerFast

    _, _, tokenizer = byte_bpe(BERT_SPECIALS)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


def tokenizer_and_config(arch):
    """The family's tokenizer over a vocabulary trained here, and its config as the released models
    have it (RoBERTa: one token type, padding id 1; DeBERTa-v3: relative positions, no token types)."""
    import transformers as t

    if arch in ("roberta", "xlm-roberta"):
        if arch == "roberta":
            vocab, merges, _ = byte_bpe(ROBERTA_SPECIALS)
            tokenizer = t.RobertaTokenizer(vocab=vocab, merges=merges)
        else:
            tokenizer = t.XLMRobertaTokenizer(vocab=unigram(ROBERTA_SPECIALS, "<unk>"))
        config_class = t.RobertaConfig if arch == "roberta" else t.XLMRobertaConfig
        config = config_class(**SIZES, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    elif arch == "deberta-v2":
        tokenizer = t.DebertaV2Tokenizer(vocab=unigram(BERT_SPECIALS, "[UNK]"))
        config = t.DebertaV2Config(**SIZES, max_position_embeddings=128, type_vocab_size=0, relative_attention=True,
                                   position_buckets=16, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                   norm_rel_ebd="layer_norm", share_att_key=True, pad_token_id=0)
    elif arch == "electra":
        tokenizer = t.ElectraTokenizer(vocab=wordpiece())
        config = t.ElectraConfig(**SIZES, embedding_size=16, max_position_embeddings=128)
    elif arch == "distilbert":
        tokenizer = t.DistilBertTokenizer(vocab=wordpiece())
        config = t.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=128)
    elif arch == "albert":
        tokenizer = t.AlbertTokenizer(vocab=unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>"))
        config = t.AlbertConfig(**SIZES, embedding_size=16, max_position_embeddings=128, pad_token_id=0)
    elif arch == "modernbert":
        tokenizer = modernbert_tokenizer()
        ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token)
               for name, token in (("pad", "[PAD]"), ("cls", "[CLS]"), ("bos", "[CLS]"), ("sep", "[SEP]"),
                                   ("eos", "[SEP]"))}
        config = t.ModernBertConfig(**SIZES, max_position_embeddings=256, local_attention=16,
                                    global_attn_every_n_layers=2, **ids)
    config.vocab_size = len(tokenizer)
    return tokenizer, config


def make_tiny_encoder(folder, arch, seed=0, **overrides):
    """A random encoder of `arch` saved as transformers saves a base model, with its tokenizer."""
    from transformers import AutoModel

    tokenizer, config = tokenizer_and_config(arch)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


ARCHITECTURES = ["roberta", "xlm-roberta", "deberta-v2", "electra", "distilbert", "albert", "modernbert"]
WITH_ADAPTERS = ["roberta", "xlm-roberta", "deberta-v2", "electra"]
PREFIXES = {"roberta": "roberta", "xlm-roberta": "roberta", "deberta-v2": "deberta", "electra": "electra",
            "distilbert": "distilbert", "albert": "albert", "modernbert": "model"}


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {arch: make_tiny_encoder(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


def train_args(arch_dir, out, task, *extra):
    folder = MNLI_DIR if task == "mnli" else RTE_DIR
    return [str(a) for a in ("--task_name", task, "--data_dir", folder, "--bert_model", arch_dir, "--output_dir", out,
                             "--max_seq_length", "64", "--train_batch_size", "16", "--num_train_epochs", "1",
                             "--learning_rate", "1e-3", "--seed", "1", "--not-verbose", "--no_cuda", *extra)]


@pytest.fixture(scope="module")
def stage_a(encoder_dirs, tmp_path_factory):
    """arch -> the all_state.p of a short MNLI training (STILTs stage A), made once per architecture."""
    root, done = tmp_path_factory.mktemp("stage-a"), {}

    def checkpoint(arch):
        if arch not in done:
            main(train_args(encoder_dirs[arch], root / arch, "mnli", "--do_train", "--do_save",
                            "--bert_save_mode", "model_all"))
            done[arch] = str(root / arch / "all_state.p")
        return done[arch]
    return checkpoint


def state_of(path):
    return torch.load(path, weights_only=True)["model"]


def read_preds(folder):
    return np.loadtxt(os.path.join(folder, "val_preds.csv"), delimiter=",")


def output_layer(model):
    """The linear layer that gives the logits: the last one outside the encoder."""
    return [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[0] != model.base_model_prefix][-1]


# ----------------------------------------------------------------------------- STILTs, load and save modes
def test_stilts_mnli_then_rte(arch, encoder_dirs, stage_a, tmp_path):
    """Stage A saves model_all; stage B takes its encoder (state_model_only), a new 2-way head, and
    saves; state_full_model of stage B's checkpoint gives its dev logits again."""
    a = state_of(stage_a(arch))
    prefix = PREFIXES[arch] + "."
    head = {k for k in a if not k.startswith(prefix)}
    assert head and len(head) < len(a)
    assert any(v.shape[0] == 3 for k, v in a.items() if k in head)  # MNLI's 3-way output layer

    main(train_args(encoder_dirs[arch], tmp_path / "b", "rte", "--do_train", "--do_val", "--do_save",
                    "--bert_save_mode", "model_all", "--bert_load_mode", "state_model_only",
                    "--bert_load_path", stage_a(arch)))
    b = state_of(tmp_path / "b" / "all_state.p")
    assert set(b) == set(a)
    assert all(v.shape[0] != 3 for k, v in b.items() if k in head)  # RTE's head: new, 2-way
    assert any(not torch.equal(a[k], b[k]) for k in set(a) - head)  # stage B trained the encoder it took

    main(train_args(encoder_dirs[arch], tmp_path / "c", "rte", "--do_val", "--bert_load_mode", "state_full_model",
                    "--bert_load_path", tmp_path / "b" / "all_state.p"))
    np.testing.assert_allclose(read_preds(tmp_path / "c"), read_preds(tmp_path / "b"), atol=1e-6)
    with open(tmp_path / "b" / "val_metrics.json") as f, open(tmp_path / "c" / "val_metrics.json") as g:
        assert json.load(f)["metrics"] == json.load(g)["metrics"]
    check_export(tmp_path / "b", tmp_path / "export", arch)


def check_export(run_dir, out, arch):
    """stilts-export of an RTE run: transformers' own class of the family, its tokenizer (which stilts
    truncates with too), the run's dev logits and the label names."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stilts.cli.export import main as export_main

    export_main([str(run_dir), "--out", str(out)])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__.lower().startswith(arch.replace("-", ""))  # the family's own class
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"} and tokenizer.model_max_length == 64
    examples = get_task("rte").read("dev", RTE_DIR)
    batch = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation="longest_first",
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(logits, read_preds(run_dir), atol=1e-5, rtol=1e-4)
    assert "through mnli" in (out / "README.md").read_text()


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_load_modes_drop_or_keep_the_head(arch, encoder_dirs, tmp_path):
    config = ModelSource(encoder_dirs[arch]).config()
    torch.manual_seed(0)
    trained = perturbed(build_model(config, RTE))  # stands in for a fine-tuned model
    prefix = trained.base_model_prefix + "."
    torch.save(make_checkpoint(trained, "all", {}, torch.optim.AdamW(trained.parameters())), tmp_path / "all_state.p")
    torch.save(trained.state_dict(), tmp_path / "plain.p")
    for mode, file, keeps_head in (("state_model_only", "all_state.p", False), ("model_only", "plain.p", False),
                                   ("state_full_model", "all_state.p", True), ("full_model_only", "plain.p", True),
                                   ("state_all", "all_state.p", True)):
        restored = build_model(config, RTE)
        fresh = copy.deepcopy(restored.state_dict())
        checkpoint = load_weights(restored, mode, str(tmp_path / file))
        for key, value in restored.state_dict().items():
            expected = trained.state_dict() if keeps_head or key.startswith(prefix) else fresh
            assert torch.equal(value, expected[key]), (mode, key)
    assert "optimizer" in checkpoint  # state_all: the rest is for resuming

    torch.save(make_checkpoint(build_model(config, MNLI), "model_all", {}), tmp_path / "mnli.p")
    name = next(k for k, v in state_of(tmp_path / "mnli.p").items() if not k.startswith(prefix) and v.shape[0] == 3)
    with pytest.raises(StiltsError, match=f"head '{name}' has shape \\[3.*state_model_only"):
        load_weights(build_model(config, RTE), "state_full_model", str(tmp_path / "mnli.p"))


def test_checkpoint_of_another_architecture_or_size_is_refused(encoder_dirs, stage_a, tmp_path, capsys):
    err = refused_by(capsys, main, train_args(encoder_dirs["electra"], tmp_path / "x", "rte", "--do_val",
                                              "--bert_load_mode", "state_model_only",
                                              "--bert_load_path", stage_a("roberta")))
    assert "does not fit the model: unexpected keys ['electra.roberta.embeddings." in err
    err = refused_by(capsys, main, train_args(encoder_dirs["electra"], tmp_path / "y", "mnli", "--do_val",
                                              "--bert_load_mode", "state_full_model",
                                              "--bert_load_path", stage_a("roberta")))
    assert "unexpected keys ['roberta.embeddings." in err and "another architecture" in err

    wide = ModelSource(make_tiny_encoder(tmp_path / "wide", "roberta", hidden_size=48)).config()
    torch.save(make_checkpoint(build_model(wide, MNLI), "model_all", {}), tmp_path / "wide.p")
    err = refused_by(capsys, main, train_args(encoder_dirs["roberta"], tmp_path / "z", "rte", "--do_val",
                                              "--bert_load_mode", "state_model_only",
                                              "--bert_load_path", tmp_path / "wide.p"))
    assert "weights 'roberta.embeddings.word_embeddings.weight' has shape [400, 48] but the model needs [400, 32]" in err
    assert not any(os.path.exists(tmp_path / name) for name in "xyz")


# ----------------------------------------------------------------------------- inputs
def test_each_model_tokenizes_pairs_its_own_way(encoder_dirs):
    roberta = ModelSource(encoder_dirs["roberta"]).tokenizer(do_lower_case=False)
    assert isinstance(roberta, ModelTokenizer)
    assert roberta.layout(pair=True) == ("<s>", "a", "</s>", "</s>", "b", "</s>")
    assert ModelSource(encoder_dirs["modernbert"]).input_layout(pair=False) == ("[CLS]", "a", "[SEP]")

    features = load_features(RTE, "dev", RTE_DIR, roberta, 128)
    assert features.lengths.max() == 128 and features.lengths.min() < 128  # truncated and short pairs
    bos, eos = roberta.tokenizer.bos_token_id, roberta.tokenizer.eos_token_id
    for row in features.input_ids:
        assert row[0] == bos and row[-1] == eos and list(row).count(eos) == 3  # <s> a </s></s> b </s>
    # --do_lower_case is BERT's: another model's tokenizer normalises by its own rules.
    lowered = load_features(RTE, "dev", RTE_DIR, ModelSource(encoder_dirs["roberta"]).tokenizer(True), 128)
    assert all(np.array_equal(x, y) for x, y in zip(features.input_ids, lowered.input_ids))

    electra = ModelSource(encoder_dirs["electra"]).tokenizer(do_lower_case=False)
    pairs = load_features(RTE, "dev", RTE_DIR, electra, 32)
    first = pairs.input_ids[0]
    assert list(first).count(electra.tokenizer.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]
    assert first[pairs.segment_a_lengths[0] - 1] == electra.tokenizer.sep_token_id  # segment 0 ends at a's [SEP]


def test_features_cache_key_names_the_tokenizer(encoder_dirs):
    keys = {arch: cache_key(RTE, "dev", RTE_DIR, ModelSource(encoder_dirs[arch]).tokenizer(False), 64)
            for arch in ("roberta", "xlm-roberta", "electra", "distilbert")}
    assert len(set(keys.values())) == 4  # distilbert and electra share the vocabulary: the model type tells
    again = ModelSource(encoder_dirs["roberta"]).tokenizer(True)
    assert cache_key(RTE, "dev", RTE_DIR, again, 64) == keys["roberta"]


@pytest.mark.parametrize("arch_name", ARCHITECTURES)
def test_token_types_only_where_the_model_has_them(arch_name, encoder_dirs):
    """RoBERTa's one token type fails on segment-B ids; DeBERTa-v3, DistilBERT and ModernBERT have none."""
    source = ModelSource(encoder_dirs[arch_name])
    model = build_model(source.config(), RTE).eval()
    given = []
    model.base_model.register_forward_pre_hook(lambda module, args, kwargs: given.append(kwargs.get("token_type_ids")),
                                               with_kwargs=True)
    features = load_features(RTE, "dev", RTE_DIR, source.tokenizer(False), 64)
    batch = collate(features, np.arange(4))
    segment_b = batch["attention_mask"]  # type 1 everywhere: an index error for a model with one type
    with torch.no_grad():
        model(batch["input_ids"], batch["attention_mask"], segment_b)
    if arch_name in ("electra", "albert"):
        assert torch.equal(given[0], segment_b)
    else:
        assert given == [None]


def test_multiple_choice_scores_each_row(arch, encoder_dirs):
    """(examples, choices, tokens) inputs: one score per (context, choice) row, as BertForGlue gives."""
    source = ModelSource(encoder_dirs[arch])
    model = transformers_for_glue(source.config(), num_labels=1).eval()
    batch = collate(load_features(RTE, "dev", RTE_DIR, source.tokenizer(False), 64), np.arange(6))
    rows = [batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
    with torch.no_grad():
        scores = model(*(t.view(2, 3, -1) for t in rows))
        assert scores.shape == (2, 3)
        torch.testing.assert_close(scores.reshape(-1), model(*rows).reshape(-1))


def test_max_seq_length_fits_the_models_layout_and_positions(encoder_dirs, tmp_path, capsys):
    err = refused_by(capsys, main, train_args(encoder_dirs["roberta"], tmp_path / "out", "rte", "--do_val",
                                              "--max_seq_length", "5"))
    assert "--max_seq_length 5: rte inputs are <s> a </s> </s> b </s>, which needs at least 6 tokens" in err
    err = refused_by(capsys, main, train_args(encoder_dirs["roberta"], tmp_path / "out", "rte", "--do_val",
                                              "--max_seq_length", "129"))
    assert "has position embeddings for 128 tokens" in err  # 130 less RoBERTa's padding offset
    main(train_args(encoder_dirs["roberta"], tmp_path / "out", "rte", "--do_val", "--max_seq_length", "128"))
    capsys.readouterr()
    err = refused_by(capsys, main, train_args(encoder_dirs["modernbert"], tmp_path / "mb", "rte", "--do_val",
                                              "--max_seq_length", "257"))
    assert "has position embeddings for 256 tokens" in err


# ----------------------------------------------------------------------------- speed paths
MAX_LEN = 128


def without_dropout(folder):
    config = ModelSource(folder).config()
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def check_speed_paths(arch_dir, arch, tmp_path, paths):
    """Sorted evaluation by each of `paths` ({name: settings}) gives the logits of fixed padding to
    --max_seq_length, and one training step on the same batch steps with the same gradients."""
    source = ModelSource(arch_dir)
    torch.manual_seed(0)
    model = build_model(without_dropout(arch_dir), RTE)
    torch.nn.init.normal_(output_layer(model).weight, std=3.0)  # logits that differ between examples
    features = load_features(RTE, "dev", RTE_DIR, source.tokenizer(False), MAX_LEN)
    features = features.subset(np.argsort(features.lengths)[::2])  # every other length: half the work
    assert features.lengths.max() == MAX_LEN and features.lengths.min() < MAX_LEN // 2

    def trainer(pad, **speed):
        settings = TrainSettings(eval_batch_size=8, learning_rate=1e-3, seed=3, pad_to_max_length=pad, **speed)
        return Trainer(copy.deepcopy(model), RTE, settings, DistContext(), str(tmp_path), run_args={},
                       max_seq_length=MAX_LEN, verbose=False)

    fixed_logits, fixed_loss = trainer(True).predict(features)
    for path, speed in paths.items():
        fast = trainer(False, **speed)
        logits, loss = fast.predict(features)
        np.testing.assert_allclose(logits, fixed_logits, rtol=1e-4, atol=1e-5, err_msg=path)
        assert loss == pytest.approx(fixed_loss, rel=1e-5) and np.ptp(logits[:, 0]) > 1e-3
    expected = "eager" if arch == "deberta-v2" else "stilts_sdpa"  # DeBERTa: its own attention, as built
    assert fast.model.config._attn_implementation == expected

    batch = np.flatnonzero(features.lengths < 100)[:6]
    expected = one_step_gradients(trainer(True), features, batch)
    for path, speed in paths.items():
        assert_same_gradients(one_step_gradients(trainer(False, **speed), features, batch), expected, path)


def test_speed_paths_give_what_fixed_padding_gives(arch, encoder_dirs, tmp_path):
    """Per-batch padding, and length buckets (widths rounded up to a multiple of 16)."""
    check_speed_paths(encoder_dirs[arch], arch, tmp_path, {"per batch": {}, "buckets": {"pad_to_multiple_of": 16}})


@pytest.mark.slow  # see conftest.py
def test_compiled_model_gives_what_fixed_padding_gives(arch, encoder_dirs, tmp_path, monkeypatch):
    """--torch_compile: the model traces into one graph each for training and evaluation (fullgraph),
    run here by AOTAutograd's eager backend (inductor's own code: test_speed_paths.py, for BERT)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()  # each architecture is new code to trace, not a recompilation of the last one's
    check_speed_paths(encoder_dirs[arch], arch, tmp_path, {"compiled": {"torch_compile": True}})


# ----------------------------------------------------------------------------- adapters
def adapter_config(folder, path):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config.update(use_adapter=True, adapter_size=8, adapter_initializer_range=1e-4)
    with open(path, "w") as f:
        json.dump(config, f)
    return str(path)


@pytest.mark.parametrize("arch_name", WITH_ADAPTERS)
def test_adapters_where_the_layers_take_them(arch_name, encoder_dirs, tmp_path):
    from stilts.adapters import Adapter

    folder = encoder_dirs[arch_name]
    source = ModelSource(folder)
    plain = build_model(source.config(), RTE)
    load_weights(plain, "from_pretrained", pretrained_state=source.pretrained_encoder_state())
    with_adapters = build_model(ModelSource(folder, adapter_config(folder, tmp_path / "a.json")).config(), RTE)
    load_weights(with_adapters, "from_pretrained", pretrained_state=source.pretrained_encoder_state())
    head = {k: v for k, v in plain.state_dict().items() if not k.startswith(plain.base_model_prefix + ".")}
    with_adapters.load_state_dict(head, strict=False)
    assert sum(isinstance(m, Adapter) for m in with_adapters.modules()) == 2 * 2  # two per layer
    for name, param in with_adapters.named_parameters():
        tunable = ".adapter." in name or "LayerNorm" in name or not name.startswith(plain.base_model_prefix + ".")
        assert param.requires_grad == tunable, name
    batch = collate(load_features(RTE, "dev", RTE_DIR, source.tokenizer(False), 64), np.arange(8))
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        expected = plain.eval()(*inputs)
        torch.testing.assert_close(with_adapters.eval()(*inputs), expected, atol=1e-3, rtol=0)  # near identity
        hidden = plain.base_model(*inputs[:2]).last_hidden_state
        for adapter in (m for m in with_adapters.modules() if isinstance(m, Adapter)):
            torch.nn.init.normal_(adapter.down_project.weight, std=0.5)
            torch.nn.init.normal_(adapter.up_project.weight, std=0.5)
        assert (with_adapters.base_model(*inputs[:2]).last_hidden_state - hidden).abs().max() > 1e-2  # they run


def test_adapter_run_and_state_adapter_round_trip(encoder_dirs, tmp_path):
    folder = encoder_dirs["roberta"]
    config = adapter_config(folder, tmp_path / "adapter.json")
    main(train_args(folder, tmp_path / "a", "rte", "--do_train", "--do_val", "--do_save", "--bert_save_mode",
                    "model_tunable", "--bert_config_json_path", config))
    saved = state_of(tmp_path / "a" / "all_state.p")
    assert saved and all(".adapter." in k or "LayerNorm" in k or not k.startswith("roberta.") for k in saved)
    main(train_args(folder, tmp_path / "b", "rte", "--do_val", "--bert_config_json_path", config,
                    "--bert_load_mode", "state_adapter", "--bert_load_path", tmp_path / "a" / "all_state.p",
                    "--bert_base_path", folder))
    np.testing.assert_allclose(read_preds(tmp_path / "b"), read_preds(tmp_path / "a"), atol=1e-6)


@pytest.mark.parametrize("arch_name", sorted(set(ARCHITECTURES) - set(WITH_ADAPTERS)))
def test_adapters_refused_where_the_layers_differ(arch_name, encoder_dirs, tmp_path, capsys):
    config = adapter_config(encoder_dirs[arch_name], tmp_path / "adapter.json")
    err = refused_by(capsys, main, train_args(encoder_dirs[arch_name], tmp_path / "out", "rte", "--do_val",
                                              "--bert_config_json_path", config))
    assert f"use_adapter: adapters need BERT's output blocks in every layer, which {arch_name} lacks" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- refusals and warnings
def test_unsupported_architecture_is_named(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=2, n_head=2).save_pretrained(tmp_path / "gpt2")
    err = refused_by(capsys, main, train_args(tmp_path / "gpt2", tmp_path / "out", "rte", "--do_val"))
    assert "model_type 'gpt2' is not an encoder stilts fine-tunes (supported: bert, roberta," in err


def test_a_model_folder_without_its_tokenizer_is_refused(encoder_dirs, tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(encoder_dirs["roberta"], name), folder)
    err = refused_by(capsys, main, train_args(folder, tmp_path / "out", "rte", "--do_val"))
    assert f"{folder}: no tokenizer files (tokenizer.json, ...)" in err


def test_bert_vocab_path_is_berts(encoder_dirs, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n")
    err = refused_by(capsys, main, train_args(encoder_dirs["roberta"], tmp_path / "out", "rte", "--do_val",
                                              "--bert_vocab_path", vocab))
    assert "a vocab.txt is BERT's; a roberta model uses the tokenizer of --bert_model" in err


def test_fp16_with_deberta_warns_once(encoder_dirs, caplog):
    warn_if_fp16_overflows(ModelSource(encoder_dirs["deberta-v2"]).config(), fp16=True)
    warn_if_fp16_overflows(ModelSource(encoder_dirs["deberta-v2"]).config(), fp16=False)
    warn_if_fp16_overflows(ModelSource(encoder_dirs["roberta"]).config(), fp16=True)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "--bf16" in caplog.records[0].getMessage()


# ----------------------------------------------------------------------------- the benchmark
@pytest.mark.slow  # see conftest.py
@pytest.mark.parametrize("arch_name", ARCHITECTURES)
def test_benchmark_runs_for_every_architecture(arch_name, encoder_dirs, tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install -e .[bench])")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmark.py"), "--task", "rte",
                             "--model", encoder_dirs[arch_name], "--glue_dir", FIXTURES, "--max_train_examples", "16",
                             "--max_seq_length", "64", "--variants", "stilts", "hf_trainer_dynamic",
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for r in report["variants"].values():
        assert r["train_examples_per_s"] > 0 and 0 <= r["dev_metric"] <= 1
