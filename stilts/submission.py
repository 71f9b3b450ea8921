"""GLUE leaderboard submissions: export, validation, zip.

The trainer's `--do_test` writes logits (`test_preds.csv`: no header, one row per test example, one
column per label in the task's label order). The leaderboard wants one `<NAME>.tsv` per task with
`index<TAB>prediction` rows and label strings, eleven files zipped flat. `LEADERBOARD` below is the
table made from the tasks' own leaderboard files (stilts.tasks) that says, per file, which task's
labels it uses, which run writes its logits, and how many test examples it must hold; export,
validation and zipping all read it.

It reads logits and data files only: no torch, no transformers (dev re-scoring is in stilts.rescoring).
"""
import dataclasses
import os
import shutil
import zipfile
from typing import Optional

import numpy as np

from stilts import resources
from stilts.errors import StiltsError
from stilts.io import atomic_write
from stilts.tasks import TASKS, get_task

TEMPLATE_DIR = resources.data_path("cache", "submission_template")
HEADER = "index\tprediction"
STSB_RANGE = (0.0, 5.0)          # the leaderboard scores similarity on this scale
MAX_ROW_PROBLEMS = 5             # the validator names this many bad rows per file, then counts the rest


@dataclasses.dataclass(frozen=True)
class LeaderboardEntry:
    name: str               # the file's name in the zip, without ".tsv"
    task: str               # the stilts task whose labels (logit columns) the predictions use
    run_task: str           # the --task_name of the run that writes the logits
    preds: str              # that run's logits file, without extension
    test_rows: int          # examples in the GLUE test set; the .tsv has one more line (the header)
    template: bool = False  # a placeholder ships in cache/submission_template/

    @property
    def filename(self):
        return self.name + ".tsv"


def leaderboard_entries():
    """A file per task that names one (stilts.tasks: each GLUE task's `leaderboard`), in the tasks' order.
    A companion's file is written by the run of the task it accompanies: MNLI-mm from an mnli run's
    mm_test_preds."""
    written_by = {companion.name: (task.name, f"{prefix}_test_preds")
                  for task in TASKS.values() for prefix, companion in task.companions}
    return [LeaderboardEntry(task.leaderboard.name, task.name, *written_by.get(task.name, (task.name, "test_preds")),
                             task.leaderboard.test_rows, task.leaderboard.template)
            for task in TASKS.values() if task.leaderboard]


LEADERBOARD = leaderboard_entries()


# ---------------------------------------------------------------------------------------------
# Reading logits


def read_logits(path, num_columns):
    """Logits as the trainer writes them: no header, one row per example, `num_columns` numbers.

    The separator is taken from the first line (a tab if it has one, else a comma), so the
    seed's tab-separated files read as well as the trainer's CSV.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise StiltsError(f"{path}: prediction file not found") from None
    except UnicodeDecodeError:
        raise StiltsError(f"{path}: not a text file of logits") from None
    except OSError as e:
        raise StiltsError(f"{path}: cannot read: {e.strerror}") from None
    if not lines:
        raise StiltsError(f"{path}: empty prediction file")
    sep = "\t" if "\t" in lines[0] else ","
    logits = np.empty((len(lines), num_columns))
    for lineno, line in enumerate(lines, 1):
        fields = line.split(sep)
        if len(fields) != num_columns:
            raise StiltsError(f"{path}:{lineno}: expected {num_columns} column(s) (one per label), "
                              f"found {len(fields)}")
        try:
            logits[lineno - 1] = [float(x) for x in fields]
        except ValueError:
            raise StiltsError(f"{path}:{lineno}: not a number in {line[:100]!r}") from None
    non_finite = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if non_finite.size:
        lineno = non_finite[0] + 1
        raise StiltsError(f"{path}:{lineno}: non-finite value in {lines[lineno - 1][:100]!r} (did training diverge?)")
    return logits


# ---------------------------------------------------------------------------------------------
# Export


def files_for_run(task_name):
    """The leaderboard files one run folder of `task_name` feeds, each with its logits file stem.

    An mnli run writes both halves (test_preds, mm_test_preds); a run of mnli-mm alone writes
    the mismatched half as test_preds, as in the seed.
    """
    task = get_task(task_name)
    pairs = [(f, f.preds) for f in LEADERBOARD if f.run_task == task.name]
    pairs = pairs or [(f, "test_preds") for f in LEADERBOARD if f.task == task.name]
    if not pairs:
        known = sorted({f.run_task for f in LEADERBOARD} | {f.task for f in LEADERBOARD})
        raise StiltsError(f"task {task.name} has no GLUE leaderboard file; leaderboard tasks: {', '.join(known)}")
    return pairs


def export_file(entry, pred_path, output_dir, count_check=True):
    """Turn one logits file into `<output_dir>/<entry.filename>`; return the path written.

    `count_check` refuses a file whose row count is not the test set's: it is the wrong run's
    file or a partial one, and the leaderboard would reject it anyway.
    """
    task = get_task(entry.task)
    logits = read_logits(pred_path, task.num_labels)
    if count_check and len(logits) != entry.test_rows:
        raise StiltsError(f"{pred_path}: {len(logits)} prediction rows, but the {entry.name} test set "
                          f"has {entry.test_rows}")
    preds = task.predictions(logits)
    if task.is_regression:
        preds = [repr(float(x)) for x in np.clip(preds, *STSB_RANGE)]
    else:
        preds = [task.labels[i] for i in preds]
    os.makedirs(output_dir, exist_ok=True)
    out_path = os.path.join(output_dir, entry.filename)
    with atomic_write(out_path) as f:
        f.write(HEADER + "\n")
        f.writelines(f"{i}\t{p}\n" for i, p in enumerate(preds))
    return out_path


@dataclasses.dataclass
class Outcome:
    """What `export_all` did for one leaderboard file."""
    entry: LeaderboardEntry
    status: str                 # exported | template | kept | missing | failed
    detail: str

    @property
    def failed(self):
        return self.status == "failed"

    def __str__(self):
        return f"{self.entry.filename:<12} {self.status:<9} {self.detail}"


def export_all(input_dir, output_dir, file_format="csv", template_dir=TEMPLATE_DIR, count_check=True):
    """Export every leaderboard file whose logits are at `<input_dir>/<run_task>/<preds>.<format>`.

    A file without logits keeps what `output_dir` already holds (an earlier export, or a template
    copied in by hand), else gets the template (AX, WNLI), else is reported missing. One task's bad
    input is reported and does not stop the others; nothing in `output_dir` is deleted.
    """
    os.makedirs(output_dir, exist_ok=True)
    outcomes = []
    for entry in LEADERBOARD:
        pred_path = os.path.join(input_dir, entry.run_task, f"{entry.preds}.{file_format}")
        out_path = os.path.join(output_dir, entry.filename)
        if os.path.exists(pred_path):
            try:
                export_file(entry, pred_path, output_dir, count_check)
                outcomes.append(Outcome(entry, "exported", f"from {pred_path}"))
            except StiltsError as e:
                outcomes.append(Outcome(entry, "failed", str(e)))
        elif os.path.exists(out_path):
            outcomes.append(Outcome(entry, "kept", f"no {pred_path}; kept the file already in {output_dir}"))
        elif entry.template:
            outcomes.append(copy_template_file(entry, template_dir, output_dir))
        else:
            outcomes.append(Outcome(entry, "missing", f"no {pred_path}"))
    return outcomes


def copy_template_file(entry, template_dir, output_dir):
    """Copy the seed's placeholder predictions (cache/submission_template/) for a task without a run."""
    src = os.path.join(template_dir, entry.filename)
    if not os.path.isfile(src):
        return Outcome(entry, "failed", f"no predictions and no template {src}")
    with open(src, "rb") as f_in, atomic_write(os.path.join(output_dir, entry.filename), "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    return Outcome(entry, "template", f"copied {src} (placeholder predictions)")


# ---------------------------------------------------------------------------------------------
# Validation


@dataclasses.dataclass
class FileCheck:
    entry: LeaderboardEntry
    rows: Optional[int]          # prediction rows found; None when the file is missing
    problems: list

    def __str__(self):
        rows = "missing" if self.rows is None else f"{self.rows} rows"
        head = f"{self.entry.filename:<12} {rows:<12} {'ok' if not self.problems else 'ERROR'}"
        return "\n".join([head] + [f"    {p}" for p in self.problems])


@dataclasses.dataclass
class ValidationReport:
    folder: str
    checks: list

    @property
    def ok(self):
        return not any(c.problems for c in self.checks)

    @property
    def num_problems(self):
        return sum(len(c.problems) for c in self.checks)

    def __str__(self):
        verdict = "valid" if self.ok else f"NOT valid: {self.num_problems} problem(s)"
        return "\n".join([f"validation of {self.folder}: {verdict}"] + [str(c) for c in self.checks])


def validate_submission(folder):
    """Check the eleven files as the leaderboard will: present, one row per test example,
    indices 0..n-1 in order, every prediction from the task's label set (STS-B: a score in 0..5)."""
    return ValidationReport(folder, [check_file(e, os.path.join(folder, e.filename)) for e in LEADERBOARD])


def check_file(entry, path):
    """Problems of one leaderboard file (an empty list when it is fine)."""
    expected = f"expected {entry.test_rows} rows ({entry.test_rows + 1} lines incl. header)"
    if not os.path.isfile(path):
        return FileCheck(entry, None, [f"{path}: file missing; {expected}"])
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return FileCheck(entry, None, [f"{path}: unreadable: {e}"])
    problems = []
    if not lines or lines[0] != HEADER:
        problems.append(f"{path}:1: header must be {HEADER!r}, found {(lines or [''])[0][:60]!r}")
    rows = lines[1:]
    if len(rows) != entry.test_rows:
        problems.append(f"{path}: {len(rows)} rows found, {expected}")
    task = get_task(entry.task)
    bad_rows = 0
    for i, line in enumerate(rows):
        problem = _row_problem(task, i, line.split("\t"))
        if problem:
            bad_rows += 1
            if bad_rows <= MAX_ROW_PROBLEMS:
                problems.append(f"{path}:{i + 2}: {problem}")
    if bad_rows > MAX_ROW_PROBLEMS:
        problems.append(f"{path}: ... and {bad_rows - MAX_ROW_PROBLEMS} more bad rows")
    return FileCheck(entry, len(rows), problems)


def _row_problem(task, i, fields):
    """What is wrong with data row `i` (0-based), or None."""
    if len(fields) != 2:
        return f"expected 2 tab-separated fields, found {len(fields)}"
    index, prediction = fields
    if index != str(i):
        return f"index {index!r}, expected {i} (indices must be 0..n-1 in order)"
    if task.is_regression:
        low, high = STSB_RANGE
        try:
            if low <= float(prediction) <= high:   # NaN compares false
                return None
        except ValueError:
            pass
        return f"prediction {prediction!r} is not a number from {low} to {high}"
    if prediction not in task.labels:
        return f"prediction {prediction!r} is not a {task.name} label (one of: {', '.join(task.labels)})"
    return None


# ---------------------------------------------------------------------------------------------
# Zip


def build_zip(folder, zip_path):
    """Zip the eleven files flat, as `zip -j -D`: bare file names, no folder entries.
    The zip is written atomically, so a failure never leaves a half-written one."""
    with atomic_write(zip_path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in sorted(LEADERBOARD, key=lambda e: e.filename):
            zf.write(os.path.join(folder, entry.filename), arcname=entry.filename)
    return zip_path


def make_submission(input_dir, output_dir, file_format="csv", template_dir=TEMPLATE_DIR):
    """Export every task found in `input_dir`, validate `output_dir`, and zip it only if both
    went through. Returns (outcomes, report, zip path or None)."""
    outcomes = export_all(input_dir, output_dir, file_format, template_dir)
    report = validate_submission(output_dir)
    if report.ok and not any(o.failed for o in outcomes):
        return outcomes, report, build_zip(output_dir, os.path.join(output_dir, "submission.zip"))
    return outcomes, report, None
