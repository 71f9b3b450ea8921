"""Dropout whose random mask is cheap to draw on the CPU, for BERT's hidden states and attention.

On CPUs other than Intel's, torch draws a dropout mask with one generator call per element
(`bernoulli_`, ~6 ns each here): about a fifth of a bf16 MiniLM training step on 2 cores, more
than any layer's matrix multiplications. Drawing full-range 64-bit words and reading each as four
16-bit lanes costs ~0.8 ns per element; an element is kept when its lane falls below
round((1 - p) * 2**16), so the keep probability is 1 - p to within 2**-16. The words come from
torch's default CPU generator, so torch.manual_seed and a saved RNG state replay the same masks.

On CUDA, and whenever dropout is off, everything here defers to torch (fused Philox dropout,
scaled_dot_product_attention).
"""
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_IMPLEMENTATION = "stilts_sdpa"  # the name registered with transformers (see modeling.py)
_LANES = 2 ** 16
_INT64_MIN = torch.iinfo(torch.int64).min


def keep_mask(shape, p, dtype=torch.bool):
    """A CPU tensor of `shape`: 1 (True) with probability 1 - p, else 0, written straight in `dtype`."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(_INT64_MIN, None)  # all 64 bits random
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [-2**15, 2**15)
    return torch.lt(lanes, round((1.0 - p) * _LANES) - _LANES // 2, out=torch.empty(shape, dtype=dtype))


def dropout(x, p, training=True):
    """nn.functional.dropout, with the cheap mask when x is on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    if p == 1.0:
        return x * 0.0
    scale = keep_mask(x.shape, p, x.dtype).mul_(1.0 / (1.0 - p))  # the backward multiplies by it too
    return x * scale


class Dropout(nn.Dropout):
    """nn.Dropout with the cheap CPU mask (same `p`, no parameters: checkpoints are unaffected)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention function: SDPA, except CPU training with dropout.

    There SDPA runs its unfused math path anyway (its CPU kernels have no dropout), with a
    bernoulli mask and a NaN-safe softmax that costs three more passes. This is the same
    computation with the cheap mask. BERT never masks a whole row ([CLS] is always attended),
    so the plain softmax is safe.
    """
    if not (module.training and dropout > 0.0 and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return math_attention(query, key, value, attention_mask, dropout, scaling), None


def math_attention(query, key, value, attention_mask, p, scaling=None):
    """softmax(q k^T * scaling + mask) v, with dropout on the probabilities.

    query, key, value: (batch, heads, length, head dim); returns (batch, length, heads, head dim),
    the layout transformers' attention functions return.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's mask: True where a key may be attended
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = dropout(torch.softmax(scores, dim=-1), p)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()
