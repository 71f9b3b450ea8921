"""Dropout whose random mask is cheap to draw on the CPU, for BERT's hidden states and attention.

On CPUs other than Intel's, torch draws a dropout mask with one generator call per element
(`bernoulli_`, ~6 ns each here): about a fifth of a bf16 MiniLM training step on 2 cores, more
than any layer's matrix multiplications. Drawing 64-bit words from numpy's SFC64 generator and
reading each as four 16-bit lanes costs ~0.6 ns per element; an element is kept when its lane
falls below round((1 - p) * 2**16), so the keep probability is 1 - p to within 2**-16. Each mask's
SFC64 is seeded with one draw from torch's default CPU generator, so torch.manual_seed and a saved
torch RNG state replay the same masks: there is no second RNG state to save.

On CUDA, under torch.compile (the cheap mask's host-side draw would split the compiled graph at
every dropout), and whenever dropout is off, everything here defers to torch (fused Philox dropout,
scaled_dot_product_attention).
"""
import contextlib

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_LANES = 2 ** 16
# cuDNN's attention builds an execution plan for every new sequence length (over 100 ms each on an
# H200), and per-batch padding gives nearly every batch a new length: it made a bf16 MiniLM epoch
# on RTE 7x slower than fixed padding. Flash and memory-efficient attention have no such cost.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def keep_mask(shape, p, dtype=torch.bool):
    """A CPU tensor of `shape`: 1 (True) with probability 1 - p, else 0, written straight in `dtype`."""
    n = shape.numel()
    seed = torch.randint(2 ** 62, ()).item()  # from torch's generator: its seed and state decide the mask
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # all 64 bits random
    lanes = torch.from_numpy(words.view(np.int16)[:n]).view(shape)  # uniform over [-2**15, 2**15)
    return torch.lt(lanes, round((1.0 - p) * _LANES) - _LANES // 2, out=torch.empty(shape, dtype=dtype))


def dropout(x, p, training=True):
    """nn.functional.dropout, with the cheap mask when x is on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return nn.functional.dropout(x, p, training)  # compiled: torch's, which the compiler fuses
    if p == 1.0:
        return x * 0.0
    scale = keep_mask(x.shape, p, x.dtype).mul_(1.0 / (1.0 - p))  # the backward multiplies by it too
    return x * scale


class Dropout(nn.Dropout):
    """nn.Dropout with the cheap CPU mask (same `p`, no parameters: checkpoints are unaffected)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention function: SDPA (without cuDNN's kernels on GPUs), except CPU
    training with dropout.

    In CPU training with dropout, SDPA runs its unfused math path anyway (its CPU kernels have no
    dropout), with a bernoulli mask and a NaN-safe softmax that costs three more passes. This is
    the same computation with the cheap mask. BERT never masks a whole row ([CLS] is always attended),
    so the plain softmax is safe.
    """
    if module.training and 0.0 < dropout < 1.0 and query.device.type == "cpu" and not torch.compiler.is_compiling():
        return math_attention(query, key, value, attention_mask, dropout, scaling), None
    return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention function, without cuDNN's kernels on GPUs."""
    backends = sdpa_kernel(_CUDA_BACKENDS) if query.device.type == "cuda" else contextlib.nullcontext()
    with backends:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)


def math_attention(query, key, value, attention_mask, p, scaling=None):
    """softmax(q k^T * scaling + mask) v, with dropout on the probabilities.

    query, key, value: (batch, heads, length, head dim); returns (batch, length, heads, head dim),
    the layout transformers' attention functions return.

    The (length x length) tensors cost most here, so each gets as few passes as it can: the mask
    is applied in place and outside autograd, and dropout's 1 / (1 - p) scales the values instead
    of the probabilities. Both leave the gradients as they are: the mask's gradient would zero
    positions where the softmax gradient is already exactly zero, since their probability is 0.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        with torch.no_grad():
            if attention_mask.dtype == torch.bool:  # SDPA's mask: True where a key may be attended
                scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores.add_(attention_mask)
    probs = torch.softmax(scores, dim=-1)
    if p > 0.0:
        probs = probs * keep_mask(probs.shape, p, probs.dtype)
        value = value * (1.0 / (1.0 - p))
    return torch.matmul(probs, value).transpose(1, 2).contiguous()
