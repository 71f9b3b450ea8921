"""The seed's checkpoint load and save modes.

Load modes (`--bert_load_mode`), as in zphang/bert_on_stilts:
  from_pretrained   encoder weights of `--bert_model`, new head
  model_only        encoder from a plain state dict file, head dropped
  state_model_only  encoder from an all_state.p's "model", head dropped (STILTs stage B:
                    MNLI's 3-way head never leaks into RTE)
  full_model_only   whole model (head kept) from a plain state dict file
  state_full_model  whole model (head kept) from an all_state.p
  state_all         whole model + optimizer + schedule + training position: resume
  state_adapter     base BERT weights (`--bert_base_path` file or model folder, or the seed's
                    `--bert_load_args bert_model_path:FILE`) + the adapter checkpoint (head kept)
With a base, any mode first loads the base encoder and then the checkpoint on top, so
checkpoints that hold only the trained parameters (save modes `tunable`, `model_tunable`) load.

Save modes (`--bert_save_mode`): `all` and `tunable` store model + optimizer (+ scheduler, grad
scaler and training position for resuming; the seed's save_bert forgot the optimizer); the
`model_*` modes store the model alone; `*_tunable` keep only parameters with requires_grad.
A checkpoint is `{"args", "model", ["optimizer", "scheduler", "scaler", "train_state"]}`.

Every file is checked for the structure its use reads (`check_state_dict`, `check_resume_state`)
before any of it is used: a malformed file is one line naming the file and what is wrong in it.
"""
import os
import re

import torch

from stilts.errors import StiltsError
from stilts.io import check_state_dict
from stilts.modeling import ModelSource, read_weights, to_cpu_state, unwrap

HEAD_KEEPING_MODES = ("full_model_only", "state_full_model", "state_all", "state_adapter")
STATE_FILE_MODES = ("state_model_only", "state_full_model", "state_all", "state_adapter")
RESUME_ENTRIES = ("args", "optimizer", "scheduler", "scaler", "train_state")  # state_all reads them as dicts
TRAIN_STATE_INTS = ("epoch", "batch", "global_step", "seed")  # with rng_per_rank, as Trainer._train_state writes
IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")  # buffers some versions saved


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


def read_checkpoint(path, load_mode):
    """The --bert_load_path file, checked for what `load_mode` reads from it.

    Returns the state dict to load and the all_state.p dict (None for a plain state dict file).
    """
    checkpoint = read_weights(path)
    wants_all_state = load_mode in STATE_FILE_MODES
    if wants_all_state and not isinstance(checkpoint, dict):
        raise StiltsError(f"{path}: holds a {type(checkpoint).__name__}, expected an all_state.p checkpoint "
                          f"(a dict with a 'model' entry)")
    is_all_state = isinstance(checkpoint, dict) and "model" in checkpoint
    if wants_all_state and not is_all_state:
        raise StiltsError(f"{path}: not an all_state.p checkpoint (no 'model' entry); "
                          f"for a plain state dict use --bert_load_mode model_only or full_model_only")
    if is_all_state and not wants_all_state:
        raise StiltsError(f"{path}: this is an all_state.p checkpoint; "
                          f"use --bert_load_mode state_model_only or state_full_model")
    if not is_all_state:
        check_state_dict(checkpoint, path)
        return checkpoint, None
    check_state_dict(checkpoint["model"], path, entry="model")
    if load_mode == "state_all":
        check_resume_state(checkpoint, path)
    return checkpoint["model"], checkpoint


def check_resume_state(checkpoint, path):
    """Refuse malformed entries a state_all resume reads, before any is applied (Trainer._restore, and the
    seed in finetune.run). An absent entry passes: _restore says what a resume misses."""
    for entry in RESUME_ENTRIES:
        if entry in checkpoint and not isinstance(checkpoint[entry], dict):
            raise StiltsError(f"{path}: {entry!r} entry is a {type(checkpoint[entry]).__name__}, expected a dict")
    if "train_state" not in checkpoint:
        return
    state, where = checkpoint["train_state"], f"{path}: 'train_state' entry"
    missing = [field for field in (*TRAIN_STATE_INTS, "rng_per_rank") if field not in state]
    if missing:
        raise StiltsError(f"{where} lacks {', '.join(missing)}")
    for field in TRAIN_STATE_INTS:
        value = state[field]
        if type(value) is not int or value < 0:
            got = value if type(value) is int else f"a {type(value).__name__}"
            raise StiltsError(f"{where}: {field} is {got}, expected an int >= 0")
    rngs = state["rng_per_rank"]
    if not isinstance(rngs, list) or not rngs:
        raise StiltsError(f"{where}: rng_per_rank is {'empty' if rngs == [] else 'a ' + type(rngs).__name__}, "
                          f"expected a list of one RNG state per process")
    cpu_state_size = torch.get_rng_state().numel()
    for rank, rng in enumerate(rngs):
        if (not isinstance(rng, dict) or not _is_rng_state(rng.get("torch_rng"), cpu_state_size)
                or ("cuda_rng" in rng and not _is_rng_state(rng["cuda_rng"]))):
            raise StiltsError(f"{where}: rng_per_rank[{rank}] is not a process's RNG state (a dict whose "
                              f"torch_rng is a ByteTensor as torch.get_rng_state() returns)")
    if not isinstance(state.get("val_history", {}), dict):
        raise StiltsError(f"{where}: val_history is a {type(state['val_history']).__name__}, expected a dict")


def _is_rng_state(value, size=None):
    """A generator state as torch.get_rng_state() returns it: a 1-D ByteTensor (of `size` bytes)."""
    return (torch.is_tensor(value) and value.dtype == torch.uint8 and value.dim() == 1
            and size in (None, value.numel()))


def normalize_keys(state_dict):
    """Today's key names for a state dict from the seed (pytorch-pretrained-BERT) or a DDP run."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if not IGNORED_KEYS.search(key):
            out[key] = value
    return out


def encoder_part(state_dict, prefix):
    """The encoder weights (`prefix` is the model's base_model_prefix and a dot, e.g. `bert.`) of a
    state dict; a bare encoder's keys (BertModel, AutoModel) get the prefix."""
    if any(k.startswith(prefix) for k in state_dict):
        return {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    return {prefix + k: v for k, v in state_dict.items() if not k.startswith("cls.")}


def load_into(model, state_dict, source, keep_head, partial=False):
    """Copy `state_dict` into `model`, refusing anything that does not fit.

    keep_head: the checkpoint's head must fit the task; else the head is left as initialised.
    partial: the state dict may cover only part of the model (a base was loaded first).
    Keys of adapters may always be missing: plain encoder weights into an adapter model.
    The encoder is every parameter under the model's base_model_prefix (`bert.`, `roberta.`...),
    the head all the others.
    """
    model = unwrap(model)
    prefix = model.base_model_prefix + "."
    state_dict = normalize_keys(state_dict)
    if not keep_head:
        state_dict = encoder_part(state_dict, prefix)
    expected = model.state_dict()
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        other_head = [k for k in unexpected if k.split(".")[0] in model.head_names]
        if other_head:
            raise StiltsError(f"{source}: its head {other_head[0]!r} does not fit this task's model "
                              f"(a {'regressor' if model.regression else 'classifier'}); use --bert_load_mode "
                              f"state_model_only or model_only to start a new head")
        hint = ("an adapter checkpoint: give the adapter config it was trained with, --bert_config_json_path"
                if any(".adapter." in k for k in unexpected) else "a checkpoint of another architecture?")
        raise StiltsError(f"{source}: does not fit the model: unexpected keys {unexpected[:3]} ({hint})")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            what = "head" if not key.startswith(prefix) else "adapter" if ".adapter." in key else "weights"
            hint = {"head": " use --bert_load_mode state_model_only or model_only to start a new head",
                    "adapter": " another adapter_size? use the adapter config it was trained with "
                               "(--bert_config_json_path)",
                    "weights": " (another model size? check --bert_model / --bert_config_json_path)"}[what]
            raise StiltsError(f"{source}: {what} {key!r} has shape {list(value.shape)} but the model "
                              f"needs {list(expected[key].shape)};{hint}")
    if not partial:
        needed = [k for k in expected if keep_head or k.startswith(prefix)]
        missing = [k for k in needed if k not in state_dict and ".adapter." not in k]
        if missing:
            raise StiltsError(f"{source}: does not fit the model: missing {len(missing)} keys, "
                              f"e.g. {missing[:3]} (a checkpoint of another model, or saved with a "
                              f"*_tunable mode and needing --bert_base_path?)")
    with torch.no_grad():
        for key, value in state_dict.items():
            expected[key].copy_(value)


def load_weights(model, load_mode, load_path=None, base_path=None, pretrained_state=None):
    """Fill `model` for a load mode; returns the checkpoint dict (state_all needs the rest of it)."""
    partial = False
    if base_path:
        load_into(model, read_base(base_path), base_path, keep_head=False)
        partial = True
    elif load_mode == "state_adapter":
        raise StiltsError("--bert_load_mode state_adapter needs the base BERT weights: --bert_base_path "
                          "FILE_OR_FOLDER, e.g. the --bert_model folder (or --bert_load_args bert_model_path:FILE)")
    if load_mode == "from_pretrained":
        if not partial:
            load_into(model, pretrained_state, "pretrained weights", keep_head=False)
        return None
    if not load_path:
        raise StiltsError(f"--bert_load_mode {load_mode} needs --bert_load_path")
    state, checkpoint = read_checkpoint(load_path, load_mode)
    load_into(model, state, load_path, keep_head=load_mode in HEAD_KEEPING_MODES, partial=partial)
    return checkpoint


def make_checkpoint(model, save_mode, args, optimizer=None, scheduler=None, scaler=None, train_state=None):
    """The dict written to all_state.p (see the module docstring for its entries)."""
    model = unwrap(model)
    state = model.state_dict()
    if save_mode in ("tunable", "model_tunable"):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    checkpoint = {"args": args, "model": to_cpu_state(state)}
    if save_mode in ("all", "tunable") and optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            checkpoint["scheduler"] = scheduler.state_dict()
        if scaler is not None and scaler.is_enabled():
            checkpoint["scaler"] = scaler.state_dict()
        if train_state is not None:
            checkpoint["train_state"] = train_state
    return checkpoint
