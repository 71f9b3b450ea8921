"""What every task is: its labels (in logit-column order), the metric that ranks runs, its type, a
reader for each split, and the further evaluation splits it brings (MNLI: its mismatched half).
The kinds of task (stilts.tasks.glue, stilts.tasks.files) say where the splits come from; a run
names the splits it reads with `run_splits`.
"""
import dataclasses
import functools
import hashlib
import json
import os
from typing import Optional

import numpy as np

from stilts.errors import StiltsError

MAX_LINE_BYTES = 1 << 20  # a GLUE row is a few hundred bytes; a 1 MiB line is a broken file
CLASSIFICATION, REGRESSION, MULTIPLE_CHOICE = "classification", "regression", "multiple_choice"
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class Example:
    guid: str
    text_a: str                     # multiple choice: the context
    text_b: Optional[str]
    label: object                   # a label string, a float (regression), or None (test)
    choices: Optional[list] = None  # multiple choice: the texts paired with text_a, one per choice


@dataclasses.dataclass(frozen=True)
class LeaderboardFile:
    """The file a task's test predictions become in a GLUE leaderboard submission (stilts.submission)."""
    name: str                       # the file's name in the zip, without ".tsv", e.g. "MNLI-mm"
    test_rows: int                  # examples in the test set; the .tsv has one more line (the header)
    template: bool = False          # a placeholder ships in cache/submission_template/


@dataclasses.dataclass(frozen=True)
class Task:
    """What every task has: labels, metric and type. Subclasses say where the splits come from."""
    name: str                       # e.g. "rte", or a task file's "name"
    labels: Optional[tuple]         # label strings in logit-column order (choice numbers); None = regression
    metric: str                     # the key of compute_metrics() that ranks runs
    # Further evaluation splits a run of this task scores with the same model, each under its own
    # task: (prefix, Task), e.g. MNLI's ("mm", mnli-mm): mm_dev, mm_val_preds.csv, the metric mm-acc.
    companions: tuple = dataclasses.field(default=(), kw_only=True)
    # None: its test predictions also go to test_predictions.csv, ids and label names
    leaderboard: Optional[LeaderboardFile] = dataclasses.field(default=None, kw_only=True)

    @property
    def type(self):
        return REGRESSION if self.labels is None else CLASSIFICATION

    @property
    def is_regression(self):
        return self.type == REGRESSION

    @property
    def is_multiple_choice(self):
        return self.type == MULTIPLE_CHOICE

    @property
    def num_labels(self):
        """Logit columns: 1 for regression, one per label (per choice for multiple choice)."""
        return 1 if self.is_regression else len(self.labels)

    def label_ids(self, examples):
        """The examples' labels as the model sees them: ids in logit-column order, or float32 scores
        for regression; 0 for unlabeled (test) examples."""
        if self.is_regression:
            return np.array([e.label if e.label is not None else 0.0 for e in examples], dtype=np.float32)
        ids = {label: i for i, label in enumerate(self.labels)}
        return np.array([ids[e.label] if e.label is not None else 0 for e in examples], dtype=np.int64)

    def predictions(self, logits):
        """Label ids (argmax) for classification, the single output column for regression."""
        logits = np.asarray(logits)
        return logits.reshape(-1) if self.is_regression else logits.argmax(axis=1)

    @property
    def spec(self):
        """What --task_name takes to name this task again (a task file: its path)."""
        return self.name

    def example_id(self, example):
        """The id a person looks an example up by, in the prediction files."""
        return example.guid

    def recorded_labels(self):
        """The labels a run records in args.json (task_labels) because the task's data may change them
        (a task file's labels can come from its train split); None when the task fixes them."""
        return None if self.labels is None else list(self.labels)

    # Where the data lives: each kind of task answers these.
    has_pairs = False  # inputs are [CLS] a [SEP] b [SEP] (multiple choice: context and choice)

    def default_folder(self):
        """The folder read when no --data_dir is given; None: the user must say."""
        return None

    def check_split(self, split, folder):
        """Raise StiltsError unless the split can be read from `folder`."""
        raise NotImplementedError

    def where(self, split, folder):
        """The split's file (or dataset), for messages."""
        raise NotImplementedError

    def read(self, split, folder):
        """The split's examples, in file order."""
        raise NotImplementedError

    def source_digest(self, split, folder):
        """What identifies the split's data and how it is read, for the features cache key."""
        raise NotImplementedError


def resolve_data_dir(task, data_dir=None, glue_dir=None, flag="--data_dir"):
    """The task's folder: `data_dir` if given; else a task file's own folder, or for GLUE
    `<glue_dir or $GLUE_DIR>/<official folder>` (`flag` is the command's name for data_dir)."""
    if data_dir:
        return data_dir
    if task.default_folder():
        return task.default_folder()
    glue_dir = glue_dir or os.environ.get("GLUE_DIR")
    if not glue_dir:
        raise StiltsError(f"no data folder for task {task.name}: pass {flag} or set GLUE_DIR "
                          f"(the folder holding {task.folder}/)")
    return os.path.join(glue_dir, task.folder)


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """One split a run reads, under the run's name for it (train, dev, test, mm_dev, mm_test)."""
    key: str
    task: Task
    split: str
    folder: str

    @property
    def prefix(self):
        """"" for a split of the run's own task, "mm_" for one of its companion's: its outputs' prefix."""
        return self.key[:-len(self.split)]

    def digest(self):
        """What identifies the split's data and how it is read: a finished run records it, and a study
        compares it to tell a run made on data that changed since."""
        source = json.dumps(self.task.source_digest(self.split, self.folder), sort_keys=True)
        return hashlib.sha256(source.encode()).hexdigest()


def run_splits(task, data_dir, mm_data_dir=None, train=False, dev=False, test=False):
    """The splits a run reads. The dev and test splits bring those of the task's companions (MNLI's
    mismatched halves: mm_dev, mm_test), from mm_data_dir when they live elsewhere (the raw GLUE
    download has them beside the matched ones)."""
    wanted = [split for split, asked in (("train", train), ("dev", dev), ("test", test)) if asked]
    files = [SplitFile(split, task, split, data_dir) for split in wanted]
    for prefix, companion in task.companions:
        files += [SplitFile(f"{prefix}_{split}", companion, split, mm_data_dir or data_dir)
                  for split in wanted if split != "train"]
    return files


def file_digest(path):
    """The SHA-256 of a file's content, computed once per version of the file (size and time of change)."""
    stat = os.stat(path)
    return _file_digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_digest(path, size, changed):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


