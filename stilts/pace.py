"""How fast this machine trains and scores a model: every finished run records its pace in the
features cache folder (`pace.json`), and stilts-run reads it to estimate a study before its first
run. A run's time is modelled as its overhead (start-up, loading, writing) plus the examples it
trains on over the training pace, plus the examples it scores over the scoring pace.

The record is keyed by what sets the pace: the model, --max_seq_length, the precision, the device
and the CPU threads. A lost update when two runs write at once only loses one run's figures.
"""
import dataclasses
import json
import os

from stilts.errors import StiltsError
from stilts.io import read_json, write_json

FILE_NAME = "pace.json"


@dataclasses.dataclass(frozen=True)
class PaceKey:
    model: str
    max_seq_length: int
    precision: str
    device: str                 # "cpu" or the GPU's name
    threads: int                # CPU threads of one process (the cores a study's --jobs share)

    def text(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def key_of(bert_model, max_seq_length, precision, device, threads=None):
    """What sets a run's pace: a run records under it, and stilts-run builds the same key for its estimate
    (`threads`: a run's CPU threads, default this process's; none count on a GPU)."""
    import torch

    model = os.path.abspath(bert_model) if os.path.isdir(bert_model) else bert_model
    if device.type == "cuda":
        return PaceKey(model, max_seq_length, precision, torch.cuda.get_device_name(device), 0)
    return PaceKey(model, max_seq_length, precision, "cpu", threads or torch.get_num_threads())


@dataclasses.dataclass
class Pace:
    train_per_s: float          # examples trained per second (each epoch's examples count)
    score_per_s: float          # examples scored per second (dev and test)
    overhead_s: float           # the rest of a run: start-up, model and data loading, writing

    def seconds(self, trained, scored):
        return self.overhead_s + trained / self.train_per_s + scored / self.score_per_s


def record(cache_dir, key, pace):
    """Keep `pace` as this machine's for `key` (a run that trained and scored: both paces known)."""
    path = os.path.join(cache_dir, FILE_NAME)
    paces = _read(path)
    paces[key.text()] = dataclasses.asdict(pace)
    os.makedirs(cache_dir, exist_ok=True)
    write_json(path, paces)


def lookup(cache_dir, key):
    """The recorded pace for `key`, else one recorded with other CPU threads (scaled by the thread
    count: matmul throughput grows about linearly with cores), else None; and a note on where it came
    from."""
    paces = _read(os.path.join(cache_dir, FILE_NAME)) if cache_dir else {}
    if key.text() in paces:
        return Pace(**paces[key.text()]), "this machine's recorded pace"
    for text, values in paces.items():
        other = PaceKey(**json.loads(text))
        if dataclasses.replace(other, threads=key.threads) == key:
            scale = key.threads / other.threads
            pace = Pace(values["train_per_s"] * scale, values["score_per_s"] * scale, values["overhead_s"])
            return pace, f"this machine's pace with {other.threads} threads, scaled to {key.threads}"
    return None, None


def _read(path):
    """The recorded paces; an unreadable or damaged file is only a lost record: start afresh."""
    try:
        paces = read_json(path, dict) if os.path.isfile(path) else {}
    except StiltsError:
        return {}
    good = {}
    for text, values in paces.items():
        try:
            PaceKey(**json.loads(text))
            pace = Pace(**values)
        except (TypeError, ValueError, RecursionError):
            continue
        if all(isinstance(v, (int, float)) and v > 0 for v in (pace.train_per_s, pace.score_per_s)):
            good[text] = values
    return good
