"""Checkpoints, in one place: the files (read without running pickled code, written atomically), the
seed's load and save modes, and where training stands (`Position`, and the training state that resumes it).

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
A checkpoint is `{"args", "model", ["optimizer", "scheduler", "scaler", "train_state"]}`; its
train_state is `{"epoch", "batch", "global_step", "seed", "val_history", "rng_per_rank"}`.

Every file is checked for the structure its use reads (`check_state_dict`, `check_resume_state`)
before any of it is used: a malformed file is one line naming the file and what is wrong in it.
"""

import dataclasses
import json
import logging
import os
import pickle
import re
import warnings

import torch

import stilts.io  # atomic_write through its module: the test of atomic writes watches it there
from stilts import distributed
from stilts.errors import CannotResume, StiltsError

logger = logging.getLogger(__name__)

HEAD_KEEPING_MODES = ("full_model_only", "state_full_model", "state_all", "state_adapter")
STATE_FILE_MODES = ("state_model_only", "state_full_model", "state_all", "state_adapter")
RESUME_ENTRIES = ("args", "optimizer", "scheduler", "scaler", "train_state")  # state_all reads them as dicts
TRAIN_STATE_INTS = ("epoch", "batch", "global_step", "seed")  # with rng_per_rank, as train_state() writes
IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")  # buffers some versions saved


# ----------------------------------------------------------------------------- files
def load_checkpoint(path):
    """Load a `.p`/`.bin` checkpoint without executing code: tensors and plain containers only.

    What it holds is not checked here: read_checkpoint and check_resume_state check what each use reads.
    """
    if not os.path.isfile(path):
        raise StiltsError(f"{path}: checkpoint file not found")
    not_torch = _not_a_torch_checkpoint(path)
    if not_torch:
        raise StiltsError(f"{path}: {not_torch}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols > 2 before failing on them below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can make torch's readers raise nearly anything
        reason = _torch_reason(e)
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in reason:  # a class or function: code
            raise StiltsError(f"{path}: refused to load: it holds objects other than tensors and plain "
                              f"containers, which could run code ({reason})") from None
        raise StiltsError(f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None


def read_weights(path):
    """A state dict from a .safetensors or torch file, never running pickled code; a stilts checkpoint
    in safetensors (--checkpoint_format safetensors) comes back as the checkpoint dict it was."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, "pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as e:
            raise StiltsError(f"{path}: not a readable safetensors file ({e})") from None
        return _from_safetensors(tensors, metadata[SKELETON], path) if SKELETON in metadata else tensors
    return load_checkpoint(path)


TORCH_ZIP = b"PK\x03\x04"  # torch.save writes a zip archive
TORCH_LEGACY = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # torch < 1.6: a pickle opening with its magic number


def _not_a_torch_checkpoint(path):
    """What the file is instead, judged by its first bytes; None when it may be a torch checkpoint.

    torch.load(weights_only=True) calls every other file a pickle it refused, which would send
    the user looking for code in a file of random bytes or a renamed safetensors file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(TORCH_LEGACY))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head.startswith(TORCH_ZIP) or head.startswith(TORCH_LEGACY):
        return None
    if not head:
        return "an empty file, not a torch checkpoint"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # PROTO 2-5 opens a pickle
        return "refused to load: a plain pickle, not a checkpoint written by torch.save"
    header_length = int.from_bytes(head[:8], "little")  # safetensors: a JSON header after its 8-byte length
    if head[8:9] == b"{" and 8 + header_length <= os.path.getsize(path):
        return "a safetensors file, not a torch checkpoint: rename it to .safetensors"
    return "not a torch checkpoint (neither a zip nor a pickle)"


def _torch_reason(error):
    """The informative line of a torch.load error (a weights-only refusal opens with a paragraph of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError):
        lines = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))] or lines
    return lines[0][:200] if lines else type(error).__name__


def check_state_dict(state, path, entry=None):
    """Refuse anything but names -> tensors (in the file, or in its `entry`), naming the first offender:
    load_into would otherwise fail with a traceback far from the cause."""
    subject = f"{entry!r} entry " if entry else ""
    if not isinstance(state, dict):
        raise StiltsError(f"{path}: {subject}holds a {type(state).__name__}, expected a state dict (a dict of tensors)")
    for key, value in state.items():
        if not isinstance(key, str):
            raise StiltsError(f"{path}: {subject}has a key of type {type(key).__name__}, expected parameter names")
        if not torch.is_tensor(value):
            raise StiltsError(f"{path}: {subject}holds a {type(value).__name__} under key {key!r}, expected tensors")


def save_checkpoint(path, checkpoint):
    """Write a checkpoint (the dict make_checkpoint makes) atomically: a kill leaves the old file. A
    .safetensors path gets the safetensors form (no pickle), any other torch.save's."""
    if path.endswith(".safetensors"):
        from safetensors.torch import save

        tensors, skeleton = _to_safetensors(checkpoint)
        data = save(tensors, {SKELETON: skeleton})
        with stilts.io.atomic_write(path, "wb") as f:
            f.write(data)
        return
    with stilts.io.atomic_write(path, "wb") as f:
        recorder = _WriteRecorder(f)
        try:
            torch.save(checkpoint, recorder)
        except RuntimeError:
            if recorder.error is not None:  # raised as itself, so that atomic_write names the full disk
                raise recorder.error from None
            raise


class _WriteRecorder:
    """A file that keeps the OSError of a failed write: torch.save turns it into an opaque RuntimeError."""

    def __init__(self, f):
        self.f = f
        self.error = None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


# ----------------------------------------------------------------------------- load modes
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
    """Refuse malformed entries a state_all resume reads, before any is applied (restore_training, and
    the seed in finetune.run). An absent entry passes: restore_training says what a resume misses."""
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
    """Copy `state_dict` into `model` (not a DDP or compile wrapper), refusing anything that does not fit.

    keep_head: the checkpoint's head must fit the task; else the head is left as initialised.
    partial: the state dict may cover only part of the model (a base was loaded first).
    Keys of adapters may always be missing: plain encoder weights into an adapter model.
    The encoder is every parameter under the model's base_model_prefix (`bert.`, `roberta.`...),
    the head all the others.
    """
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


def load_weights(model, load_mode, load_path=None, base=None, pretrained_state=None):
    """Fill `model` for a load mode; returns the checkpoint dict (state_all needs the rest of it).

    base: (state dict, where it came from) of the base weights (modeling.read_base), or None."""
    partial = False
    if base is not None:
        base_state, base_path = base
        load_into(model, base_state, base_path, keep_head=False)
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


# ----------------------------------------------------------------------------- making one
def make_checkpoint(model, save_mode, args, optimizer=None, scheduler=None, scaler=None, train_state=None):
    """The dict written to all_state.p (see the module docstring for its entries); `model` is the
    model itself, not a DDP or compile wrapper (their keys would carry a prefix)."""
    state = model.state_dict()
    if save_mode in ("tunable", "model_tunable"):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    checkpoint = {"args": args, "model": {k: v.detach().cpu() if torch.is_tensor(v) else v
                                                for k, v in state.items()}}
    if save_mode in ("all", "tunable") and optimizer is not None:  # settings.STATE_SAVE_MODES
        checkpoint["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            checkpoint["scheduler"] = scheduler.state_dict()
        if scaler is not None and scaler.is_enabled():
            checkpoint["scaler"] = scaler.state_dict()
        if train_state is not None:
            checkpoint["train_state"] = train_state
    return checkpoint


# ----------------------------------------------------------------------------- where training stands
@dataclasses.dataclass
class Position:
    """Where training stands: the next batch of `epoch` to train, after `global_step` optimizer steps.
    The batches of an epoch are a pure function of (seed, epoch), so this is all a resume needs."""
    epoch: int = 0
    batch: int = 0
    global_step: int = 0


def train_state(position, seed, val_history, ctx):
    """A checkpoint's train_state entry, with every process's RNG state: dropout continues exactly on
    resume. Every process calls it (the RNG states are gathered)."""
    rng = {"torch_rng": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda_rng"] = torch.cuda.get_rng_state(ctx.device)
    return {**dataclasses.asdict(position), "seed": seed, "val_history": val_history,
            "rng_per_rank": distributed.all_gather_objects(ctx, rng)}


def restore_training(checkpoint, parts, run_args, seed, total_steps, ctx):
    """Resume from a `state_all` checkpoint (checked by check_resume_state): load its optimizer,
    schedule and scaler into `parts` ({entry: object with load_state_dict}), set this process's RNG,
    and return its Position and dev history. Whatever cannot resume this run is a CannotResume."""
    missing = [k for k in ("optimizer", "scheduler", "train_state") if k not in checkpoint]
    if missing:
        raise CannotResume(missing=missing)
    previous = checkpoint.get("args") or {}
    for flag in ("train_batch_size", "train_examples_number"):  # they fix the batches: same data order
        if flag in previous and flag in run_args and previous[flag] != run_args[flag]:
            raise CannotResume(setting=flag, then=previous[flag], now=run_args[flag])
    # What is inside the entries is checked by torch's load_state_dict, which fails with any of these errors.
    for name, part in parts.items():
        if name not in checkpoint:  # a scaler only where the run used fp16
            continue
        try:
            part.load_state_dict(checkpoint[name])
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise CannotResume(f"{run_args.get('bert_load_path')}: its {name} state does not fit this "
                               f"run ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    state = checkpoint["train_state"]
    if state["global_step"] > total_steps:
        raise CannotResume(f"the checkpoint is at step {state['global_step']} but this run has only {total_steps} "
                           f"steps")
    if state.get("seed") is not None and state["seed"] != seed:
        logger.warning("resuming with seed %s; the checkpoint's run used %s: the data order changes",
                       seed, state["seed"])
    rngs = state["rng_per_rank"]
    if len(rngs) != ctx.world_size:
        logger.warning("resuming on %d processes, the checkpoint's run had %d: same batches, other dropout masks",
                       ctx.world_size, len(rngs))
    rng = rngs[ctx.rank % len(rngs)]
    torch.set_rng_state(rng["torch_rng"])
    if "cuda_rng" in rng and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda_rng"], ctx.device)
    position = Position(**{field.name: state[field.name] for field in dataclasses.fields(Position)})
    return position, dict(state.get("val_history", {}))


# ----------------------------------------------------------------------------- without pickle
# --checkpoint_format safetensors: the same checkpoint dict in one .safetensors file. Its tensors are
# stored as safetensors stores them; everything else (the run's flags, the optimizer's param_groups,
# the schedule, the position) as JSON in the file's metadata, where each tensor's place holds its
# key. Reading it runs no code, as torch's weights_only loading does not promise for every file.
SKELETON = "stilts_checkpoint"  # the metadata key that makes a .safetensors file a stilts checkpoint


def _to_safetensors(checkpoint):
    """(tensors by key, the JSON skeleton) of a checkpoint dict."""
    tensors, storages = {}, set()

    def walk(value, key):
        if torch.is_tensor(value):
            value = value.detach().cpu().contiguous()
            storage = value.untyped_storage().data_ptr()
            if storage in storages and value.numel():  # safetensors refuses tensors that share memory: a copy
                value = value.clone()
            storages.add(value.untyped_storage().data_ptr())
            if key in tensors:  # two places of the same dotted name (a dict key with a dot in it)
                key = f"{key}#{len(tensors)}"
            tensors[key] = value
            return {"tensor": key}
        if isinstance(value, dict):  # keys keep their type: the optimizer's state is keyed by ints
            return {"dict": [[k, walk(v, f"{key}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"list": [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TypeError(f"a checkpoint holds a {type(value).__name__} at {key}")

    skeleton = walk(checkpoint, "checkpoint")
    return tensors, json.dumps(skeleton)


def _from_safetensors(tensors, skeleton, path):
    """The checkpoint dict again; a skeleton that does not fit its tensors is a damaged file."""
    def build(node):
        kind, = node.keys()
        if kind == "tensor":
            return tensors[node["tensor"]]
        if kind == "dict":
            return {k: build(v) for k, v in node["dict"]}
        if kind == "list":
            return [build(v) for v in node["list"]]
        return node["value"]

    try:
        return build(json.loads(skeleton))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise StiltsError(f"{path}: a damaged stilts checkpoint (its metadata does not fit its tensors: "
                          f"{type(e).__name__})") from None
