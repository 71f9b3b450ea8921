"""Carrying out a study's runs: where they run, in what order, and what happens when one fails.

Each run is one stilts-train process, and `attempt` carries it to its end the same way whichever
engine started it: skip it when it finished before, resume it from its newest periodic checkpoint
(`--train_save_every`, with a save mode that keeps the training state) or redo its unfinished
folder, and try again up to `max_retries` times. Its output goes to `<run folder>/stilts-run.log`.

The engines spread the runs; none of them is written here:
  local     a pool of `--jobs` threads, each waiting on its run's process (concurrent.futures), one
            GPU (or `--gpus_per_run`, then torchrun) per run, or the CPU cores divided between runs;
  submitit  a SLURM job array per stage (stage A, then the target runs), requeued on pre-emption
            and time-outs (submitit's checkpoint protocol), or submitit's local executor;
  ray       a Ray task per run, needing its stage A's task (Ray resolves the dependency).
A target run starts only after its intermediate's stage A finished; a run whose stage A failed
is not started, and is reported with the failed ones.
"""
import concurrent.futures
import ctypes
import dataclasses
import glob
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from stilts import run_folder
from stilts.errors import StiltsError

LOG_NAME = run_folder.LOG_NAME
TRAIN_MODULE = ["-m", "stilts.cli.train"]
PERIODIC = re.compile(r"all_state___epoch(\d+)___batch(\d+)\.p$")


@dataclasses.dataclass
class Attempts:
    """How every run is tried: the same on every engine (pickled to submitit and Ray workers)."""
    max_retries: int = 0
    processes: int = 1          # > 1: torchrun with this many processes (--gpus_per_run)


BAD_INPUT = 2  # stilts-train's exit status for bad input: trying again would fail the same way


@dataclasses.dataclass
class Outcome:
    status: str                 # "finished" (ran now), "skipped" (finished before), "failed", "not started"
    seconds: float = 0.0
    tries: int = 0
    error: str = ""

    @property
    def ok(self):
        return self.status in ("finished", "skipped")


def log_path(run):
    return os.path.join(run.folder, LOG_NAME)


def newest_checkpoint(folder):
    """The latest all_state___epochE___batchB.p a run left, or None."""
    found = [(tuple(map(int, PERIODIC.search(p).groups())), p)
             for p in glob.glob(os.path.join(glob.escape(folder), "all_state___epoch*___batch*.p")) if PERIODIC.search(p)]
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
            code = _run(command, log, env, stop)
        if code == 0 and run.finished():
            return Outcome("finished", time.monotonic() - started, number)
        error = _last_error(run) or (f"exit status {code}" if code else "ended without writing its outputs")
        if code == BAD_INPUT or (stop is not None and stop.is_set()):  # bad input fails again; or stopped
            return Outcome("failed", time.monotonic() - started, number, error)
    return Outcome("failed", time.monotonic() - started, attempts.max_retries + 1, error)


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


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One line per run that starts and per run that ends (its time and dev score): runs done /
    running / failed, and the time left. The estimate sums, over the runs left, the mean time of the
    finished runs of the same kind (stage A or target run, of the same task), else what the machine's
    recorded pace (`pace()`, stilts.pace) gives for the run's work, else the mean of the same stage;
    divided by the runs that run at once (`parallel`, else the run-seconds finished per second of wall
    time so far). Engines call it from their threads: a lock keeps the counts whole."""

    def __init__(self, runs, report=print, parallel=None, pace=lambda: None):
        self.runs, self.report, self.lock, self.parallel = list(runs), report, threading.Lock(), parallel
        self.pace = pace
        self.total = len(self.runs)
        self.done = self.failed = self.running = 0
        self.seconds = {}  # run folder -> how long it took, of the runs that ran now
        self.ended = set()
        self.started = time.monotonic()

    def start(self, run=None, why=None):
        with self.lock:
            self.running += 1
            if run is not None:
                what = f"redoing the unfinished run in {run.folder} ({why})" if why else "start"
                self.report(f"stilts-run: {run.label}: {what} (log: {log_path(run)})")

    def end(self, run, outcome):
        with self.lock:
            if outcome.status in ("finished", "failed"):
                self.running = max(0, self.running - 1)
            self.done += outcome.ok
            self.failed += not outcome.ok
            self.ended.add(run.folder)
            if outcome.status == "finished":
                self.seconds[run.folder] = outcome.seconds
            what = {"finished": f"done in {format_seconds(outcome.seconds)}{_score(run)}", "skipped": "skip (finished)",
                    "failed": f"FAILED after {outcome.tries} tries ({outcome.error}); log: {log_path(run)}",
                    "not started": "not started: its stage A failed"}[outcome.status]
            left = self.estimate()
            estimate = f", about {format_seconds(left)} left" if left else ""
            self.report(f"stilts-run: {run.label}: {what} [{self.done}/{self.total} done, {self.running} running, "
                        f"{self.failed} failed{estimate}]")

    def estimate(self):
        """Seconds left, or None before any run of a kind that is left has finished."""
        timed = [run for run in self.runs if run.folder in self.seconds]
        left = [run for run in self.runs if run.folder not in self.ended]
        if not timed or not left:
            return None
        expected, pace = 0.0, self.pace()
        for run in left:
            alike = [r for r in timed if _kind(r) == _kind(run)]
            if not alike and pace is not None and run.work:
                expected += pace.seconds(*run.work)
                continue
            alike = alike or [r for r in timed if _kind(r)[0] == _kind(run)[0]] or timed
            expected += sum(self.seconds[r.folder] for r in alike) / len(alike)
        elapsed = time.monotonic() - self.started
        at_once = self.parallel or max(1.0, sum(self.seconds.values()) / max(elapsed, 1e-9))
        return expected / max(1.0, min(at_once, len(left)))


def _kind(run):
    """(stage, task): runs of one kind take about as long."""
    return ("stage A" if run.after is None and not run.arm else "target", run.task)


def _score(run):
    """', dev acc 0.6534': the finished run's dev score, for its line."""
    try:
        return f", dev {run.metric} {run_folder.dev_metrics(run.folder)[run.metric]:.4f}" if run.metric else ""
    except (StiltsError, KeyError):
        return ""


def format_seconds(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def not_started(run, outcomes):
    """Whether a run must not start: its stage A did not end well."""
    return run.after is not None and not outcomes[run.after.folder].ok


# ---------------------------------------------------------------------------------------------
# The engines: each returns {run folder: Outcome}


def launch_local(stage_a, runs, attempts, jobs=1, gpus_per_run=0, report=print, pace=lambda: None):
    """A pool of `jobs` threads, each waiting on one run's process. Runs start in the plan's order
    (every stage A first), a target run once its stage A finished."""
    devices = visible_gpus() if gpus_per_run else []
    groups = queue.Queue()  # the GPU sets free for a run
    for g in range(len(devices) // gpus_per_run if gpus_per_run else 0):
        groups.put(",".join(devices[g * gpus_per_run:(g + 1) * gpus_per_run]))
    jobs = min(jobs, groups.qsize()) if gpus_per_run else jobs
    env = dict(os.environ)
    if not gpus_per_run and jobs > 1 and "OMP_NUM_THREADS" not in env:  # the cores, divided between the runs
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    progress, stop = Progress(stage_a + runs, report, parallel=jobs, pace=pace), Stop()

    def one(run):
        run_env = dict(env)
        group = groups.get() if gpus_per_run else None
        if group is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = group
        try:
            why = run.unfinished()
            if why:
                progress.start(run, why if run_folder.user_files(run.folder) else None)
            return attempt(run, attempts, run_env, stop)
        finally:
            if group is not None:
                groups.put(group)

    order, outcomes, in_flight = stage_a + runs, {}, {}
    pool = concurrent.futures.ThreadPoolExecutor(jobs)
    try:
        while len(outcomes) < len(order):
            for run in order:  # start what may start, in order, up to `jobs` at a time
                if len(in_flight) >= jobs:
                    break
                if run.folder in outcomes or run.folder in in_flight.values():
                    continue
                if run.after is not None and run.after.folder not in outcomes:
                    continue
                if not_started(run, outcomes):
                    outcomes[run.folder] = Outcome("not started")
                    progress.end(run, outcomes[run.folder])
                    continue
                in_flight[pool.submit(one, run)] = run.folder
            if not in_flight:
                continue
            finished, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                folder = in_flight.pop(future)
                outcomes[folder] = future.result()
                progress.end(next(r for r in order if r.folder == folder), outcomes[folder])
    except BaseException:  # Ctrl-C: no new run or try, the running ones ended
        stop.halt()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes


def visible_gpus():
    """The GPU ids this process may use ($CUDA_VISIBLE_DEVICES, else every GPU torch sees)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


class SubmititRun:
    """A run as a submitit job. On pre-emption or time-out submitit calls `checkpoint`, and the
    requeued job's attempt resumes the run from its newest periodic checkpoint."""

    def __init__(self, attempts):
        self.attempts = attempts

    def __call__(self, run):
        return attempt(run, self.attempts)

    def checkpoint(self, run):
        import submitit

        return submitit.helpers.DelayedSubmission(self, run)


def launch_submitit(stage_a, runs, attempts, folder, cluster=None, parameters=None, report=print, pace=lambda: None):
    """Stage A as one job array, then the target runs as another; waits for both."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**(parameters or {}))
    progress = Progress(stage_a + runs, report, pace=pace)
    outcomes = {}
    for wave in (stage_a, runs):
        todo = []
        for run in wave:
            if not_started(run, outcomes):
                outcomes[run.folder] = Outcome("not started")
                progress.end(run, outcomes[run.folder])
            elif run.finished():
                outcomes[run.folder] = Outcome("skipped")
                progress.end(run, outcomes[run.folder])
            else:
                todo.append(run)
        if not todo:
            continue
        with executor.batch():
            jobs = [executor.submit(SubmititRun(attempts), run) for run in todo]
        by_job = {job.job_id: run for job, run in zip(jobs, todo)}
        for run in todo:
            progress.start(run)
        for job in submitit.helpers.as_completed(jobs):
            run = by_job[job.job_id]
            try:
                outcomes[run.folder] = job.result()
            except Exception as e:  # the job itself died (cancelled, out of memory, node failure)
                first_line = (str(e).splitlines() or [""])[0][:200]
                outcomes[run.folder] = Outcome("failed", tries=1, error=f"{type(e).__name__}: {first_line}")
            progress.end(run, outcomes[run.folder])
    return outcomes


def _ray_run(run, attempts, stage_a_outcome):
    """A run as a Ray task; Ray starts it once its stage A's task returned that task's outcome."""
    if stage_a_outcome is not None and not stage_a_outcome.ok:
        return Outcome("not started")
    return attempt(run, attempts)


def launch_ray(stage_a, runs, attempts, address=None, cpus_per_run=1, gpus_per_run=0, report=print,
               pace=lambda: None):
    """Every run a Ray task (on the cluster at `address`, else a Ray started here for the study)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    try:
        task = ray.remote(_ray_run).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        refs = {run.folder: task.remote(run, attempts, None) for run in stage_a}
        for run in runs:
            refs[run.folder] = task.remote(run, attempts, refs[run.after.folder] if run.after else None)
        by_ref = {refs[run.folder]: run for run in stage_a + runs}
        slots = int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_run, 1)) or 1
        progress = Progress(stage_a + runs, report, parallel=slots, pace=pace)
        progress.running = len(by_ref)  # queued or running: Ray does not say which
        outcomes, pending = {}, list(by_ref)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            run = by_ref[finished[0]]
            try:
                outcomes[run.folder] = ray.get(finished[0])
            except Exception as e:  # the worker died
                outcomes[run.folder] = Outcome("failed", tries=1, error=f"{type(e).__name__}")
            if outcomes[run.folder].status in ("skipped", "not started"):
                progress.running -= 1
            progress.end(run, outcomes[run.folder])
        return outcomes
    finally:
        if started_here:
            ray.shutdown()
