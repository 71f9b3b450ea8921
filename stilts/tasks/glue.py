"""The GLUE tasks under the seed's names, and their reader of the official TSV files.

Each `GlueTask` holds its official folder, and for each split the file name and column layout, in
the seed's label order so that logit column k means the same label as in zphang/bert_on_stilts;
MNLI brings its mismatched half (mnli-mm) as a companion, and each task names its leaderboard file.
Malformed input is `StiltsError("FILE:LINE: ...")`.
"""
import dataclasses
import logging
import math
import os
from typing import Optional

from stilts.errors import StiltsError
from stilts.tasks.core import MAX_LINE_BYTES, Example, LeaderboardFile, Task, file_digest

logger = logging.getLogger(__name__)


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

    def recorded_labels(self):
        return None  # fixed by the task's name, as in the seed

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

# MNLI's mismatched half: a task of its own (`--task_name mnli-mm` scores it alone), and the companion
# every mnli run scores beside the matched half.
MNLI_MM = GlueTask("mnli-mm", NLI3, "acc", "MNLI",
                   {"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}, _MNLI_LAYOUTS,
                   leaderboard=LeaderboardFile("MNLI-mm", 9847))

TASKS = {t.name: t for t in [
    GlueTask("cola", BINARY, "mcc", "CoLA", _STD, {
        "train": Layout(text_a=3, label=1, header=False),
        "dev": Layout(text_a=3, label=1, header=False),
        "test": Layout(text_a=1, index=0)}, leaderboard=LeaderboardFile("CoLA", 1063)),
    GlueTask("sst", BINARY, "acc", "SST-2", _STD, {
        "train": Layout(text_a=0, label=1),
        "dev": Layout(text_a=0, label=1),
        "test": Layout(text_a=1, index=0)}, leaderboard=LeaderboardFile("SST-2", 1821)),
    GlueTask("mrpc", BINARY, "acc_and_f1", "MRPC", _STD, _pair(3, 4, label=0, index=None),
             leaderboard=LeaderboardFile("MRPC", 1725)),
    GlueTask("stsb", None, "corr", "STS-B", _STD, _pair(7, 8), leaderboard=LeaderboardFile("STS-B", 1379)),
    GlueTask("qqp", BINARY, "acc_and_f1", "QQP", _STD, _pair(3, 4, label=5, test_a=1, test_b=2),
             skip_short_rows=True, leaderboard=LeaderboardFile("QQP", 390965)),
    GlueTask("mnli", NLI3, "acc", "MNLI",
             {"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"}, _MNLI_LAYOUTS,
             companions=(("mm", MNLI_MM),), leaderboard=LeaderboardFile("MNLI-m", 9796)),
    MNLI_MM,
    GlueTask("qnli", NLI2, "acc", "QNLI", _STD, _pair(1, 2), leaderboard=LeaderboardFile("QNLI", 5463)),
    GlueTask("rte", NLI2, "acc", "RTE", _STD, _pair(1, 2), leaderboard=LeaderboardFile("RTE", 3000)),
    GlueTask("wnli", BINARY, "acc", "WNLI", _STD, _pair(1, 2), leaderboard=LeaderboardFile("WNLI", 146, template=True)),
    # The raw SNLI train header names label1 only; validated rows add label2..label5 before gold_label,
    # which is why the label is read from the last column. Not on the leaderboard.
    GlueTask("snli", NLI3, "acc", "SNLI", _STD, {s: Layout(text_a=7, text_b=8, label=-1, index=0) for s in _STD},
             extra_fields=4),
    # The GLUE diagnostic set (AX): test only, scored by the leaderboard with an MNLI model
    # (`--task_name ax --do_test` with an MNLI run's head kept writes its logits).
    GlueTask("ax", NLI3, "acc", "diagnostic", {"test": "diagnostic.tsv"},
             {"test": Layout(text_a=1, text_b=2, index=0)}, leaderboard=LeaderboardFile("AX", 1104, template=True)),
]}


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
