"""One run of a study carried to its end, the same way whichever engine started it (stilts.launchers).

A run is one stilts-train process: `attempt` skips it when it finished before, resumes it from its
newest periodic checkpoint (`--train_save_every`, with a save mode that keeps the training state)
or redoes its unfinished folder, and tries again up to `max_retries` times; bad input (exit status
2) is not tried again. Its output goes to `<run folder>/stilts-run.log`, each try opened by its
command line.
"""
import ctypes
import dataclasses
import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from stilts import run_folder

LOG_NAME = run_folder.LOG_NAME
TRAIN_MODULE = ["-m", "stilts.cli.train"]
PERIODIC = re.compile(r"all_state___epoch(\d+)___batch(\d+)\.(p|safetensors)$")


@dataclasses.dataclass
class Attempts:
    """How every run is tried: the same on every engine (pickled to submitit and Ray workers)."""
    max_retries: int = 0
    processes: int = 1          # > 1: torchrun with this many processes (--gpus_per_run)
    preemptible: bool = False   # in a SLURM job: a try ended by SIGTERM is the job being requeued


BAD_INPUT = 2  # stilts-train's exit status for bad input: trying again would fail the same way


@dataclasses.dataclass
class Outcome:
    status: str                 # "finished" (ran now), "skipped" (finished before), "failed", "not started"
    seconds: float = 0.0
    tries: int = 0
    error: str = ""
    where: str = ""             # which job or node ran it, when the engine says (e.g. "SLURM job 12_3")

    @property
    def ok(self):
        return self.status in ("finished", "skipped")


def log_path(run):
    return os.path.join(run.folder, LOG_NAME)


def newest_checkpoint(folder):
    """The latest all_state___epochE___batchB.p (or .safetensors) a run left, or None."""
    names = glob.glob(os.path.join(glob.escape(folder), "all_state___epoch*___batch*.*"))
    found = [(tuple(map(int, PERIODIC.search(p).groups()[:2])), p) for p in names if PERIODIC.search(p)]
    return max(found)[1] if found else None


def command_for(run, attempts):
    """The stilts-train command that continues `run` from where its folder stands."""
    argv = list(run.argv)
    checkpoint = newest_checkpoint(run.folder) if run.resumable else None
    if checkpoint:  # the same training, continued: weights, optimizer, schedule, data position
        argv = _without(argv, "--bert_load_mode", "--bert_load_path") + [
            "--bert_load_mode", "state_all", "--bert_load_path", checkpoint]
    if run_folder.user_files(run.folder):
        argv.append("--force-overwrite")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                 str(attempts.processes)] if attempts.processes > 1 else [sys.executable])
    return launcher + TRAIN_MODULE + argv


def _without(argv, *flags):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in flags:
            skip = True
        else:
            out.append(item)
    return out


def attempt(run, attempts, env=None, stop=None):
    """Carry `run` to its end (see the module docstring); never raises for a failing run. `stop`
    (a local study's Stop) ends it early when the study is interrupted."""
    if attempts.preemptible:
        wait_while_held(run)
    if run.finished():
        return Outcome("skipped")
    started, error = time.monotonic(), ""
    for number in range(1, attempts.max_retries + 2):
        if stop is not None and stop.is_set():
            return Outcome("failed", time.monotonic() - started, number - 1, "interrupted")
        command = command_for(run, attempts)
        os.makedirs(run.folder, exist_ok=True)
        with open(log_path(run), "a", encoding="utf-8") as log:
            log.write(f"{_line_break(log_path(run))}# stilts-run, try {number}: {shlex.join(command)}\n")
            log.flush()
            try:
                code = _run(command, log, env, stop)
            except SystemExit:  # submitit ends the job to requeue it (USR2: its time limit is near, or pre-empted)
                log.write(f"{_line_break(log_path(run))}# stilts-run: the job is being requeued (its time limit "
                          f"is near, or it is pre-empted); the requeued job continues this run\n")
                raise
        if code == 0 and run.finished():
            return Outcome("finished", time.monotonic() - started, number)
        if attempts.preemptible and code == -signal.SIGTERM:
            wait_for_requeue(run)
        error = _last_error(run) or (f"exit status {code}" if code else "ended without writing its outputs")
        if attempts.preemptible and code == BAD_INPUT and (run_folder.IN_USE in error or
                                                           written_meanwhile(run, command)):
            wait_while_held(run)  # an older job of this run took its folder first: look again once it let go
            return attempt(run, attempts, env, stop)
        if code == BAD_INPUT or (stop is not None and stop.is_set()):  # bad input fails again; or stopped
            return Outcome("failed", time.monotonic() - started, number, error)
    return Outcome("failed", time.monotonic() - started, attempts.max_retries + 1, error)


def written_meanwhile(run, command):
    """Whether another process wrote into the run's folder after `command` was made for it (a try
    refused for bad input writes nothing): on a cluster, the job of a killed stilts-run, which may
    even have finished the run."""
    return "--force-overwrite" not in command and bool(run_folder.user_files(run.folder))


def wait_while_held(run, poll_seconds=5):
    """On a cluster a run's folder may still be held by the job of an earlier stilts-run that was
    killed (its jobs live on): wait for that job to end it, rather than fail on the held folder. (It
    may also take the folder just after this looked: a try refused as "in use" waits too.)"""
    holder = run_folder.holder(run.folder)
    if holder is None:
        return
    with open(log_path(run), "a", encoding="utf-8") as log:
        log.write(f"{_line_break(log_path(run))}# stilts-run: waiting for {holder}, which holds this run's "
                  f"folder (a job of an earlier stilts-run?)\n")
    while run_folder.holder(run.folder) is not None:
        time.sleep(poll_seconds)


def wait_for_requeue(run):
    """SLURM is ending the job (pre-empted, or requeued by `scontrol requeue` or at its time limit): SIGTERM
    now, SIGKILL after its grace period. That is no failed try: no new try starts and the job writes no
    outcome, so the study waits for the requeued job, which carries the run on from its newest periodic
    checkpoint. Never returns."""
    with open(log_path(run), "a", encoding="utf-8") as log:
        log.write(f"{_line_break(log_path(run))}# stilts-run: the job is being ended (SIGTERM: pre-empted or "
                  f"requeued); the requeued job continues this run\n")
    while True:
        time.sleep(60)


def _line_break(path):
    """A newline when the log ends inside a line (a progress bar's last \\r update), so that the next
    header starts a line of its own."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return ""
        f.seek(-1, os.SEEK_END)
        return "" if f.read(1) == b"\n" else "\n"


class Stop:
    """A local study being interrupted: no new try starts, and the runs in progress are ended."""

    def __init__(self):
        self.event, self.lock, self.live = threading.Event(), threading.Lock(), set()

    def is_set(self):
        return self.event.is_set()

    def halt(self):
        self.event.set()
        with self.lock:
            for process in self.live:
                _end(process)


def _run(command, log, env, stop=None):
    """The process's exit status; its output goes to the log (the study's terminal gets a line per run).
    The run is its own process group (torchrun and its workers), ended with SIGTERM, and gets SIGTERM
    too when the thread that started it ends, even if the launcher is killed: a run left behind would
    hold its folder's lock against the repeated study."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True, preexec_fn=_die_with_parent)
    if stop is not None:
        with stop.lock:
            stop.live.add(process)
            if stop.is_set():  # halted between our check and the start: end it as halt() would
                _end(process)
    try:
        return process.wait()
    except BaseException:  # interrupted here (one run at a time): the run ends with us
        _end(process)
        raise
    finally:
        if stop is not None:
            with stop.lock:
                stop.live.discard(process)


def _end(process):
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    process.wait()


def _parent_death_signal():
    """Linux's prctl, looked up here: the forked child only calls it (no imports, no locks)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _parent_death_signal()
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)  # torchrun passes SIGTERM on to its workers


def _last_error(run):
    """The error line a failed stilts-train printed (its last line naming an error), for the report."""
    try:
        with open(log_path(run), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if "error:" in line or "Error" in line]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


