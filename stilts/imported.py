"""Intermediate models a study takes as they are (`--intermediate mnli=PATH_OR_HUB_ID`): the seed
released MNLI models so that users could skip stage A, and the hub holds many encoders already
fine-tuned on MNLI, QNLI, SST-2 and others.

Such an intermediate has no stage A. Before the first run its encoder is read (a stilts
all_state.p, a plain state dict like the seed's mnli.p, a transformers model folder or a hub id),
checked against --bert_model's architecture and size, and written once as the checkpoint a stage A
would leave, OUT/intermediate_<name>/all_state.p, beside an args.json that records where it came
from. From there on it is an intermediate like any other: every target run of its arm starts from
that encoder with a new head (state_model_only), and the summary names it and its source.
"""
import os
import re

from stilts.errors import StiltsError
from stilts.io import read_json, write_json

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it names folders (intermediate_<name>, stilts_<name>)


def parse(spec):
    """(name, where its weights are) of `name=PATH_OR_HUB_ID`, or None for a task stilts trains."""
    if "=" not in spec or os.path.exists(spec):
        return None
    name, source = (part.strip() for part in spec.split("=", 1))
    if not NAME.match(name):
        raise StiltsError(f"{spec}: the name before '=' must be letters, digits, '_', '-' or '.' (it names the "
                          f"study's folders), e.g. mnli=path/to/mnli.p")
    if not source:
        raise StiltsError(f"{spec}: give the model after '=': an all_state.p, a state dict file, a model folder "
                          f"or a hub id")
    source = os.path.expanduser(source)
    return name, os.path.abspath(source) if os.path.exists(source) else source


def names_a_file(spec):
    """Whether a model spec that is not on disk was meant as a path (else it is a hub id)."""
    return spec.endswith((".p", ".pt", ".pth", ".bin", ".safetensors")) or spec.startswith((os.sep, ".", "~"))


def read_encoder(spec, flag):
    """The weights an intermediate model's encoder is taken from: a stilts all_state.p (its "model"), a
    plain state dict file such as the seed's mnli.p, a transformers model folder, or a hub id.
    load_into keeps the encoder part and drops the head."""
    from stilts.checkpoints import check_state_dict, read_weights
    from stilts.modeling import ModelSource  # torch and transformers

    if os.path.isfile(spec):
        weights = read_weights(spec)
        if isinstance(weights, dict) and isinstance(weights.get("model"), dict):  # a stilts checkpoint
            check_state_dict(weights["model"], spec, entry="model")
            return weights["model"]
        check_state_dict(weights, spec)
        return weights
    if not os.path.isdir(spec) and names_a_file(spec):
        raise StiltsError(f"{spec}: no such file or model folder ({flag})")
    return ModelSource(spec, flag=flag).pretrained_encoder_state()  # a model folder, or a hub id


def imported_from(study, name):
    """The model the study's intermediate `name` was taken from (its folder's args.json), or None: not
    imported, or not run yet."""
    args_path = os.path.join(folder(study, name), "args.json")
    source = read_json(args_path, dict).get("imported_from") if os.path.isfile(args_path) else None
    return source if isinstance(source, str) else None


def check_not_imported(study, name):
    """A study that imported its intermediate `name` may not train a stage A of that name over it: its
    finished target runs started from the imported encoder."""
    earlier = imported_from(study, name)
    if earlier is not None:
        raise StiltsError(f"{folder(study, name)}: this study took its intermediate {name} as it is, from {earlier}; "
                          f"to train it, use a new --output_dir (or give --intermediate {name}={earlier} again)")


def folder(study, name):
    return os.path.join(study.output_dir, f"intermediate_{name}")


def bring_in(study, name, source, task, checkpoint_path, report=print):
    """Write `checkpoint_path` (OUT/intermediate_<name>/all_state.p) from `source`'s encoder, once: refused in one line,
    before anything is written, when it does not fit --bert_model (`task`: any of the study's targets,
    whose head the checkpoint carries and stage B drops). A study repeated with another source for the
    same name is refused: its finished runs started from the first."""
    from stilts.checkpoints import load_into, make_checkpoint, save_checkpoint  # torch and transformers
    from stilts.modeling import ModelSource, build_model

    where = folder(study, name)
    args_path = os.path.join(where, "args.json")
    if os.path.isfile(args_path):
        earlier = imported_from(study, name)
        if earlier is None:
            raise StiltsError(f"{where}: this study trained its intermediate {name} (stage A); to take {source} "
                              f"as it is, use a new --output_dir or another name (NAME=MODEL)")
        if earlier == source and os.path.isfile(checkpoint_path):
            return
        if earlier != source:
            raise StiltsError(f"{where}: this study's intermediate {name} came from {earlier}, not {source}; use a "
                              f"new --output_dir, or delete that folder to start over")
    model = build_model(ModelSource(study.bert_model, study.shared.bert_config_json_path).config(), task)
    load_into(model, read_encoder(source, f"--intermediate {name}="), source, keep_head=False)
    os.makedirs(where, exist_ok=True)
    args = {"task_name": name, "imported_from": source, "bert_model": study.bert_model}  # the model card reads it
    checkpoint = make_checkpoint(model, "model_all", args)
    # Adapters (--adapters): the encoder alone; each target run starts its own, seeded adapters.
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if ".adapter." not in k}
    save_checkpoint(checkpoint_path, checkpoint)
    write_json(args_path, args)  # last: a folder with both files is a finished import
    report(f"stilts-run: intermediate {name}: the encoder of {source} (no stage A), in {checkpoint_path}")
