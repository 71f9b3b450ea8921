"""A user's own task, described by a JSON task file (docs/tasks.md).

    {"name": "my_rte", "type": "classification",
     "files": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
     "text_a": "sentence1", "text_b": "sentence2", "label": "label",
     "labels": ["entailment", "not_entailment"], "metric": "acc"}

The stages: `load_task_file` reads and checks the JSON (every key, before any data is read) and
returns a `FileTask`; its `read(split, folder)` loads a split as a `Table` of columns (CSV, TSV,
JSON Lines or parquet by extension, or a Hugging Face dataset) and turns the rows into `Example`s,
checking each value against the task. Relative file names are read from --data_dir when given,
else from the task file's folder. Every problem is one line naming the task file and its key, or
the data file and its row.
"""
import csv
import dataclasses
import functools
import json
import math
import os
import re
from typing import Optional

from stilts.errors import StiltsError
from stilts.tasks.core import (CLASSIFICATION, MAX_LINE_BYTES, MULTIPLE_CHOICE, REGRESSION, SPLITS, Example, Task,
                               file_digest)
from stilts.tasks.glue import TASKS

METRICS = {  # the metrics each type can be ranked by; the first is the default
    CLASSIFICATION: ("acc", "f1", "acc_and_f1", "mcc"),
    REGRESSION: ("corr", "pearson", "spearmanr"),
    MULTIPLE_CHOICE: ("acc",),
}
COMMON_KEYS = {"name", "type", "files", "dataset", "label", "labels", "metric", "id"}
KEYS = {  # the keys each type takes beyond COMMON_KEYS; those named first are required
    CLASSIFICATION: ({"text_a"}, {"text_b"}),
    REGRESSION: ({"text_a"}, {"text_b"}),
    MULTIPLE_CHOICE: ({"context", "choices"}, set()),
}
DATASET_KEYS = {"path", "name", "splits", "data_files", "revision"}
DATASET_SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # the hub's usual split names
READERS = (".csv", ".tsv", ".jsonl", ".parquet")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it names folders and cache files
# A GLUE task's name means its readers, MNLI's mismatched half and the leaderboard export; the others
# are folders a study writes beside its tasks' (compared case-blind, for case-blind file systems).
RESERVED_NAMES = set(TASKS) | {"submission_input", "submitit"}


@dataclasses.dataclass(frozen=True)
class FileTask(Task):
    """A task from a task file: which columns hold what, and where each split is."""
    task_type: str = CLASSIFICATION
    spec_path: str = ""                 # the task file, for messages
    text_a: tuple = ()                  # columns joined by a space (multiple choice: the context)
    text_b: Optional[tuple] = None
    choices: object = None              # multiple choice: a tuple of columns, or one list column's name
    label: str = "label"
    id: Optional[str] = None            # the column of ids written to test_predictions.csv (default: row number)
    files: Optional[dict] = None        # split -> file name (relative: to the data folder)
    dataset: Optional[dict] = None      # load_dataset arguments and the split names

    @property
    def type(self):
        return self.task_type

    @property
    def has_pairs(self):
        return self.text_b is not None or self.is_multiple_choice

    @property
    def spec(self):
        return self.spec_path

    def default_folder(self):
        return os.path.dirname(os.path.abspath(self.spec_path))

    def check_split(self, split, folder):
        if self.files is not None:
            if split not in self.files:
                raise StiltsError(f"{self.spec_path}: no {split} file under 'files' (it has: {', '.join(self.files)})")
            path = os.path.join(folder, self.files[split])
            if not os.path.isfile(path):
                raise StiltsError(f"{path}: file not found ('files' {split} of {self.spec_path})")
        elif split not in self.dataset["splits"]:
            raise StiltsError(f"{self.spec_path}: no {split} split under 'dataset' 'splits' "
                              f"(it has: {', '.join(self.dataset['splits'])})")

    def where(self, split, folder):
        if self.files is not None:
            return os.path.join(folder, self.files[split])
        return f"dataset {self.dataset['path']} split {self.dataset['splits'][split]}"

    def source_digest(self, split, folder):
        columns = {k: getattr(self, k) for k in ("task_type", "text_a", "text_b", "choices", "label", "labels")}
        table_id = (file_digest(os.path.join(folder, self.files[split])) if self.files is not None
                    else self._dataset_split(split, folder).fingerprint)
        return {"columns": json.loads(json.dumps(columns)), "data": table_id}

    def read(self, split, folder):
        self.check_split(split, folder)
        table = self._table(split, folder)
        examples = [self._example(table, i, split) for i in range(table.rows)]
        if not examples:
            raise StiltsError(f"{table.where}: no examples (empty {split} split)")
        return examples

    # ------------------------------------------------------------------ rows -> examples
    def _table(self, split, folder):
        if self.files is not None:
            return read_table(os.path.join(folder, self.files[split]))
        return self._dataset_split(split, folder)

    def _dataset_split(self, split, folder):
        return read_dataset(self.dataset, self.dataset["splits"][split], folder, self.spec_path)

    def _example(self, table, i, split):
        ident = str(table.value(self.id, i, "id")) if self.id else str(i)
        label = None if split == "test" else self._label(table, i)
        if self.is_multiple_choice:
            choices = ([table.text(c, i, "choices") for c in self.choices] if isinstance(self.choices, tuple)
                       else table.choice_list(self.choices, i, self.num_labels))
            return Example(ident, table.joined(self.text_a, i, "context"), None, label, choices)
        text_b = table.joined(self.text_b, i, "text_b") if self.text_b is not None else None
        return Example(ident, table.joined(self.text_a, i, "text_a"), text_b, label)

    def _label(self, table, i):
        value = table.value(self.label, i, "label")
        if isinstance(value, str) and not value.strip():  # an empty CSV/TSV cell
            raise StiltsError(f"{table.row(i)}: no value in column {self.label!r} (key 'label')")
        if self.is_regression:
            number = _number(value)
            if number is None:
                raise StiltsError(f"{table.row(i)}: label {value!r} is not a number ({self.name} is a regression task)")
            return number
        text = table.label_text(self.label, value, class_names=not self.is_multiple_choice)
        if text not in self.labels:
            expected = (f"a choice number from 0 to {self.num_labels - 1}" if self.is_multiple_choice
                        else f"one of 'labels': {', '.join(self.labels)}")
            raise StiltsError(f"{table.row(i)}: label {text!r} is not {expected}")
        return text


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Reading a split: a Table of columns


@dataclasses.dataclass
class Table:
    """A split's columns, and how to name one of its rows in a message."""
    where: str                      # the file, or the dataset and split
    columns: dict                   # name -> list of values
    rows: int
    lines: Optional[list] = None    # JSON Lines: the line of each row
    label_names: Optional[dict] = None  # column -> class names (a dataset's ClassLabel columns)
    fingerprint: str = ""

    def row(self, i):
        return f"{self.where}:{self.lines[i]}" if self.lines else f"{self.where}: row {i + 1}"

    def value(self, column, i, key):
        values = self.columns.get(column)
        if values is None:
            raise StiltsError(f"{self.where}: no column {column!r} (key {key!r}); it has: {', '.join(self.columns)}")
        value = values[i]
        if value is None or value is _MISSING or (isinstance(value, float) and math.isnan(value)):
            raise StiltsError(f"{self.row(i)}: no value in column {column!r} (key {key!r})")
        return value

    def text(self, column, i, key):
        """A text value; NUL characters and texts over 1 MiB are refused in every format, as in GLUE's."""
        value = self.value(column, i, key)
        return self._checked(value if isinstance(value, str) else str(value), column, i, key)

    def _checked(self, text, column, i, key):
        if "\0" in text:
            raise StiltsError(f"{self.row(i)}: NUL character in column {column!r} (key {key!r}); not text")
        if len(text) > MAX_LINE_BYTES:
            raise StiltsError(f"{self.row(i)}: column {column!r} (key {key!r}) holds {len(text)} characters, "
                              f"more than {MAX_LINE_BYTES}; not a text of an example")
        return text

    def joined(self, columns, i, key):
        return " ".join(self.text(c, i, key) for c in columns)

    def choice_list(self, column, i, count):
        """A row's choices from a list column: `count` of them (None: two or more)."""
        value = self.value(column, i, "choices")
        if (isinstance(value, str) or not hasattr(value, "__len__")
                or (len(value) != count if count else len(value) < 2)):
            raise StiltsError(f"{self.row(i)}: column {column!r} (key 'choices') should hold a list of "
                              f"{count or 'two or more'} texts")
        return [self._checked(str(v), column, i, "choices") for v in value]

    def label_text(self, column, value, class_names=True):
        """A class label as a string: a dataset's class name, an integer without '.0', else str()."""
        names = (self.label_names or {}).get(column) if class_names else None
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            return names[value]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)


_MISSING = object()  # a JSON Lines row without the key


def read_table(path):
    """A data file's columns, by extension: CSV and TSV as text, JSON Lines and parquet as typed."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in READERS:
        raise StiltsError(f"{path}: unknown data file type {ext or '(none)'}; use one of {', '.join(READERS)}")
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".parquet":
        return _read_parquet(path)
    return _read_delimited(path, ext)


def _read_delimited(path, ext):
    """CSV with the usual quoting, or TSV as GLUE writes it (no quoting). Every row must be as wide as
    the header: a stray comma or tab inside a text would shift every column after it (pandas even
    turns a first surplus field into an index). NUL bytes and fields over 1 MiB are refused as the
    GLUE reader refuses them."""
    separator = "\t" if ext == ".tsv" else ","
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if ext == ".tsv" else {"delimiter": ","}
    csv.field_size_limit(MAX_LINE_BYTES)
    kind = ext[1:].upper()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not a column name
            reader = csv.reader(f, **dialect)
            header, rows = None, []
            try:
                for fields in reader:
                    if not fields:  # a blank line
                        continue
                    if any("\0" in field for field in fields):
                        raise StiltsError(f"{path}:{reader.line_num}: NUL byte in line; not a UTF-8 text file")
                    if header is None:
                        header = _header(fields, path)
                    elif len(fields) != len(header):
                        raise StiltsError(f"{path}:{reader.line_num}: {len(fields)} {'tab' if ext == '.tsv' else 'comma'}"
                                          f"-separated fields, but the header has {len(header)} (a {separator!r} "
                                          f"inside a text{'' if ext == '.tsv' else ' without quotes'}?)")
                    else:
                        rows.append(fields)
            except csv.Error as e:  # a field over the limit, a quote left open at the end of the file
                raise StiltsError(f"{path}:{reader.line_num}: cannot read as {kind}: {e}") from None
    except UnicodeDecodeError as e:
        raise StiltsError(f"{path}: cannot read as {kind}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise StiltsError(f"{path}: cannot read: {e.strerror}") from None
    if header is None:
        raise StiltsError(f"{path}: empty file; a {kind} file starts with a header row naming its columns")
    columns = {name: [row[c] for row in rows] for c, name in enumerate(header)}
    return Table(path, columns, len(rows))


def _header(fields, path):
    duplicate = next((name for name in fields if fields.count(name) > 1), None)
    if duplicate is not None:
        raise StiltsError(f"{path}:1: column {duplicate!r} is named twice in the header")
    return fields


def _read_parquet(path):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise StiltsError(f"{path}: reading parquet needs pyarrow: pip install 'stilts[datasets]'") from None
    except (OSError, ValueError) as e:
        raise StiltsError(f"{path}: cannot read as PARQUET: {' '.join(str(e).split())[:200]}") from None
    except Exception as e:  # pyarrow's own errors for a damaged file
        raise StiltsError(f"{path}: cannot read as PARQUET: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}") from None
    columns = {str(name): frame[name].tolist() for name in frame.columns}
    return Table(path, columns, len(frame))


def _read_jsonl(path):
    records, lines = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_BYTES:
                    raise StiltsError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} characters")
                try:
                    record = json.loads(line)
                except RecursionError:
                    raise StiltsError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
                except ValueError as e:
                    raise StiltsError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(record, dict):
                    raise StiltsError(f"{path}:{lineno}: expected a JSON object per line, found {type(record).__name__}")
                records.append(record)
                lines.append(lineno)
    except UnicodeDecodeError as e:
        raise StiltsError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise StiltsError(f"{path}: cannot read: {e.strerror}") from None
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [record.get(name, _MISSING) for record in records] for name in names}
    return Table(path, columns, len(records), lines=lines)


def read_dataset(spec, split, folder, spec_path):
    """One split of a Hugging Face dataset (a hub id, or a local folder or files under `folder`)."""
    try:
        import datasets
    except ImportError:
        raise StiltsError(f"{spec_path}: 'dataset' needs the datasets package: pip install 'stilts[datasets]'") from None
    path = spec["path"]
    local = os.path.join(folder, path)
    if os.path.exists(local):
        path = local
    data_files = spec.get("data_files")
    if isinstance(data_files, dict):
        data_files = {k: _under(folder, v) for k, v in data_files.items()}
    elif data_files is not None:
        data_files = _under(folder, data_files)
    where = f"dataset {spec['path']}" + (f" ({spec['name']})" if spec.get("name") else "") + f" split {split}"
    try:
        data = datasets.load_dataset(path, spec.get("name"), data_files=data_files, split=split,
                                     revision=spec.get("revision"))
    except Exception as e:  # offline, unknown id or split, unreadable files: the library's many errors
        raise StiltsError(f"{spec_path}: cannot load {where} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    names = {name: feature.names for name, feature in data.features.items()
             if isinstance(feature, datasets.ClassLabel)}
    return Table(where, data.to_dict(), len(data), label_names=names, fingerprint=data._fingerprint)


def _under(folder, names):
    return [os.path.join(folder, n) for n in names] if isinstance(names, list) else os.path.join(folder, names)


# ---------------------------------------------------------------------------------------------
# The task file


def load_task_file(path, data_dir=None):
    """The task a task file describes. Without a 'labels' key the labels are the train split's,
    sorted (or the class names of a dataset's label column)."""
    path = os.path.abspath(path)
    try:
        changed = os.stat(path).st_mtime_ns
    except OSError:
        changed = None  # _read_spec says why
    return _load(path, changed, data_dir)


@functools.lru_cache(maxsize=None)
def _load(path, changed, data_dir):
    """load_task_file, once per file version (stilts-run checks every run's flags)."""
    spec = _read_spec(path)
    task_type = spec.get("type", CLASSIFICATION)
    _check_keys(spec, path, task_type)
    fields = dict(name=spec["name"], metric=spec.get("metric", METRICS[task_type][0]), task_type=task_type,
                  spec_path=path, label=spec.get("label", "label"), id=spec.get("id"),
                  files=spec.get("files"), dataset=_dataset_spec(spec, path), labels=None)
    if task_type == MULTIPLE_CHOICE:
        fields.update(text_a=_columns(spec, "context", path), choices=_choices(spec, path))
    else:
        fields.update(text_a=_columns(spec, "text_a", path),
                      text_b=_columns(spec, "text_b", path) if "text_b" in spec else None)
    task = FileTask(**fields)
    folder = data_dir or task.default_folder()
    if task_type == CLASSIFICATION:
        labels = spec.get("labels") or _train_labels(task, folder)
        return dataclasses.replace(task, labels=tuple(labels))
    if task_type == MULTIPLE_CHOICE:
        count = len(task.choices) if isinstance(task.choices, tuple) else _choice_count(task, folder)
        return dataclasses.replace(task, labels=tuple(str(i) for i in range(count)))
    return task


def _read_spec(path):
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise StiltsError(f"{path}: task file not found") from None
    except OSError as e:
        raise StiltsError(f"{path}: cannot read the task file: {e.strerror}") from None
    except RecursionError:
        raise StiltsError(f"{path}: not a JSON task file (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise StiltsError(f"{path}: not a JSON task file ({e})") from None
    if not isinstance(spec, dict):
        raise StiltsError(f"{path}: a task file holds a JSON object, found {type(spec).__name__}")
    return spec


def _check_keys(spec, path, task_type):
    if not isinstance(task_type, str) or task_type not in KEYS:
        raise StiltsError(f"{path}: 'type' {task_type!r} is not one of {', '.join(KEYS)}")
    required, optional = KEYS[task_type]
    unknown = sorted(set(spec) - COMMON_KEYS - required - optional)
    if unknown:
        raise StiltsError(f"{path}: unknown key {unknown[0]!r} for a {task_type} task (keys: "
                          f"{', '.join(sorted(COMMON_KEYS | required | optional))})")
    missing = sorted(({"name"} | required) - set(spec))
    if missing:
        raise StiltsError(f"{path}: missing key {missing[0]!r} (a {task_type} task needs {', '.join(sorted(required))})")
    if isinstance(spec["name"], str) and spec["name"].lower() in RESERVED_NAMES:
        raise StiltsError(f"{path}: 'name' {spec['name']!r} is taken (a GLUE task, or a folder of a study); "
                          f"give the task another name")
    if not isinstance(spec["name"], str) or not NAME.match(spec["name"]):
        raise StiltsError(f"{path}: 'name' {spec['name']!r} should be letters, digits, '_', '-' or '.' "
                          f"(it names folders)")
    if ("files" in spec) == ("dataset" in spec):
        raise StiltsError(f"{path}: give either 'files' or 'dataset'")
    if "files" in spec:
        files = spec["files"]
        if (not isinstance(files, dict) or not files or set(files) - set(SPLITS)
                or not all(isinstance(v, str) and v for v in files.values())):
            raise StiltsError(f"{path}: 'files' should map some of {', '.join(SPLITS)} to file names")
        for split, name in files.items():
            if os.path.splitext(name)[1].lower() not in READERS:
                raise StiltsError(f"{path}: 'files' {split} {name!r}: unknown data file type; use one of "
                                  f"{', '.join(READERS)}")
    metric = spec.get("metric", METRICS[task_type][0])
    if metric not in METRICS[task_type]:
        raise StiltsError(f"{path}: 'metric' {metric!r} does not fit a {task_type} task (use one of "
                          f"{', '.join(METRICS[task_type])})")
    for key in ("label", "id"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise StiltsError(f"{path}: {key!r} should be a column name")
    if "labels" in spec:
        labels = spec["labels"]
        if task_type != CLASSIFICATION:
            raise StiltsError(f"{path}: 'labels' is for classification tasks (a {task_type} task's labels are "
                              f"{'numbers' if task_type == REGRESSION else 'choice numbers'})")
        if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(v, str) for v in labels)
                or len(set(labels)) != len(labels)):
            raise StiltsError(f"{path}: 'labels' should list two or more distinct label strings")


def _columns(spec, key, path):
    """A text key: one column, or a list of columns whose texts are joined by a space."""
    value = spec[key]
    columns = [value] if isinstance(value, str) else value
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise StiltsError(f"{path}: {key!r} should be a column name or a list of column names")
    return tuple(columns)


def _choices(spec, path):
    """Multiple choice: a list of two or more columns, or the name of one column holding lists."""
    value = spec["choices"]
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c for c in value):
        return tuple(value)
    raise StiltsError(f"{path}: 'choices' should list two or more columns, or name one column holding lists")


def _dataset_spec(spec, path):
    if "dataset" not in spec:
        return None
    dataset = spec["dataset"]
    if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str) or not dataset["path"]:
        raise StiltsError(f"{path}: 'dataset' should be an object with a 'path' (a hub id, or a local folder)")
    unknown = sorted(set(dataset) - DATASET_KEYS)
    if unknown:
        raise StiltsError(f"{path}: unknown key {unknown[0]!r} in 'dataset' (keys: {', '.join(sorted(DATASET_KEYS))})")
    for key in ("name", "revision"):
        if key in dataset and not (isinstance(dataset[key], str) and dataset[key]):
            raise StiltsError(f"{path}: 'dataset' {key!r} should be a string")
    if "data_files" in dataset and not _file_names(dataset["data_files"]):
        raise StiltsError(f"{path}: 'dataset' 'data_files' should be a file name, a list of them, or an object "
                          f"mapping split names to them")
    splits = dataset.get("splits", DATASET_SPLITS)
    if (not isinstance(splits, dict) or not splits or set(splits) - set(SPLITS)
            or not all(isinstance(v, str) and v for v in splits.values())):
        raise StiltsError(f"{path}: 'dataset' 'splits' should map some of {', '.join(SPLITS)} to the dataset's "
                          f"split names")
    return {**dataset, "splits": splits}


def _file_names(value):
    """A file name, a list of them, or {split: either}: what load_dataset takes as data_files."""
    names = lambda v: (isinstance(v, str) and v) or (  # noqa: E731
        isinstance(v, list) and v and all(isinstance(n, str) and n for n in v))
    return names(value) or (isinstance(value, dict) and value and all(names(v) for v in value.values()))


def _train_labels(task, folder):
    """The label set of the train split, sorted; a dataset's class names in their order."""
    if "train" not in (task.files or task.dataset["splits"]):
        raise StiltsError(f"{task.spec_path}: no 'labels' and no train split to take them from; list them "
                          f"under 'labels'")
    task.check_split("train", folder)
    table = task._table("train", folder)
    names = (table.label_names or {}).get(task.label)
    if names is not None:
        return names
    labels = set()
    for i in range(table.rows):
        value = table.value(task.label, i, "label")
        if isinstance(value, str) and not value.strip():
            raise StiltsError(f"{table.row(i)}: no value in column {task.label!r} (key 'label')")
        labels.add(table.label_text(task.label, value))
    labels = sorted(labels)
    if len(labels) < 2:
        raise StiltsError(f"{table.where}: the train split has {len(labels)} distinct label(s) in column "
                          f"{task.label!r}; a classification task needs two or more")
    return labels


def _choice_count(task, folder):
    """A list column's number of choices, from the first split there is (every row must match it)."""
    for split in SPLITS:
        if split in (task.files or task.dataset["splits"]):
            task.check_split(split, folder)
            table = task._table(split, folder)
            if not table.rows:
                raise StiltsError(f"{table.where}: no examples (empty {split} split)")
            return len(table.choice_list(task.choices, 0, None))
    raise StiltsError(f"{task.spec_path}: no split to read")
