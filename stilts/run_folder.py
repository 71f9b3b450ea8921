"""An output folder in use: one writer at a time, and a record of how its last run ended.

A command that writes into a folder (glue/train.py's `--output_dir`, a stilts-run study folder)
holds an exclusive lock on `<folder>/.stilts.lock` while it runs, so a second process is refused
instead of mixing its files with the first one's. The lock is the kernel's (`flock`): it ends with
the process that holds it, so a killed run never blocks the next one (its lock file stays behind,
unlocked, until the next run takes it). The lock file names its holder (pid, command, start time)
for the message that refuses the second process.

`run_status.json` says how the run that last wrote into the folder stands: "running" while it
writes, "finished" once every output is written, "failed" (with the error) when it stopped early.
A folder whose state is not "finished" mixes files of more than one run, or lacks some: stilts-run
redoes it, and a user sees it at a glance. Folders written before this file existed have none and
are judged by their outputs alone. A finished run also records there a digest of each split it read
(`inputs`), so that a study can tell a run made on data that changed since.
"""
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import sys

from stilts.errors import StiltsError
from stilts.io import cannot_write, read_json, write_json

LOCK_NAME = ".stilts.lock"
STATUS_NAME = "run_status.json"
LOG_NAME = "stilts-run.log"  # what stilts-run's launchers keep of a run's output, before the run starts
IN_USE = "in use by"  # how a refusal of a held folder reads: stilts-run's attempts wait on a cluster when they see it


def user_files(folder):
    """What `folder` holds besides its lock file and stilts-run's log (an empty list for a missing folder)."""
    if not os.path.isdir(folder):
        return []
    return [name for name in os.listdir(folder) if name not in (LOCK_NAME, LOG_NAME)]


def check_empty(folder, flag="--output_dir"):
    if user_files(folder):
        raise StiltsError(f"{folder}: output folder exists and is not empty (pass --force-overwrite to "
                          f"write into it, or choose another {flag})")


@contextlib.contextmanager
def locked(folder, flag="--output_dir", must_be_empty=False):
    """Create `folder` if needed and hold its lock for the `with` block.

    must_be_empty is checked again under the lock: another process may have filled the folder
    between the first check and now. The lock file is removed on the way out, and so is a folder
    this call created and nobody wrote into: a refused command leaves the disk as it found it.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StiltsError(f"{folder}: exists and is a file, not a folder ({flag})")
    created = _missing_folders(folder)
    lock_path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise (cannot_write(lock_path, e) or e) from None
    fd = _take(lock_path, folder, flag)
    try:
        if must_be_empty:
            check_empty(folder, flag)
        with contextlib.suppress(OSError):  # who holds it, for the message to a second process: best effort
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": shlex.join(sys.argv),
                                     "since": _now()}).encode() + b"\n")
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while held: the next process makes a new one
            os.remove(lock_path)
            for made in created:  # innermost first; a folder someone wrote into stays
                if os.listdir(made):
                    break
                os.rmdir(made)
        os.close(fd)


def _missing_folders(folder):
    """The folders makedirs(folder) would create, innermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _take(lock_path, folder, flag):
    """Open and lock the lock file; its descriptor. A holder removes the file when it ends, so the
    file locked must still be the one at lock_path, else it is taken again."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise (cannot_write(lock_path, e) or e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StiltsError(f"{folder}: {IN_USE} {_holder(lock_path)}; wait for it to end, or choose "
                              f"another {flag}") from None
        except OSError as e:  # a file system without locks (some NFS or FUSE mounts)
            os.close(fd)
            raise StiltsError(f"{folder}: cannot lock {LOCK_NAME} there ({e.strerror}): this file system has no "
                              f"file locks; choose another {flag}") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def holder(folder):
    """Who holds the folder's lock now ('process 123 (...)'), or None when nobody does."""
    lock_path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(lock_path)
    except OSError:
        return None
    finally:
        os.close(fd)


def _holder(lock_path):
    """'process 123 (glue/train.py ..., since ...)' from the lock file, as far as it can be read."""
    try:
        with open(lock_path, encoding="utf-8") as f:
            holder = json.load(f)
        command = holder["command"] if len(holder["command"]) <= 100 else holder["command"][:97] + "..."
        return f"process {holder['pid']} ({command}, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "another process"


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def mark(folder, state, error=None, inputs=None):
    """Record the run's state in run_status.json (atomically, like every output)."""
    status = {"state": state, "pid": os.getpid(), "time": _now()}
    if error is not None:
        status["error"] = error
    if inputs is not None:
        status["inputs"] = inputs
    write_json(os.path.join(folder, STATUS_NAME), status)


def _status(folder):
    """run_status.json's object; None without one, {} when it cannot be read (damaged: not a record)."""
    path = os.path.join(folder, STATUS_NAME)
    if not os.path.lexists(path):
        return None
    try:
        return read_json(path, dict)
    except StiltsError:
        return {}


def state(folder):
    """The recorded state ("running", "finished", "failed"), None without a status file, "unknown" when
    it cannot be read."""
    status = _status(folder)
    if status is None:
        return None
    value = status.get("state", "unknown")
    return value if isinstance(value, str) else "unknown"


def recorded_inputs(folder):
    """{split key: digest} of the data the finished run read; None when it recorded none."""
    inputs = (_status(folder) or {}).get("inputs")
    return inputs if isinstance(inputs, dict) else None


def dev_metrics(folder):
    """The dev metrics of a run's val_metrics.json, {name: number}, or one line saying what is wrong."""
    path = os.path.join(folder, "val_metrics.json")
    metrics = read_json(path, dict).get("metrics")
    if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise StiltsError(f"{path}: its 'metrics' should be an object of numbers")
    return metrics


@contextlib.contextmanager
def recording(folder, inputs=None):
    """Mark the folder "running" now, then "finished" (with the digests of the splits read, `inputs`)
    or "failed" by how the block ends."""
    mark(folder, "running")
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(Exception):  # on a full disk the mark cannot be written: "running" stays
            mark(folder, "failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    mark(folder, "finished", inputs=inputs)
