"""Tasks: what a run trains on, and where its examples come from.

A task is data, not code: its label list (in logit-column order), the metric that ranks runs, and a
reader for each split. The GLUE tasks (`GlueTask`, registered in `TASKS` under the seed's names)
read the official TSV files with their column layouts, in the seed's label order so that logit
column k means the same label as in zphang/bert_on_stilts. A user's own task is a JSON task file
(stilts.task_files); `get_task` takes a GLUE name or the path of a task file. Readers report
malformed input as `StiltsError("FILE:LINE: ...")`.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from typing import Optional

import numpy as np

from stilts.errors import StiltsError

logger = logging.getLogger(__name__)

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
class Task:
    """What every task has: labels, metric and type. Subclasses say where the splits come from."""
    name: str                       # e.g. "rte", or a task file's "name"
    labels: Optional[tuple]         # label strings in logit-column order (choice numbers); None = regression
    metric: str                     # the key of compute_metrics() that ranks runs

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


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the fields of one split file live (column numbers; -1 is the last column)."""
    text_a: int
    text_b: Optional[int] = None
    label: Optional[int] = None   # None: unlabeled (test) file
    index: Optional[int] = None   # column holding the example id, used in guids
    header: bool = True


@dataclasses.dataclass(frozen=True)
class GlueTask(Task):
    """A GLUE task: its official folder, and for each split the TSV file name and column layout."""
    folder: str = ""                # the official GLUE folder, e.g. "RTE"
    files: dict = None              # split -> file name
    layouts: dict = None            # split -> Layout
    skip_short_rows: bool = False   # QQP: rows with missing fields are skipped and counted
    extra_fields: int = 0           # SNLI train: rows may hold this many annotator labels beyond the header

    @property
    def has_pairs(self):
        return any(layout.text_b is not None for layout in self.layouts.values())

    def path(self, split, data_dir):
        if split not in self.files:
            raise StiltsError(f"task {self.name} has no {split} split (it has: {', '.join(self.files)})")
        return os.path.join(data_dir, self.files[split])

    def check_split(self, split, folder):
        path = self.path(split, folder)
        if not os.path.isfile(path):
            raise StiltsError(f"{path}: file not found")

    def where(self, split, folder):
        return self.path(split, folder)

    def example_id(self, example):
        return example.guid.split("-", 1)[1]  # the guid is "<split>-<index column or line>"

    def read(self, split, folder):
        return read_tsv_examples(self, split, folder)

    def source_digest(self, split, folder):
        return {"layout": dataclasses.asdict(self.layouts[split]), "data": file_digest(self.path(split, folder))}


NLI3 = ("contradiction", "entailment", "neutral")
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")


def _pair(a, b, label=-1, index=0, test_a=None, test_b=None):
    """Layouts of a sentence-pair task whose test file keeps the text columns (or moves them)."""
    labeled = Layout(text_a=a, text_b=b, label=label, index=index)
    test = Layout(text_a=test_a if test_a is not None else a, text_b=test_b if test_b is not None else b, index=index)
    return {"train": labeled, "dev": labeled, "test": test}


_STD = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_MNLI_LAYOUTS = _pair(8, 9)

TASKS = {t.name: t for t in [
    GlueTask("cola", BINARY, "mcc", "CoLA", _STD, {
        "train": Layout(text_a=3, label=1, header=False),
        "dev": Layout(text_a=3, label=1, header=False),
        "test": Layout(text_a=1, index=0)}),
    GlueTask("sst", BINARY, "acc", "SST-2", _STD, {
        "train": Layout(text_a=0, label=1),
        "dev": Layout(text_a=0, label=1),
        "test": Layout(text_a=1, index=0)}),
    GlueTask("mrpc", BINARY, "acc_and_f1", "MRPC", _STD, _pair(3, 4, label=0, index=None)),
    GlueTask("stsb", None, "corr", "STS-B", _STD, _pair(7, 8)),
    GlueTask("qqp", BINARY, "acc_and_f1", "QQP", _STD, _pair(3, 4, label=5, test_a=1, test_b=2),
             skip_short_rows=True),
    GlueTask("mnli", NLI3, "acc", "MNLI",
             {"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"}, _MNLI_LAYOUTS),
    GlueTask("mnli-mm", NLI3, "acc", "MNLI",
             {"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}, _MNLI_LAYOUTS),
    GlueTask("qnli", NLI2, "acc", "QNLI", _STD, _pair(1, 2)),
    GlueTask("rte", NLI2, "acc", "RTE", _STD, _pair(1, 2)),
    GlueTask("wnli", BINARY, "acc", "WNLI", _STD, _pair(1, 2)),
    # The raw SNLI train header names label1 only; validated rows add label2..label5 before gold_label,
    # which is why the label is read from the last column.
    GlueTask("snli", NLI3, "acc", "SNLI", _STD, {s: Layout(text_a=7, text_b=8, label=-1, index=0) for s in _STD},
             extra_fields=4),
    # The GLUE diagnostic set (AX): test only, scored by the leaderboard with an MNLI model.
    GlueTask("ax", NLI3, "acc", "diagnostic", {"test": "diagnostic.tsv"},
             {"test": Layout(text_a=1, text_b=2, index=0)}),
]}


def is_task_file(name):
    """A task file is named by its path: anything ending in .json."""
    return name.lower().endswith(".json")


def get_task(name, data_dir=None):
    """The GLUE task of that name, or the task a JSON task file describes (`data_dir`: where the task
    file's data files are, if not beside it)."""
    if is_task_file(name):
        from stilts.task_files import load_task_file
        return load_task_file(name, data_dir)
    key = name.lower()
    if key not in TASKS:
        raise StiltsError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, or the path of a "
                          f"task file (*.json, see docs/tasks.md)")
    return TASKS[key]


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

    def digest(self):
        """What identifies the split's data and how it is read: a finished run records it, and a study
        compares it to tell a run made on data that changed since."""
        source = json.dumps(self.task.source_digest(self.split, self.folder), sort_keys=True)
        return hashlib.sha256(source.encode()).hexdigest()


def run_splits(task, data_dir, mm_data_dir=None, train=False, dev=False, test=False):
    """The splits a run reads. MNLI's dev and test bring their mismatched halves (mm_dev,
    mm_test), from mm_data_dir when they live elsewhere (the raw GLUE download has them beside
    the matched ones)."""
    wanted = [split for split, asked in (("train", train), ("dev", dev), ("test", test)) if asked]
    files = [SplitFile(split, task, split, data_dir) for split in wanted]
    if task.name == "mnli":
        mm_task = get_task("mnli-mm")
        files += [SplitFile("mm_" + split, mm_task, split, mm_data_dir or data_dir) for split in wanted if split != "train"]
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


def _rows(path):
    """Yield (line number, fields) of a TSV file, rejecting what no GLUE file contains."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise StiltsError(f"{path}: file not found") from None
    except OSError as e:
        raise StiltsError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise StiltsError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes; not a GLUE TSV file")
            if b"\0" in raw:
                raise StiltsError(f"{path}:{lineno}: NUL byte in line; not a UTF-8 text file")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # MRPC's files start with a BOM
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise StiltsError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}); "
                                  f"GLUE files are UTF-8 encoded") from None
            line = line.rstrip("\r\n")
            if line:
                yield lineno, line.split("\t")


def read_tsv_examples(task, split, data_dir):
    """Read one split of a GLUE task into a list of `Example`s (file order)."""
    path = task.path(split, data_dir)
    layout = task.layouts[split]
    columns = [c for c in (layout.text_a, layout.text_b, layout.label, layout.index) if c is not None]
    needed = max(c for c in columns if c >= 0) + 1
    needed += max([-c for c in columns if c < 0], default=0)  # a "last column" label comes after the texts
    examples, skipped, width = [], 0, None
    for lineno, fields in _rows(path):
        if width is None:  # the header's width, or the first row's in a file without one (CoLA)
            width = len(fields)
            if layout.header:
                continue
        if len(fields) > width + task.extra_fields:  # an extra tab shifts every column after it: wrong text
            raise StiltsError(f"{path}:{lineno}: {len(fields)} tab-separated fields, but the "
                              f"{'header' if layout.header else 'first row'} has {width} "
                              f"(a tab inside a field?)")
        if len(fields) < needed:
            if task.skip_short_rows:
                skipped += 1
                continue
            raise StiltsError(f"{path}:{lineno}: expected at least {needed} tab-separated columns "
                              f"for {task.name} {split}, found {len(fields)}")
        label = None
        if layout.label is not None:
            label = _parse_label(task, fields[layout.label].strip(), path, lineno)
        ident = fields[layout.index] if layout.index is not None and fields[layout.index] else str(lineno - 1)
        examples.append(Example(
            guid=f"{split}-{ident}",
            text_a=fields[layout.text_a],
            text_b=fields[layout.text_b] if layout.text_b is not None else None,
            label=label,
        ))
    if skipped:
        logger.warning("%s: skipped %d rows with missing fields", path, skipped)
    if not examples:
        raise StiltsError(f"{path}: no examples (empty {split} split)")
    return examples


def _parse_label(task, text, path, lineno):
    if task.is_regression:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):  # 'nan' and '1e400' parse, but would make the loss non-finite
            raise StiltsError(f"{path}:{lineno}: label {text!r} is not a number ({task.name} is a regression task)")
        return value
    if text not in task.labels:
        raise StiltsError(f"{path}:{lineno}: unknown label {text!r} for {task.name} "
                          f"(expected one of: {', '.join(task.labels)})")
    return text
