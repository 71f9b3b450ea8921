"""Tasks: what a run trains on, and where its examples come from.

A task is data, not code: its label list (in logit-column order), the metric that ranks runs, a
reader for each split, the further evaluation splits it brings and its leaderboard file. The
stages: `core` (what every task is, and the split files a run reads), `glue` (the GLUE tasks and
their TSV reader), `files` (a user's own task, a JSON task file). This module is the one lookup
that knows both kinds: `get_task` takes a GLUE name or the path of a task file.
"""
from stilts.errors import StiltsError
from stilts.tasks.core import (CLASSIFICATION, MAX_LINE_BYTES, MULTIPLE_CHOICE, REGRESSION, SPLITS, Example,
                               SplitFile, Task, file_digest, resolve_data_dir, run_splits)
from stilts.tasks.files import load_task_file
from stilts.tasks.glue import TASKS

__all__ = ["CLASSIFICATION", "MAX_LINE_BYTES", "MULTIPLE_CHOICE", "REGRESSION", "SPLITS", "TASKS", "Example",
           "SplitFile", "Task", "file_digest", "get_task", "is_task_file", "resolve_data_dir", "run_splits"]


def is_task_file(name):
    """A task file is named by its path: anything ending in .json."""
    return name.lower().endswith(".json")


def get_task(name, data_dir=None):
    """The GLUE task of that name, or the task a JSON task file describes (`data_dir`: where the task
    file's data files are, if not beside it)."""
    if is_task_file(name):
        return load_task_file(name, data_dir)
    key = name.lower()
    if key not in TASKS:
        raise StiltsError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, or the path of a "
                          f"task file (*.json, see docs/tasks.md)")
    return TASKS[key]
