"""Atomic file writes, and the JSON and CSV files stilts writes.

Every checkpoint, prediction and metrics file goes through `atomic_write`: the bytes land in a
temporary file in the destination folder, are fsync'ed, then renamed over the target. A crash
or a kill mid-write leaves the previous file intact, never a half-written one.
"""
import contextlib
import errno
import json
import os
import tempfile

import numpy as np

from stilts.errors import StiltsError

UMASK = os.umask(0)  # the process's umask, read once: what new files' and folders' permissions follow
os.umask(UMASK)


# Why a write can fail for reasons the user can fix, worded for the one-line error.
WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "no permission to write in the folder",
    errno.EPERM: "writing is not permitted there (an immutable folder?)",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder of that name is in the way",
}


def cannot_write(path, error):
    """The one-line error for an OSError met while writing `path`, or None if it is not one of those."""
    reason = WRITE_FAILURES.get(getattr(error, "errno", None))
    if reason is None:
        return None
    return StiltsError(f"{path}: cannot write: {reason} ({error.strerror}); nothing was written "
                       f"to it, and an earlier file of that name is unchanged")


def check_writable_folder(folder, flag):
    """Refuse now, before any work, an output folder that is a file or that cannot be written.

    Nothing is created: the nearest existing folder on the path is probed with a nameless
    temporary file, which catches read-only mounts, immutable folders and missing permissions.
    """
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StiltsError(f"{folder}: cannot write there ({flag}): {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        reason = WRITE_FAILURES.get(e.errno, e.strerror)
        raise StiltsError(f"{folder}: cannot write there ({flag}): {reason} ({existing}: {e.strerror})") from None


def check_writable_file(path, flag):
    """A file to be written later: not a folder, in a folder that exists and can be written."""
    if os.path.isdir(path):
        raise StiltsError(f"{path}: is a folder; {flag} names the file to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        problem = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise StiltsError(f"{path}: cannot write ({flag}): {folder} {problem}")
    check_writable_folder(folder, flag)


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open a temporary file next to `path`; on success fsync it and rename it onto `path`.

    A write that fails (a full disk, a read-only folder) removes the temporary file and raises a
    StiltsError naming `path`: no partial file is left and an earlier `path` is intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise (cannot_write(path, e) or e) from None
    os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        worded = cannot_write(path, e) if isinstance(e, OSError) else None
        if worded:
            raise worded from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_json(path, expected=None):
    """A JSON file's value, or one line naming the file: unreadable, not UTF-8 JSON (nested too deep for
    the parser included), or with `expected` (a type) a value of another type."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise StiltsError(f"{path}: file not found") from None
    except OSError as e:  # a folder in the way, no permission...
        raise StiltsError(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
        raise StiltsError(f"{path}: not a JSON file ({reason})") from None
    if expected is not None and not isinstance(value, expected):
        raise StiltsError(f"{path}: holds a JSON {json_type(value)}, expected {json_type(expected())}")
    return value


def json_type(value):
    """JSON's name for the type of a parsed value, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def write_json(path, obj):
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def write_logits_csv(path, logits):
    """Logits as the seed wrote them: one row per example, one column per label, no header."""
    logits = np.asarray(logits, dtype=np.float64)
    with atomic_write(path) as f:
        for row in logits.reshape(len(logits), -1):
            f.write(",".join(repr(float(x)) for x in row) + "\n")


def write_csv(path, columns):
    """A CSV file with a header, from {column name: values} (numbers as repr writes them)."""
    import csv

    with atomic_write(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(list(columns))
        writer.writerows(zip(*[[repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in values]
                               for values in columns.values()]))
