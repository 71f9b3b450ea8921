"""stilts' CPU speed paths, behind one boundary and one switch.

Three hooks make CPU training of a BERT cheaper without changing what it computes (up to float
noise and which random dropout masks are drawn; tests/test_speed_paths.py, test_dropout.py and,
for the other encoders, test_encoders.py hold them to that):
- the hidden-state dropouts of transformers' BertModel are replaced by stilts.dropout.Dropout,
  whose CPU mask costs a tenth of torch's;
- attention runs through transformers' attention interface as "stilts_sdpa": SDPA, except CPU
  training with dropout, which takes the same cheap mask (stilts.dropout.attention);
- the word embeddings keep one gradient buffer for the whole run (CPU, one process).
`STILTS_SPEEDUPS=0` in the environment turns all three off: the model is transformers' own BERT
with torch's dropout and SDPA (on GPUs still without cuDNN's attention, which is no CPU speed path
but a measured GPU slow-down, see stilts.dropout), and autograd allocates the embedding gradient
afresh each step. tests/test_dropout.py fails when a transformers upgrade stops calling the first two.

The other encoders that run attention through transformers' attention interface (RoBERTa, XLM-R,
ELECTRA, DistilBERT, ALBERT, ModernBERT) get the same first two hooks; DeBERTa-v2 has its own
attention (eager only) and stays as transformers builds it. The third fits any word embedding.
"""
import os

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from stilts import dropout

ATTENTION = "stilts_sdpa"          # SDPA, with the cheap mask in CPU training
PLAIN_ATTENTION = "stilts_sdpa_plain"  # SDPA alone (STILTS_SPEEDUPS=0)


def padding_mask(*args, **kwargs):
    """SDPA's mask, always built. transformers would first ask whether the batch has any padding
    (`mask.all()` read on the host), which makes the host wait for the device at every forward."""
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


for name, function in ((ATTENTION, dropout.attention), (PLAIN_ATTENTION, dropout.sdpa)):
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, padding_mask)


def enabled():
    return os.environ.get("STILTS_SPEEDUPS", "1") != "0"


def install(model):
    """Cheap dropout masks for a transformers model's hidden states and attention, where it runs its
    attention through transformers' attention interface."""
    if not model._supports_attention_backend:  # DeBERTa-v2: its own attention code
        return
    if not enabled():  # stated, not left to the config: a model built before may have set it to ours
        model.set_attn_implementation(PLAIN_ATTENTION)
        return
    model.set_attn_implementation(ATTENTION)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                setattr(module, name, dropout.Dropout(child.p))


def head_dropout(p):
    """The dropout before the task head, cheap where the others are."""
    return dropout.Dropout(p) if enabled() else nn.Dropout(p)


def reuse_gradient_buffer(embedding):
    """Give an embedding matrix one gradient buffer for the whole run (CPU, one process).

    Its dense gradient (30522 x hidden floats for BERT's word pieces) is otherwise allocated afresh
    each step, and the C allocator maps it from the OS, which zero-fills it page by page: 10-45 ms
    of a ~600 ms bf16 MiniLM step on 2 cores. Here the lookup makes its sparse gradient (one row
    per word piece in the batch), and a hook adds it into the kept buffer, so the clipping and the
    optimizer see the same dense gradient as before. A second micro batch (gradient accumulation)
    finds the dense gradient already there and autograd adds into it directly.
    """
    if not enabled() or not embedding.weight.requires_grad or embedding.sparse:  # off, frozen (adapters), done
        return
    buffer = None  # made at the first backward: evaluation-only runs never need it

    def densify(weight):
        nonlocal buffer
        if not weight.grad.is_sparse:
            return
        if buffer is None:
            buffer = torch.zeros_like(weight)
        else:
            buffer.zero_()
        buffer.index_add_(0, weight.grad._indices()[0], weight.grad._values())
        weight.grad = buffer

    embedding.sparse = True
    embedding.weight.register_post_accumulate_grad_hook(densify)
