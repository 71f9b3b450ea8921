"""The model: a transformers `BertModel` with the seed's task heads, and where its config,
vocabulary and pretrained weights come from.

Parameter names match the seed's checkpoints: `bert.…` for the encoder, `classifier.…` for the
classification head and `regressor.…` for the STS-B head (the seed's BertForSequenceRegression).
"""
import os

import torch
from torch import nn
from transformers import BertConfig, BertModel

from stilts import adapters, resources, speedups
from stilts.errors import StiltsError
from stilts.io import check_state_dict, load_checkpoint

# The seed's short names for Google's BERT releases, and the folder each unpacks to.
GOOGLE_FOLDERS = {
    "bert-base-uncased": "uncased_L-12_H-768_A-12",
    "bert-large-uncased": "uncased_L-24_H-1024_A-16",
    "bert-base-cased": "cased_L-12_H-768_A-12",
    "bert-large-cased": "cased_L-24_H-1024_A-16",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

class BertForGlue(nn.Module):
    """BERT encoder + dropout + linear head on the pooled [CLS] output (the seed's heads)."""

    def __init__(self, config, num_labels, regression=False):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=True)
        speedups.install(self.bert)
        if getattr(config, "use_adapter", False):
            adapters.add_adapters(self.bert, config)
        self.dropout = speedups.head_dropout(config.hidden_dropout_prob)
        head = nn.Linear(config.hidden_size, num_labels)
        head.weight.data.normal_(mean=0.0, std=config.initializer_range)
        head.bias.data.zero_()
        self.head_name = "regressor" if regression else "classifier"
        self.add_module(self.head_name, head)
        self.regression = regression
        if getattr(config, "use_adapter", False):
            adapters.freeze_for_adapters(self)

    @property
    def head(self):
        return getattr(self, self.head_name)

    def forward(self, input_ids, attention_mask, token_type_ids):
        """Logits (batch, labels); multiple choice, inputs (batch, choices, tokens): one score per
        (context, choice) row, the logits (batch, choices)."""
        shape = input_ids.shape
        if len(shape) == 3:
            input_ids, attention_mask, token_type_ids = (t.reshape(-1, shape[-1])
                                                         for t in (input_ids, attention_mask, token_type_ids))
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).pooler_output
        logits = self.head(self.dropout(pooled))
        return logits.view(shape[0], shape[1]) if len(shape) == 3 else logits


def loss_fn(logits, labels, regression, reduction="mean"):
    """Cross-entropy for classification, MSE on the single output for regression (as the seed)."""
    if regression:
        return nn.functional.mse_loss(logits.view(-1).float(), labels.view(-1).float(), reduction=reduction)
    return nn.functional.cross_entropy(logits.float(), labels.view(-1), reduction=reduction)


class ModelSource:
    """Resolves `--bert_model` (a Google short name, a local model folder or a hub id) and the
    `--bert_config_json_path` / `--bert_vocab_path` overrides into a config, a vocab and weights."""

    def __init__(self, bert_model, config_path=None, vocab_path=None):
        self.name = bert_model
        self.folder = self._local_folder(bert_model)
        self.config_path = config_path
        self.vocab_path = vocab_path
        if self.config_path is None and self.folder:
            self.config_path = self._first_existing(self.folder, ("bert_config.json", "config.json"))
        if self.vocab_path is None and self.folder:
            self.vocab_path = self._first_existing(self.folder, ("vocab.txt",))

    @staticmethod
    def _local_folder(name):
        if os.path.isdir(name):
            return name
        if name in GOOGLE_FOLDERS:
            bert_all_dir = os.environ.get("BERT_ALL_DIR") or resources.data_path("cache", "bert_metadata")
            return os.path.join(bert_all_dir, GOOGLE_FOLDERS[name])
        return None

    @staticmethod
    def _first_existing(folder, names):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        return None

    def config(self):
        if self.config_path:
            if not os.path.isfile(self.config_path):
                raise StiltsError(f"{self.config_path}: BERT config file not found")
            try:
                return BertConfig.from_json_file(self.config_path)
            except (ValueError, OSError) as e:
                raise StiltsError(f"{self.config_path}: not a BERT config JSON ({e})") from None
        return self._from_hub(lambda: BertConfig.from_pretrained(self.name), "config")

    def vocab(self):
        """Path of vocab.txt, downloading it from the hub when the name is a hub id."""
        if self.vocab_path:
            return self.vocab_path
        from huggingface_hub import hf_hub_download
        return self._from_hub(lambda: hf_hub_download(self.name, "vocab.txt"), "vocabulary")

    def pretrained_encoder_state(self):
        """Encoder weights for `from_pretrained`: a local weights file, else the hub."""
        if self.folder:
            path = self._first_existing(self.folder, WEIGHT_FILES)
            if path:
                weights = read_weights(path)
                check_state_dict(weights, path)
                return weights
        hub_name = self.name if self.folder is None or self.name in GOOGLE_FOLDERS else None
        if hub_name is None:
            raise StiltsError(f"{self.folder}: no {' or '.join(WEIGHT_FILES)} in this model folder")
        model = self._from_hub(lambda: BertModel.from_pretrained(hub_name), "weights")
        return model.state_dict()

    def _from_hub(self, load, what):
        try:
            return load()
        except Exception as e:  # offline, unknown id, gated repo...
            hint = ""
            if self.name in GOOGLE_FOLDERS:
                hint = (f"; or put {' / '.join(WEIGHT_FILES)} into "
                        f"{self._local_folder(self.name)} (the folder $BERT_ALL_DIR/{GOOGLE_FOLDERS[self.name]})")
            raise StiltsError(f"could not load the {what} of {self.name!r} from the Hugging Face hub "
                              f"({type(e).__name__}); pass a local model folder as --bert_model{hint}") from None


def read_weights(path):
    """A state dict from a .safetensors or torch file, never running pickled code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:
            raise StiltsError(f"{path}: not a readable safetensors file ({e})") from None
    return load_checkpoint(path)


def build_model(config, task):
    """The task's model: a head with one output per label, one for regression and for multiple choice
    (a score per choice)."""
    outputs = 1 if task.is_multiple_choice else task.num_labels
    return BertForGlue(config, outputs, regression=task.is_regression)


def count_parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def print_trainable_params(model):
    print("TRAINABLE PARAMS:")
    for name, param in model.named_parameters():
        if param.requires_grad:
            print(f"    {name}  {tuple(param.shape)}")
    print(f"    total: {count_parameters(model, trainable_only=True):,} of {count_parameters(model):,}")


def unwrap(model):
    """The model under a DistributedDataParallel or torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def to_cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}
