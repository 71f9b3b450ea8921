"""Where outputs cannot be written, every writing command says so in one line (exit status 2) before
any work, a full disk names the file and leaves no partial one, a failed run marks its folder, and
two writers never share one folder.

Read-only mounts, immutable folders and small (full) disks need root; those cases skip elsewhere.
"""
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import FIXTURES, REPO, RTE, TRAIN_PY, refused_by, rte_args
from stilts import run_folder
from stilts.cli import run as stilts_run
from stilts.cli import evaluate, format_for_glue, make_submission
from stilts.cli.train import main as train_main
from stilts.errors import StiltsError
from stilts.io import check_writable_folder, write_logits_csv
from stilts.study import Run


def snapshot(folder):
    """Every file under `folder` with its bytes: 'nothing on disk changed' is this staying equal."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def root_only(command, why):
    if os.geteuid() != 0 or subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip(f"needs root: {why}")


# ----------------------------------------------------------------------------- places that cannot be written
@pytest.fixture(params=["a file", "read-only mount", "immutable folder", "no permission"])
def unwritable(request, tmp_path):
    """(output folder, words the message must hold): a place no command can write into."""
    kind = request.param
    place = tmp_path / "place"
    if kind == "a file":
        place.write_text("a user's file\n")
        yield place, "is a file, not a folder"
        return
    place.mkdir()
    if kind == "read-only mount":
        root_only(["mount", "--bind", "-o", "ro", str(place), str(place)], "a read-only bind mount")
        yield place, "read-only file system"
        subprocess.run(["umount", str(place)], check=True)
    elif kind == "immutable folder":
        root_only(["chattr", "+i", str(place)], "chattr +i")
        yield place, "immutable folder"
        subprocess.run(["chattr", "-i", str(place)], check=True)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere: test_no_permission_for_a_non_root_user covers this case")
        place.chmod(0o555)
        yield place, "no permission"
        place.chmod(0o755)


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """A submission input folder (IN/rte/test_preds.csv) and a dev predictions file for rte."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "IN" / "rte").mkdir(parents=True)
    write_logits_csv(folder / "IN" / "rte" / "test_preds.csv", np.zeros((40, 2)))
    write_logits_csv(folder / "val_preds.csv", np.zeros((40, 2)))
    return folder


def writing_commands(tiny_bert_dir, inputs, out):
    """Each writing command, aimed at `out`: (name, main, argv)."""
    train = rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE)
    return [
        ("glue/train.py", train_main, train),
        ("features cache", train_main, rte_args(tiny_bert_dir, inputs / "train-out", "--do_val", "--data_dir", RTE,
                                                "--features_cache_dir", out)),
        ("stilts-run", stilts_run.main, ["--intermediate", "mnli", "--targets", "rte", "--restarts", "1",
                                       "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", out]),
        ("make_submission", make_submission.main, [inputs / "IN", out]),
        ("format_for_glue", format_for_glue.main, ["-i", inputs / "IN", "-o", out]),
        ("format_for_glue -t", format_for_glue.main, ["-t", "rte", "-i", inputs / "IN" / "rte", "-o", out]),
        ("evaluate --output-path", evaluate.main, ["--task-name", "rte", "--pred-file-path",
                                                   inputs / "val_preds.csv", "--task-data-dir", RTE,
                                                   "--output-path", out / "metrics.json"]),
    ]


def test_every_writing_command_refuses_an_unwritable_place(unwritable, tiny_bert_dir, run_inputs, capsys):
    out, reason = unwritable
    before = snapshot(run_inputs)
    for name, main, argv in writing_commands(tiny_bert_dir, run_inputs, out):
        err = refused_by(capsys, main, argv)
        assert str(out) in err and reason in err, (name, err)
    assert snapshot(run_inputs) == before  # nothing written, nor the train run's folder created


def test_no_permission_for_a_non_root_user(tmp_path):
    """The folder check as user nobody (run as root: seteuid), or as this user where it is not root."""
    public = tempfile.mkdtemp()  # a folder nobody can reach: /tmp/pytest-of-root is private to root
    try:
        os.chmod(public, 0o755)
        place = os.path.join(public, "read-only")
        os.mkdir(place, 0o555)
        with (as_user(65534) if os.geteuid() == 0 else contextlib.nullcontext()):
            with pytest.raises(StiltsError, match=r"out: cannot write there \(--output_dir\): no permission"):
                check_writable_folder(os.path.join(place, "out"), "--output_dir")
    finally:
        os.chmod(os.path.join(public, "read-only"), 0o755)
        shutil.rmtree(public)


@contextlib.contextmanager
def as_user(uid):
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_evaluate_does_not_create_the_folder_of_its_output(run_inputs, tmp_path, capsys):
    argv = ["--task-name", "rte", "--pred-file-path", run_inputs / "val_preds.csv", "--task-data-dir", RTE]
    err = refused_by(capsys, evaluate.main, argv + ["--output-path", tmp_path / "missing" / "metrics.json"])
    assert f"{tmp_path / 'missing'} does not exist" in err
    err = refused_by(capsys, evaluate.main, argv + ["--output-path", tmp_path])
    assert f"{tmp_path}: is a folder; --output-path names the file to write" in err
    assert not (tmp_path / "missing").exists()


def test_make_submission_without_its_input_folder_keeps_the_old_zip(tmp_path, capsys):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "submission.zip").write_bytes(b"an earlier submission")
    err = refused_by(capsys, make_submission.main, [tmp_path / "no-such-IN", out])
    assert f"{tmp_path / 'no-such-IN'}: input folder not found" in err
    assert snapshot(out) == {"submission.zip": b"an earlier submission"}
    script = subprocess.run(["bash", os.path.join(REPO, "scripts", "make_submission.sh"), str(tmp_path / "nope"),
                             str(out)], capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert script.returncode == 2 and "input folder not found" in script.stderr
    assert snapshot(out) == {"submission.zip": b"an earlier submission"}


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a tiny model's checkpoint (several MB) does not fit, small files do."""
    disk = tmp_path / "disk"
    disk.mkdir()
    root_only(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], "a small tmpfs")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk):
    """Write a filler file until the disk is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)


def test_full_disk_during_a_checkpoint(small_disk, tiny_bert_dir, capsys):
    out = small_disk / "run"
    train_main(rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE))
    earlier = snapshot(out)
    err = refused_by(capsys, train_main, rte_args(tiny_bert_dir, out, "--do_val", "--do_save", "--force-overwrite",
                                               "--data_dir", RTE))
    assert f"{out / 'all_state.p'}: cannot write: the disk is full" in err
    files = snapshot(out)
    assert not [name for name in files if name.endswith(".tmp")], "a partial file was left"
    assert {name: files[name] for name in ("val_preds.csv", "val_metrics.json")} == \
        {name: earlier[name] for name in ("val_preds.csv", "val_metrics.json")}
    status = json.loads(files["run_status.json"])
    assert status["state"] == "failed" and "all_state.p: cannot write: the disk is full" in status["error"]
    assert not Run("rte", str(out), [], ("val_metrics.json",)).finished()


def test_full_disk_during_the_features_cache(small_disk, tiny_bert_dir, tmp_path, capsys):
    fill(small_disk)
    err = refused_by(capsys, train_main, rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                                               "--features_cache_dir", small_disk))
    assert f"{small_disk / 'features'}" in err and "cannot write: the disk is full" in err
    assert sorted(snapshot(small_disk)) == ["filler"]
    assert not (tmp_path / "out").exists()


def test_full_disk_during_predictions_keeps_the_earlier_file(small_disk):
    path = small_disk / "val_preds.csv"
    write_logits_csv(path, np.ones((3, 2)))
    earlier = path.read_bytes()
    fill(small_disk)
    with pytest.raises(StiltsError, match="val_preds.csv: cannot write: the disk is full"):
        write_logits_csv(path, np.zeros((5000, 2)))
    assert path.read_bytes() == earlier and sorted(os.listdir(small_disk)) == ["filler", "val_preds.csv"]


def test_disk_errors_are_worded_for_their_file():
    from stilts.io import cannot_write
    error = cannot_write("/x/all_state.p", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert str(error).startswith("/x/all_state.p: cannot write: the disk is full (No space left on device)")
    assert cannot_write("/x/a", OSError(errno.EIO, "I/O error")) is None  # not the user's to fix


# ----------------------------------------------------------------------------- a run that fails after its checks
def test_failed_run_marks_its_folder(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train_main(rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE))
    assert run_folder.state(out) == "finished"
    finished = Run("rte", str(out), [], ("val_metrics.json",))
    assert finished.finished()

    def crash(self, *args, **kwargs):
        raise StiltsError("the learning rate schedule broke down")

    monkeypatch.setattr("stilts.trainer.Trainer.train", crash)
    err = refused_by(capsys, train_main, rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--force-overwrite",
                                               "--data_dir", RTE))
    assert "the learning rate schedule broke down" in err
    status = json.loads((out / "run_status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "the learning rate schedule broke down"
    assert json.loads((out / "args.json").read_text())["do_train"], "args.json is the failed run's"
    assert not finished.finished(), "stilts-run must redo a folder whose last run failed"


# ----------------------------------------------------------------------------- two writers, one folder
def start_train(out, model, *extra):
    return subprocess.Popen([sys.executable, TRAIN_PY, *rte_args(model, out, "--do_train", "--do_val",
                                                                  "--data_dir", RTE, "--force-overwrite", *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_lock(folder, pid, timeout=120):
    """Until process `pid` holds the folder's lock (its lock file names it)."""
    deadline = time.monotonic() + timeout
    lock = os.path.join(folder, run_folder.LOCK_NAME)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with open(lock) as f:
                if json.load(f)["pid"] == pid:
                    return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took {lock}")


def test_second_writer_is_refused_and_a_killed_one_does_not_block(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = start_train(out, tiny_bert_dir, "--seed", "11", "--num_train_epochs", "20")
    try:
        wait_for_lock(out, first.pid)
        err = refused_by(capsys, train_main, rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--force-overwrite",
                                                   "--data_dir", RTE, "--seed", "22"))
        assert f"{out}: in use by process {first.pid} (" in err and "glue/train.py" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock went with it: the next run goes ahead and its files are all its own.
    train_main(rte_args(tiny_bert_dir, out, "--do_val", "--force-overwrite", "--data_dir", RTE, "--seed", "33"))
    assert json.loads((out / "args.json").read_text())["seed"] == 33
    assert run_folder.state(out) == "finished"


def test_second_study_on_one_folder_is_refused(tiny_bert_dir, tmp_path, capsys):
    study = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from stilts import run_folder\n"
                               "with run_folder.locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(study)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = refused_by(capsys, stilts_run.main, ["--intermediate", "mnli", "--targets", "rte", "--restarts", "1",
                                              "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES,
                                              "--output_dir", study])
        assert f"{study}: in use by process {holder.pid}" in err
        assert sorted(os.listdir(study)) == [run_folder.LOCK_NAME]  # the holder's
    finally:
        holder.kill()
        holder.wait()


def test_refused_run_removes_the_folders_it_made(tiny_bert_dir, tmp_path, capsys):
    """A checkpoint refused after the folder was taken: no runs/new/a, and no runs/new either."""
    out = tmp_path / "runs" / "new" / "a"
    refused_by(capsys, train_main, rte_args(tiny_bert_dir, out, "--do_val", "--data_dir", RTE,
                                            "--bert_load_mode", "model_only", "--bert_load_path", RTE + "/dev.tsv"))
    assert os.listdir(tmp_path) == []
