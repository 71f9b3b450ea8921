"""The speed paths change nothing that is learned or predicted.

Per-batch padding, length-grouped batches and length-sorted evaluation must give what the seed's
fixed padding to max_seq_length gives, up to float noise; the features cache must be reused, and
rebuilt whenever anything that changes the token ids changes. No timings here: speed is measured
by scripts/benchmark.py.
"""
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO, VOCAB, assert_same_gradients, make_tiny_bert, one_step_gradients
from stilts import features as features_module
from stilts.distributed import DistContext
from stilts.features import collate, load_features, load_tokenizer
from stilts.modeling import ModelSource, build_model
from stilts.tasks import get_task
from stilts.settings import TrainSettings
from stilts.trainer import Trainer, epoch_batches

RTE = get_task("rte")
RTE_DIR = os.path.join(FIXTURES, "RTE")
MAX_LEN = 128


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB, do_lower_case=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random BERT without dropout, so that train-mode forwards are deterministic."""
    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny-no-dropout"), hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = build_model(ModelSource(folder).config(), RTE)
    torch.nn.init.normal_(model.head.weight, std=3.0)  # logits that differ between examples
    return model


@pytest.fixture(scope="module")
def dev_features(tokenizer):
    features = load_features(RTE, "dev", RTE_DIR, tokenizer, MAX_LEN)
    assert features.lengths.max() == MAX_LEN and features.lengths.min() < MAX_LEN // 2  # truncated and short rows
    return features


def make_trainer(model, tmp_path, **overrides):
    settings = dict(eval_batch_size=8, learning_rate=1e-3, seed=3)
    settings.update(overrides)
    return Trainer(copy.deepcopy(model), RTE, TrainSettings(**settings), DistContext(), str(tmp_path), run_args={},
                   max_seq_length=MAX_LEN, verbose=False)


def spy_on_widths(monkeypatch):
    """Record the padded width of every batch the trainer builds."""
    widths = []
    real_batch = features_module.DeviceFeatures.batch

    def batch(self, indices, on_device):
        tensors = real_batch(self, indices, on_device)
        widths.append(tensors["input_ids"].shape[1])
        return tensors

    monkeypatch.setattr(features_module.DeviceFeatures, "batch", batch)
    return widths


def score_alone(model, features):
    """Logits of each example scored on its own: a batch of one, so no padding at all."""
    model = copy.deepcopy(model).eval()
    rows = []
    with torch.inference_mode():
        for i in range(len(features)):
            batch = collate(features, [i])
            rows.append(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    return torch.cat(rows).numpy()


# ----------------------------------------------------------------------------------------- evaluation
def test_sorted_dynamic_evaluation_predicts_as_fixed_padding(model, dev_features, tmp_path, monkeypatch):
    widths = spy_on_widths(monkeypatch)
    fixed_logits, fixed_loss = make_trainer(model, tmp_path, pad_to_max_length=True).predict(dev_features)
    assert set(widths) == {MAX_LEN}
    widths.clear()
    logits, loss = make_trainer(model, tmp_path).predict(dev_features)
    assert min(widths) < MAX_LEN // 2  # the test exercises narrow batches, not only full ones
    assert widths == sorted(widths, reverse=True)  # batches were formed from length-sorted examples
    np.testing.assert_allclose(logits, fixed_logits, rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(fixed_loss, rel=1e-5)

    # Restored to file order: row i is example i scored on its own, without any padding.
    np.testing.assert_allclose(logits, score_alone(model, dev_features), rtol=1e-4, atol=1e-5)
    assert np.ptp(logits[:, 0]) > 1e-3  # rows differ by far more than the tolerance


def test_sdpa_attention_runs_with_padding_masks(model, dev_features, tmp_path, monkeypatch):
    """Dynamic padding must not silently push transformers onto its eager attention path."""
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    trainer = make_trainer(model, tmp_path)
    assert trainer.model.bert.config._attn_implementation == "stilts_sdpa"  # SDPA, cheap CPU dropout
    trainer.predict(dev_features)
    n_batches = -(-len(dev_features) // 8)
    assert len(calls) == n_batches * trainer.model.bert.config.num_hidden_layers
    assert any(mask is not None for mask in calls)  # padded batches pass their mask to SDPA


# ----------------------------------------------------------------------------------------- training
def test_one_step_on_the_same_batch_gives_the_same_gradients(model, dev_features, tmp_path, monkeypatch):
    widths = spy_on_widths(monkeypatch)
    batch = np.flatnonzero(dev_features.lengths < 100)[:6]
    lengths = dev_features.lengths[batch]
    assert lengths.max() < MAX_LEN and len(set(lengths)) > 1  # padding differs between the two runs
    fixed, dynamic = (one_step_gradients(make_trainer(model, tmp_path, pad_to_max_length=pad), dev_features, batch)
                      for pad in (True, False))
    assert_same_gradients(dynamic, fixed)
    assert widths == [MAX_LEN, lengths.max()]


def test_length_buckets_bound_the_shapes_and_change_nothing(model, dev_features, tmp_path, monkeypatch):
    """--pad_to_multiple_of 32: every batch is 32, 64, 96 or 128 wide, and two epochs of training then
    scoring give what exact per-batch padding gives (the model has no dropout)."""
    widths = spy_on_widths(monkeypatch)
    train = dev_features.subset(np.arange(24))
    results = {}
    for multiple in (1, 32):
        widths.clear()
        trainer = make_trainer(model, tmp_path, train_batch_size=4, num_train_epochs=2, pad_to_multiple_of=multiple)
        trainer.train(train)
        results[multiple] = trainer.predict(dev_features)[0], dict(trainer.model.named_parameters())
        if multiple == 32:
            assert set(widths) <= {32, 64, 96, 128} and len(set(widths)) > 1
        else:
            assert len(set(widths)) > 4 and set(widths) - {32, 64, 96, 128}  # exact widths: many shapes
    np.testing.assert_allclose(results[32][0], results[1][0], rtol=1e-4, atol=1e-5)
    for name, weight in results[1][1].items():
        torch.testing.assert_close(results[32][1][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert TrainSettings(torch_compile=True).width_multiple == 32 and TrainSettings().width_multiple == 1


@pytest.mark.slow  # see conftest.py: compiling takes about a minute on 2 cores
def test_compiled_training_gives_eager_results_with_two_graphs(model, dev_features, tmp_path, monkeypatch):
    """--torch_compile through inductor, as a user runs it on a CPU: two epochs and scoring give eager's
    weights and logits; one graph for training and one for evaluation, whatever the batch widths, and
    (length buckets by default) at most four widths. Then the GPU's CUDA-graph path as far as a CPU
    takes it ("reduce-overhead", a new step marked before each forward, the scores copied out of the
    graphs' memory, every shape warmed up first; inductor records no graphs on a CPU): the same again."""
    widths = spy_on_widths(monkeypatch)
    train = dev_features.subset(np.arange(24))
    results = {}
    for path in ("eager", "compiled", "graph path"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        widths.clear()
        monkeypatch.setattr("stilts.trainer.uses_cuda_graphs", lambda settings, ctx: path == "graph path")
        trainer = make_trainer(model, tmp_path, train_batch_size=4, num_train_epochs=2,
                               torch_compile=path != "eager")
        if path == "graph path":
            trainer.warm_up(train, dev_features)
        trainer.train(train)
        results[path] = trainer.predict(dev_features)[0], dict(trainer.model.named_parameters())
        if path != "eager":
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2, path
            assert set(widths) <= {32, 64, 96, 128} and len(set(widths)) > 1
    for path in ("compiled", "graph path"):
        np.testing.assert_allclose(results[path][0], results["eager"][0], rtol=1e-4, atol=1e-5, err_msg=path)
        for name, weight in results["eager"][1].items():
            torch.testing.assert_close(results[path][1][name], weight, rtol=1e-4, atol=1e-5, msg=f"{path}: {name}")


def test_the_host_waits_for_the_device_only_at_its_checks(model, dev_features, tmp_path, monkeypatch):
    """No .item() in the training loop: the loss and the non-finite check reach the host in one
    transfer every --logging_steps steps and at each epoch's end."""
    transfers = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, _real=real, _name=name: (transfers.append(_name),
                                                                                      _real(self))[1])
    train = dev_features.subset(np.arange(40))  # 5 steps of 8 an epoch, 10 in all
    trainer = make_trainer(model, tmp_path, train_batch_size=8, num_train_epochs=2, logging_steps=4)
    trainer.train(train)
    assert transfers == ["tolist"] * 4  # after steps 4, 5 (epoch end), 8 and 10


def test_epoch_batches_are_a_seeded_permutation_of_similar_lengths():
    lengths = np.random.default_rng(0).integers(5, 129, size=5000)
    batches = epoch_batches(lengths, 32, seed=7, epoch=0, group_by_length=True)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(len(lengths)))  # every example exactly once
    assert sum(len(b) != 32 for b in batches) == 1  # one short batch: 5000 = 156 * 32 + 8

    same = epoch_batches(lengths, 32, seed=7, epoch=0, group_by_length=True)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same))  # a pure function of (seed, epoch)
    next_epoch = np.concatenate(epoch_batches(lengths, 32, seed=7, epoch=1, group_by_length=True))
    other_seed = np.concatenate(epoch_batches(lengths, 32, seed=8, epoch=0, group_by_length=True))
    assert not np.array_equal(order, next_epoch) and not np.array_equal(order, other_seed)

    def padded_over_real(batches):
        return sum(len(b) * lengths[b].max() for b in batches) / lengths.sum()

    random_batches = epoch_batches(lengths, 32, seed=7, epoch=0, group_by_length=False)
    assert padded_over_real(batches) < 1.05 < 1.5 < padded_over_real(random_batches)
    widths = [lengths[b].max() for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # batch order stays random


# ----------------------------------------------------------------------------------------- features cache
def count_featurize_calls(monkeypatch):
    calls = []
    real = features_module.featurize

    def featurize(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "featurize", featurize)
    return calls


def assert_same_features(a, b):
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids))
    np.testing.assert_array_equal(a.segment_a_lengths, b.segment_a_lengths)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_features_cache_is_reused_and_rebuilt_when_its_key_changes(tokenizer, tmp_path, monkeypatch):
    calls = count_featurize_calls(monkeypatch)
    cache = str(tmp_path / "cache")
    data = tmp_path / "RTE"
    shutil.copytree(RTE_DIR, data)

    def load(tok=tokenizer, max_len=MAX_LEN):
        return load_features(RTE, "train", str(data), tok, max_len, cache_dir=cache)

    first = load()
    assert len(calls) == 1 and len(os.listdir(os.path.join(cache, "features"))) == 1
    assert_same_features(load(), first)
    assert len(calls) == 1  # second call: read from the cache, not re-tokenized

    cased = load_tokenizer(VOCAB, do_lower_case=False)
    cased_features = load(tok=cased)
    assert len(calls) == 2  # another casing: re-tokenized, not the uncased entry
    assert not all(np.array_equal(x, y) for x, y in zip(cased_features.input_ids, first.input_ids))
    assert_same_features(cased_features, load_features(RTE, "train", str(data), cased, MAX_LEN))
    assert len(calls) == 3  # (the uncached reference above)

    short = load(max_len=64)
    assert len(calls) == 4 and short.lengths.max() == 64

    vocab = tmp_path / "vocab.txt"
    words = open(VOCAB, encoding="utf-8").read().splitlines()
    words[words.index("cat")] = "kat"  # one changed entry: another vocabulary
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    load(tok=load_tokenizer(str(vocab), do_lower_case=True))
    assert len(calls) == 5

    train = data / "train.tsv"
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:-1]), encoding="utf-8")  # same name, one row fewer
    assert len(load()) == len(first) - 1
    assert len(calls) == 6
    assert len(os.listdir(os.path.join(cache, "features"))) == 5  # one entry per distinct key

    load()
    assert len(calls) == 6  # and the newest entry is reused in turn


# ----------------------------------------------------------------------------------------- the scripts
@pytest.mark.slow  # see conftest.py
def test_benchmark_runs_and_reports_every_variant(tiny_bert_dir, tmp_path):
    """Two variants, ours and a Trainer one, are the fewest that give a ratio: each is a process."""
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install -e .[bench])")
    variants = ["stilts", "hf_trainer_grouped"]
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmark.py"), "--task", "rte",
                             "--model", tiny_bert_dir, "--glue_dir", FIXTURES, "--max_train_examples", "24",
                             "--variants", *variants, "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["task"] == "rte" and report["train_examples"] == 24 and list(report["variants"]) == variants
    for r in report["variants"].values():
        assert r["train_examples_per_s"] > 0 and r["eval_examples_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["wall_s"] > 0 and 0 <= r["dev_metric"] <= 1
    assert report["ratios"]["stilts"]["train"]["hf_trainer_grouped"] > 0
    assert report["ratios"]["hf_trainer_grouped"]["eval"]["hf_trainer_grouped"] == pytest.approx(1.0)
    assert "| stilts | fp32 |" in result.stdout and "train vs (e)" in result.stdout
    peaks = report["matmul_peak_flops_per_s"]
    assert peaks["fp32"] > 0 and peaks["bf16"] is None, "no variant ran in bf16: its slow peak is not measured"
    assert "bf16" not in result.stdout.splitlines()[0]


@pytest.mark.slow  # see conftest.py
def test_gpu_throughput_smoke_on_cpu(tiny_bert_dir, tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_throughput.py"), "--device", "cpu",
                             "--models", os.path.join(tiny_bert_dir, "config.json"), "--precisions", "fp32", "bf16",
                             "--steps", "2", "--warmup", "0", "--batch_size", "4", "--seq_len", "16",
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (by_precision,) = json.loads(out.read_text())["results"].values()
    assert set(by_precision) == {"fp32", "bf16"}
    assert all(r["train_examples_per_s"] > 0 for r in by_precision.values())


@pytest.mark.slow  # see conftest.py: about 3 minutes on 2 cores
def test_gpu_speed_smoke_runs_every_part_on_cpu(tmp_path):
    """The prepared GPU run (scripts/gpu_speed.py) with a tiny BERT on the CPU: every part ends, the
    speed paths agree with fixed padding, and the benchmark tables hold every variant."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_speed.py"), "--smoke", "--out",
                             str(out), "--budget_s", "3600"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = json.loads((out / "gpu_speed.json").read_text())
    assert list(parts) == ["environment", "equivalence", "benchmark_bf16", "large", "benchmark_fp32"]
    assert not [name for name, part in parts.items() if "error" in part or "skipped" in part]
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 2e-2)):
        differences = parts["equivalence"]["relative_difference"][precision]
        assert set(differences) == {"per batch", "buckets of 32", "compiled"}
        assert all(d["logits_rel"] < tolerance and d["update_rel"] < tolerance for d in differences.values()), \
            differences
    for precision in ("bf16", "fp32"):
        report = parts[f"benchmark_{precision}"][f"tiny/rte/{precision}"]
        assert set(report["variants"]) == set(benchmark_variants()) and "compiled_error" not in report
        assert {r["precision"] for r in report["variants"].values()} == {precision}  # the Trainer's too
        assert report["variants"]["stilts_compiled"]["compile_s"] > 0
        assert report["ratios"]["stilts_compiled"]["train"]["hf_trainer_grouped"] > 0
    for path in ("eager", "compiled"):
        large = parts["large"][path]
        assert large["train_examples_per_s"] > 0 and large["share_of_bf16_peak"] > 0
        assert sum(large["profile"]["kernel_share"].values()) == pytest.approx(1.0)
        assert (out / f"large_profile_{path}.txt").stat().st_size > 0
    assert "BERT-large" in (out / "gpu_speed.md").read_text()


def benchmark_variants():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    return benchmark.VARIANTS


def test_kept_embedding_gradient_buffer_gives_torchs_gradient():
    """reuse_gradient_buffer: the same dense gradient as a plain nn.Embedding, in one buffer that
    every step reuses, and gradient accumulation over two backward passes still sums."""
    from stilts.speedups import reuse_gradient_buffer

    torch.manual_seed(0)
    plain = torch.nn.Embedding(50, 6)
    kept = copy.deepcopy(plain)
    reuse_gradient_buffer(kept)
    buffers = set()
    for step in range(3):
        ids = torch.randint(0, 50, (4, 9))  # repeated ids: their rows must sum
        upstream = torch.randn(4, 9, 6)
        for embedding in (plain, kept):
            embedding.weight.grad = None
            embedding(ids).backward(upstream)
            if step == 2:  # a second micro batch adds to the first
                embedding(ids[:, :3]).backward(upstream[:, :3])
        assert not kept.weight.grad.is_sparse
        torch.testing.assert_close(kept.weight.grad, plain.weight.grad)
        buffers.add(kept.weight.grad.data_ptr())
    assert len(buffers) == 1
