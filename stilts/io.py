"""Atomic file writes and safe checkpoint reads.

Every checkpoint, prediction and metrics file goes through `atomic_write`: the bytes land in a
temporary file in the destination folder, are fsync'ed, then renamed over the target. A crash
or a kill mid-write leaves the previous file intact, never a half-written one.
"""
import contextlib
import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile

import numpy as np

from stilts.errors import StiltsError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open a temporary file next to `path`; on success fsync it and rename it onto `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path, obj):
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def write_logits_csv(path, logits):
    """Logits as the seed wrote them: one row per example, one column per label, no header."""
    logits = np.asarray(logits, dtype=np.float64)
    with atomic_write(path) as f:
        for row in logits.reshape(len(logits), -1):
            f.write(",".join(repr(float(x)) for x in row) + "\n")


def save_checkpoint(path, obj):
    import torch  # imported here: the submission tools use this module and need no torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path):
    """Load a `.p`/`.bin` checkpoint without executing code: tensors and plain containers only."""
    import torch

    if not os.path.isfile(path):
        raise StiltsError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about plain pickles before refusing them below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph of advice; the line naming what was refused is the useful one.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        details = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))]
        reason = (details or lines or [type(e).__name__])[0]
        raise StiltsError(f"{path}: refused to load: it holds objects other than tensors and plain "
                          f"containers, which could run code ({reason[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, io.UnsupportedOperation) as e:
        raise StiltsError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}") from None
