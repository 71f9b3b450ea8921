"""The model: the seed's BERT with its task heads, or another encoder with the head transformers
gives its family; and where its config, tokenizer and pretrained weights come from.

BERT (config.model_type "bert": Google's releases, MiniLM...) is the seed's model: parameter names
`bert.…` for the encoder, `classifier.…` for the classification head and `regressor.…` for the
STS-B head (the seed's BertForSequenceRegression), so the seed's checkpoints load.

Every other encoder in ENCODERS is transformers' own <Family>ForSequenceClassification, with the
head that family conventionally uses (RoBERTa's on <s>, DeBERTa's ContextPooler, DistilBERT's
pre_classifier...) and transformers' parameter names: `<base_model_prefix>.…` for the encoder, the
head's modules beside it. Regression is a head with one output, trained by stilts' loss. Both
kinds answer the same calls (ForGlue), so the trainer and the checkpoints treat them alike.
"""
import copy
import functools
import json
import logging
import os

from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from stilts import adapters, resources, speedups
from stilts.checkpoints import check_state_dict, read_weights
from stilts.errors import StiltsError
from stilts.features import SEED_LAYOUT, ModelTokenizer, load_tokenizer
from stilts.io import read_json

logger = logging.getLogger(__name__)

# The encoders stilts fine-tunes, by config.model_type ("deberta-v2" is DeBERTa-v2 and v3).
ENCODERS = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra", "distilbert", "albert", "modernbert")
# The seed's short names for Google's BERT releases, and the folder each unpacks to.
GOOGLE_FOLDERS = {
    "bert-base-uncased": "uncased_L-12_H-768_A-12",
    "bert-large-uncased": "uncased_L-24_H-1024_A-16",
    "bert-base-cased": "cased_L-12_H-768_A-12",
    "bert-large-cased": "cased_L-24_H-1024_A-16",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ForGlue:
    """What stilts calls on a task model: `model(input_ids, attention_mask, token_type_ids)` -> logits,
    `regression`, `get_input_embeddings()`, `base_model_prefix` (the encoder's parameters are
    `<prefix>.…`, all others are the head's) and `head_names` (the head's top-level modules)."""

    def forward(self, input_ids, attention_mask, token_type_ids):
        """Logits (batch, labels); multiple choice, inputs (batch, choices, tokens): one score per
        (context, choice) row, the logits (batch, choices)."""
        shape = input_ids.shape
        if len(shape) == 3:
            input_ids, attention_mask, token_type_ids = (t.reshape(-1, shape[-1])
                                                         for t in (input_ids, attention_mask, token_type_ids))
        logits = self.row_logits(input_ids, attention_mask, token_type_ids)
        return logits.view(shape[0], shape[1]) if len(shape) == 3 else logits


class BertForGlue(ForGlue, nn.Module):
    """BERT encoder + dropout + linear head on the pooled [CLS] output (the seed's heads)."""

    base_model_prefix = "bert"
    head_names = ("classifier", "regressor")

    def __init__(self, config, num_labels, regression=False):
        super().__init__()
        self.config = config
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

    def get_input_embeddings(self):
        return self.bert.get_input_embeddings()

    def row_logits(self, input_ids, attention_mask, token_type_ids):
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).pooler_output
        return self.head(self.dropout(pooled))


class TransformersForGlue(ForGlue):
    """Mixed into transformers' <Family>ForSequenceClassification by transformers_for_glue: its model
    and head as transformers builds them, called as stilts calls BertForGlue."""

    regression = False
    token_types = False  # whether the model has segment embeddings to give token_type_ids to

    @property
    def head_names(self):
        return tuple(name for name, _ in self.named_children() if name != self.base_model_prefix)

    def row_logits(self, input_ids, attention_mask, token_type_ids):
        types = {"token_type_ids": token_type_ids} if self.token_types else {}
        # super(ForGlue, ...): the transformers class this is mixed into.
        return super(ForGlue, self).forward(input_ids=input_ids, attention_mask=attention_mask, **types).logits


@functools.cache
def _glue_class(transformers_class):
    """TransformersForGlue mixed into a transformers class (one class per family, made once)."""
    return type(f"Glue{transformers_class.__name__}", (TransformersForGlue, transformers_class),
                {"__module__": __name__})


def transformers_for_glue(config, num_labels, regression=False):
    """transformers' sequence classification model of the config's family, with `num_labels` outputs."""
    config = copy.deepcopy(config)
    config.num_labels = num_labels
    # What AutoModelForSequenceClassification.from_config does, with the stilts calls mixed in.
    model = _glue_class(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)])._from_config(config)
    model.regression = regression
    model.token_types = uses_token_types(config)
    speedups.install(model)
    if getattr(config, "use_adapter", False):
        adapters.add_adapters(model.base_model, config)
        adapters.freeze_for_adapters(model)
    return model


def uses_token_types(config):
    """Whether the model tells segments apart: RoBERTa's single token type fails on segment-B ids,
    DistilBERT and ModernBERT have none, DeBERTa-v3 has type_vocab_size 0."""
    return (getattr(config, "type_vocab_size", None) or 0) > 1


def usable_positions(config):
    """The longest input the position embeddings cover. RoBERTa's (and XLM-R's) positions start after
    the padding id: 514 position embeddings hold 512 tokens."""
    if config.model_type in ("roberta", "xlm-roberta"):
        return config.max_position_embeddings - config.pad_token_id - 1
    return config.max_position_embeddings


def check_encoder(model_type, use_adapter, where):
    """An architecture stilts fine-tunes, and adapters only where its layers take them."""
    if model_type not in ENCODERS:
        raise StiltsError(f"{where}: model_type {model_type!r} is not an encoder stilts fine-tunes "
                          f"(supported: {', '.join(ENCODERS)})")
    if use_adapter and model_type not in adapters.ADAPTER_SITES:
        raise StiltsError(f"{where}: use_adapter: adapters need BERT's output blocks in every layer, which "
                          f"{model_type} lacks (adapters: {', '.join(adapters.ADAPTER_SITES)})")


def warn_if_fp16_overflows(config, fp16):
    """DeBERTa (v2 and v3) is known to overflow in float16: one warning, before training."""
    if fp16 and config.model_type == "deberta-v2":
        logger.warning("--fp16 with DeBERTa: it is known to overflow in float16 (non-finite losses); "
                       "--bf16 keeps float32's range, on devices that have it")


def loss_fn(logits, labels, regression, reduction="mean"):
    """Cross-entropy for classification, MSE on the single output for regression (as the seed)."""
    if regression:
        return nn.functional.mse_loss(logits.view(-1).float(), labels.view(-1).float(), reduction=reduction)
    return nn.functional.cross_entropy(logits.float(), labels.view(-1), reduction=reduction)


class ModelSource:
    """Resolves `--bert_model` (a Google short name, a local model folder or a hub id) and the
    `--bert_config_json_path` / `--bert_vocab_path` overrides into a config, a tokenizer and weights."""

    def __init__(self, bert_model, config_path=None, vocab_path=None, flag="--bert_model"):
        self.name = bert_model
        self.flag = flag  # the command's flag that names the model, for messages
        self.folder = self._local_folder(bert_model)
        self.config_path = config_path
        self.vocab_given = vocab_path is not None
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
        """The model's config, of a family in ENCODERS. A config JSON without model_type is BERT's
        (Google's bert_config.json)."""
        if not self.config_path:
            config = self._from_hub(lambda: AutoConfig.from_pretrained(self.name), "config")
            check_encoder(config.model_type, getattr(config, "use_adapter", False), self.name)
            return config
        if not os.path.isfile(self.config_path):
            raise StiltsError(f"{self.config_path}: model config file not found")
        try:
            with open(self.config_path, encoding="utf-8") as f:
                values = json.load(f)
            model_type, use_adapter = values.get("model_type", "bert"), values.get("use_adapter", False)
        except RecursionError:
            raise StiltsError(f"{self.config_path}: not a model config JSON (nested too deeply)") from None
        except (ValueError, OSError, AttributeError) as e:  # not UTF-8 JSON, not an object
            raise StiltsError(f"{self.config_path}: not a model config JSON ({e})") from None
        check_encoder(model_type, use_adapter, self.config_path)
        try:
            return CONFIG_MAPPING[model_type].from_json_file(self.config_path)
        except (ValueError, OSError) as e:
            raise StiltsError(f"{self.config_path}: not a {model_type} config JSON ({e})") from None

    def vocab(self):
        """Path of BERT's vocab.txt, downloading it from the hub when the name is a hub id."""
        if self.vocab_path:
            return self.vocab_path
        from huggingface_hub import hf_hub_download
        return self._from_hub(lambda: hf_hub_download(self.name, "vocab.txt"), "vocabulary")

    def casing(self, do_lower_case=None):
        """BERT's casing, and why, in words: `do_lower_case` (--do_lower_case) when given; else what the
        model's tokenizer_config.json says, as transformers' AutoTokenizer reads it; else the seed's
        default, cased (Google's vocab folders say nothing). Other encoders: None, their tokenizer
        normalises texts by its own rules."""
        if not self.is_bert():
            return None, f"{self.name}'s own tokenizer normalises the texts"
        if do_lower_case is not None:
            return bool(do_lower_case), f"--do_lower_case {str(bool(do_lower_case)).lower()}"
        said = self._tokenizer_config().get("do_lower_case")
        if isinstance(said, bool):
            return said, (f"{self.name}'s tokenizer_config.json says do_lower_case: {str(said).lower()}; "
                          f"--do_lower_case {str(not said).lower()} to change it")
        return False, "no --do_lower_case and no do_lower_case in the model's tokenizer files: the seed's default"

    def _tokenizer_config(self):
        """The model's tokenizer_config.json as an object ({} when there is none, or it is unreadable)."""
        path = self._first_existing(self.folder, ("tokenizer_config.json",)) if self.folder else None
        if path is None and self.folder is None:
            try:
                from huggingface_hub import hf_hub_download
                path = hf_hub_download(self.name, "tokenizer_config.json")
            except Exception:  # offline, or the repo has none: the model says nothing
                return {}
        try:
            return read_json(path, dict) if path else {}
        except StiltsError:
            return {}

    def tokenizer(self, do_lower_case):
        """BERT: WordPiece over vocab.txt, cased as asked, with the seed's input layout. Any other
        encoder: its own fast tokenizer, which normalises texts by its own rules."""
        if self.is_bert():
            return load_tokenizer(self.vocab(), do_lower_case)
        model_type = self.config().model_type
        if self.vocab_given:
            raise StiltsError(f"--bert_vocab_path {self.vocab_path}: a vocab.txt is BERT's; a {model_type} model "
                              f"uses the tokenizer of {self.flag}")
        return ModelTokenizer(self._load(lambda: AutoTokenizer.from_pretrained(self.folder or self.name),
                                         "tokenizer"), model_type)

    def is_bert(self):
        """The seed's model, tokenization and checkpoints (BertForGlue), or another encoder's."""
        return self.name in GOOGLE_FOLDERS or self.config().model_type == "bert"

    def input_layout(self, pair):
        """The tokens of an input whose texts are one token each (`a`, `b`): the fewest it can have."""
        if self.is_bert():
            return SEED_LAYOUT[pair]
        return self.tokenizer(do_lower_case=False).layout(pair)

    def pretrained_encoder_state(self):
        """Encoder weights for `from_pretrained`. BERT: the folder's weights file, else the hub. Other
        encoders: the encoder of the family's sequence classification model as transformers loads it
        (a pretraining head, or a pooler that model lacks, left out), every one of its weights present."""
        if not self.is_bert():
            model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(self.config())]
            model, info = self._load(lambda: model_class.from_pretrained(self.folder or self.name,
                                                                         output_loading_info=True), "weights")
            prefix = model.base_model_prefix + "."
            missing = sorted(k for k in info["missing_keys"] if k.startswith(prefix))
            if missing:
                raise StiltsError(f"{self.folder or self.name}: its weights lack {len(missing)} of the encoder's, "
                                  f"e.g. {missing[:3]} (a checkpoint of another architecture?)")
            return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        if self.folder:
            path = self._first_existing(self.folder, WEIGHT_FILES)
            if path:
                weights = read_weights(path)
                check_state_dict(weights, path)
                return weights
        hub_name = self.name if self.folder is None or self.name in GOOGLE_FOLDERS else None
        if hub_name is None:
            raise StiltsError(f"{self.folder}: no {' or '.join(WEIGHT_FILES)} in this model folder")
        model = self._from_hub(lambda: AutoModel.from_pretrained(hub_name), "weights")
        return model.state_dict()

    def _load(self, load, what):
        """transformers' loading from the local folder, else from the hub."""
        if self.folder is None:
            return self._from_hub(load, what)
        try:
            return load()
        except Exception as e:  # no such file, unreadable, another format...
            reason = " ".join(str(e).split())[:200]
            raise StiltsError(f"{self.folder}: could not load the model's {what} "
                              f"({type(e).__name__}: {reason})") from None

    def _from_hub(self, load, what):
        try:
            return load()
        except Exception as e:  # offline, unknown id, gated repo...
            hint = ""
            if self.name in GOOGLE_FOLDERS:
                hint = (f"; or put {' / '.join(WEIGHT_FILES)} into "
                        f"{self._local_folder(self.name)} (the folder $BERT_ALL_DIR/{GOOGLE_FOLDERS[self.name]})")
            raise StiltsError(f"could not load the {what} of {self.name!r} from the Hugging Face hub "
                              f"({type(e).__name__}); pass a local model folder as {self.flag}{hint}") from None


def base_weights(path):
    """(state dict, path) of the base weights under a *_tunable or adapter checkpoint, as load_weights
    takes them, or None without a base."""
    return (read_base(path), path) if path else None


def read_base(path):
    """Base BERT weights: a state dict file (the seed used the pretrained pytorch_model.bin; also
    .p/.pt/.safetensors) or a model folder such as the one given as --bert_model."""
    if os.path.isdir(path):
        return ModelSource(path).pretrained_encoder_state()
    if not os.path.isfile(path):
        raise StiltsError(f"{path}: base BERT weights not found (--bert_base_path / --bert_load_args)")
    weights = read_weights(path)
    check_state_dict(weights, path)
    return weights


def build_model(config, task):
    """The task's model: a head with one output per label, one for regression and for multiple choice
    (a score per choice); BertForGlue for BERT, transformers' own model and head for the others."""
    outputs = 1 if task.is_multiple_choice else task.num_labels
    build = BertForGlue if config.model_type == "bert" else transformers_for_glue
    return build(config, outputs, regression=task.is_regression)


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
