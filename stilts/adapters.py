"""Bottleneck adapters (Houlsby et al. 2019) inside a transformers encoder, as the seed has them in BERT.

An adapter is down-projection -> GELU -> up-projection plus a residual connection, applied after
the dropout of every layer's attention output (`BertSelfOutput`) and feed-forward output
(`BertOutput`), before their residual LayerNorm. Rather than copying transformers' BERT code, each
adapter is registered as the `adapter` child of those modules (so parameter names match the
seed's checkpoints: `...attention.output.adapter.down_project.weight`) and runs as a forward hook
on their `dropout`. Initialised near identity (weights ~ N(0, adapter_initializer_range), zero
biases), so an adapter model starts out computing what the plain model computes.

RoBERTa, XLM-R, ELECTRA and DeBERTa-v2 have the same two output blocks (dense -> dropout ->
LayerNorm of it plus the residual), so they take the same adapters (ADAPTER_SITES). DistilBERT,
ALBERT and ModernBERT lay their layers out otherwise: stilts refuses adapters there.
"""
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Output, DebertaV2SelfOutput
from transformers.models.electra.modeling_electra import ElectraOutput, ElectraSelfOutput
from transformers.models.roberta.modeling_roberta import RobertaOutput, RobertaSelfOutput
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaOutput, XLMRobertaSelfOutput

# By config.model_type: the modules an adapter follows (attention output, feed-forward output).
ADAPTER_SITES = {
    "bert": (BertSelfOutput, BertOutput),
    "roberta": (RobertaSelfOutput, RobertaOutput),
    "xlm-roberta": (XLMRobertaSelfOutput, XLMRobertaOutput),
    "electra": (ElectraSelfOutput, ElectraOutput),
    "deberta-v2": (DebertaV2SelfOutput, DebertaV2Output),
}


class Adapter(nn.Module):
    def __init__(self, hidden_size, adapter_size, initializer_range, act="gelu"):
        super().__init__()
        self.down_project = nn.Linear(hidden_size, adapter_size)
        self.activation = ACT2FN[act]
        self.up_project = nn.Linear(adapter_size, hidden_size)
        for linear in (self.down_project, self.up_project):
            nn.init.normal_(linear.weight, mean=0.0, std=initializer_range)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden_states):
        return hidden_states + self.up_project(self.activation(self.down_project(hidden_states)))


def _run_adapter(dropout_module, inputs, output):
    return dropout_module.adapter_owner.adapter(output)


def add_adapters(encoder, config):
    """Insert an adapter after the dropout of every attention and feed-forward output block of `encoder`."""
    for module in list(encoder.modules()):  # a list: the loop adds modules
        if isinstance(module, ADAPTER_SITES[config.model_type]):
            module.adapter = Adapter(config.hidden_size, config.adapter_size,
                                     config.adapter_initializer_range, getattr(config, "adapter_act", "gelu"))
            # A plain attribute (not a submodule) so the parameter names stay the seed's.
            object.__setattr__(module.dropout, "adapter_owner", module)
            module.dropout.register_forward_hook(_run_adapter)


def is_tunable_with_adapters(name, encoder_prefix):
    """With adapters on, only adapters, LayerNorms and the task head (what is outside `encoder_prefix`,
    e.g. `bert.`) train: the seed's rule."""
    return ".adapter." in name or "LayerNorm" in name or not name.startswith(encoder_prefix)


def freeze_for_adapters(model):
    for name, param in model.named_parameters():
        param.requires_grad = is_tunable_with_adapters(name, model.base_model_prefix + ".")
