"""The cheap CPU dropout draws the same distribution as torch's, replays under a seed, and is what
a training forward on the CPU uses (torch's bernoulli dropout never runs there)."""
import collections

import pytest
import torch

from stilts import dropout
from stilts.modeling import ModelSource, build_model
from stilts.speedups import reuse_gradient_buffer
from stilts.tasks import get_task


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_keeps_one_minus_p_of_the_elements(p):
    torch.manual_seed(0)
    mask = dropout.keep_mask(torch.Size([1000, 1001]), p)  # an element count not divisible by 4
    assert mask.dtype == torch.bool and mask.shape == (1000, 1001)
    assert mask.float().mean().item() == pytest.approx(1 - p, abs=0.002)  # 1M draws: sd 0.0005
    # No lane of the 64-bit words is biased (the high lane of a non-negative draw would be).
    lanes = mask.flatten()[:1000 * 1000].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), 1 - p), atol=0.004)


def test_masks_replay_under_a_seed_and_differ_between_calls():
    torch.manual_seed(5)
    first, second = dropout.keep_mask(torch.Size([4096]), 0.1), dropout.keep_mask(torch.Size([4096]), 0.1)
    torch.manual_seed(5)
    assert torch.equal(dropout.keep_mask(torch.Size([4096]), 0.1), first)
    assert not torch.equal(first, second)


def test_dropout_zeroes_or_scales_each_element_and_its_gradient():
    x = torch.rand(64, 300) + 0.5  # no zeros: a zero output means dropped
    x.requires_grad_(True)
    y = dropout.dropout(x, 0.2)
    kept = y != 0
    assert 0.75 < kept.float().mean().item() < 0.85
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.8)
    assert torch.equal(dropout.dropout(x, 0.2, training=False), x)
    assert torch.equal(dropout.dropout(x, 0.0), x)


def test_math_attention_without_dropout_equals_sdpa_with_padding():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))  # (batch, heads, length, head dim)
    lengths = torch.tensor([7, 4, 2])
    mask = (torch.arange(7)[None, :] < lengths[:, None])[:, None, None, :].expand(3, 1, 7, 7)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(dropout.math_attention(q, k, v, mask, p=0.0), expected)


def test_cpu_training_forward_uses_the_cheap_dropout(tiny_bert_dir, monkeypatch):
    torch_dropouts, sdpa_dropouts = [], []
    real_dropout, real_sdpa = torch.nn.functional.dropout, torch.nn.functional.scaled_dot_product_attention

    def spy_dropout(x, p=0.5, training=True, inplace=False):
        if training and p > 0:
            torch_dropouts.append(p)
        return real_dropout(x, p, training, inplace)

    def spy_sdpa(*args, dropout_p=0.0, **kwargs):
        sdpa_dropouts.append(dropout_p)
        return real_sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "dropout", spy_dropout)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    model = build_model(ModelSource(tiny_bert_dir).config(), get_task("rte"))
    ids = torch.randint(1000, 2000, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    model.train()
    torch.manual_seed(1)
    first = model(ids, mask, torch.zeros_like(ids))
    torch.manual_seed(1)
    assert torch.equal(model(ids, mask, torch.zeros_like(ids)), first)  # same seed, same masks
    assert not torch.equal(model(ids, mask, torch.zeros_like(ids)), first)  # dropout is on
    assert torch_dropouts == [] and sdpa_dropouts == []
    model.eval()
    model(ids, mask, torch.zeros_like(ids))
    assert sdpa_dropouts == [0.0] * model.bert.config.num_hidden_layers  # evaluation: SDPA's fused kernels


def test_math_attention_gradients_match_masking_and_dropout_done_plainly():
    """The in-place mask outside autograd and the 1/(1-p) moved onto the values change nothing."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, requires_grad=True) for _ in range(3))
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 4, 2])[:, None])[:, None, None, :].expand(3, 1, 7, 7)
    upstream = torch.randn(3, 7, 2, 8)

    torch.manual_seed(1)
    out = dropout.math_attention(q, k, v, mask, p=0.3)
    grads = torch.autograd.grad(out, (q, k, v), upstream)

    torch.manual_seed(1)
    keep = dropout.keep_mask(torch.Size([3, 2, 7, 7]), 0.3, torch.float32)  # the same draw
    scores = (q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(~mask, torch.finfo(torch.float32).min)
    expected = (torch.softmax(scores, -1) * keep / 0.7 @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, (q, k, v), upstream)):
        torch.testing.assert_close(got, want)


def test_speed_paths_are_called_and_one_switch_turns_them_off(tiny_bert_dir, monkeypatch):
    """Fails loudly if transformers stops calling stilts' dropout or attention (after an upgrade, say)."""
    calls = collections.Counter()

    def counting(name, real):
        def spy(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return spy

    monkeypatch.setattr(dropout.Dropout, "forward", counting("stilts dropout", dropout.Dropout.forward))
    monkeypatch.setattr(dropout, "math_attention", counting("stilts attention", dropout.math_attention))
    monkeypatch.setattr(torch.nn.functional, "dropout", counting("torch dropout", torch.nn.functional.dropout))
    config = ModelSource(tiny_bert_dir).config()
    ids = torch.randint(1000, 2000, (2, 7))
    layers = config.num_hidden_layers

    model = build_model(config, get_task("rte")).train()
    model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    # Embeddings, each layer's attention output and feed-forward output, the head: all stilts' masks.
    assert calls == {"stilts dropout": 2 * layers + 2, "stilts attention": layers}

    calls.clear()
    monkeypatch.setenv("STILTS_SPEEDUPS", "0")
    plain = build_model(config, get_task("rte")).train()
    plain(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert calls == {"torch dropout": 2 * layers + 2}  # attention dropout is inside torch's SDPA
    assert plain.bert.config._attn_implementation == "stilts_sdpa_plain"  # SDPA, on GPUs without cuDNN
    embedding = plain.bert.embeddings.word_embeddings
    reuse_gradient_buffer(embedding)
    assert not embedding.sparse, "the kept gradient buffer is off too"


def test_compiled_training_forward_is_one_graph(tiny_bert_dir):
    """Under torch.compile the cheap mask gives way to torch's dropout: its host-side draw would split
    the compiled graph at every dropout (and CUDA graphs need one graph)."""
    torch.manual_seed(0)
    model = build_model(ModelSource(tiny_bert_dir).config(), get_task("rte")).train()
    assert model.bert.config.hidden_dropout_prob > 0 and model.bert.config.attention_probs_dropout_prob > 0
    ids = torch.randint(1000, 2000, (4, 24))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0  # padding: the masked attention path
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids, mask, torch.zeros_like(ids))
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons[:1]
