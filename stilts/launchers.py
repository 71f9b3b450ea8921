"""Where a study's runs run: one small interface for every engine, and one driver for all of them.

An engine is an `Executor` (the shape of submitit's): `submit(runs)` hands it runs that may start
now and returns a `Job` per run, whose `result()` is the run's `Outcome`; `wait(jobs)` returns the
jobs that ended; `slots` says how many runs it takes at once (none: it queues them itself). Each run is carried to its end by `stilts.attempt.attempt` wherever it runs, so
resuming, redoing and retrying are the same on every engine. `carry_out` is the driver: it skips the
runs that finished before, submits a target run only once its stage A finished well (and reports
it not started when that failed), reports progress, and `run_study` writes the summary. Adding an
engine means writing one Executor class and naming it in EXECUTORS.

The engines spread the runs; none of them is written here:
  local     a pool of `--jobs` threads, each waiting on its run's process (concurrent.futures), one
            GPU (or `--gpus_per_run`, then torchrun) per run, or the CPU cores divided between runs;
  submitit  a SLURM job array per batch of runs that may start together (the stage A runs and the
            baseline runs, then each stage A's target runs), requeued on pre-emption and time-outs
            (submitit's checkpoint protocol), or submitit's local executor;
  ray       a Ray task per run, on a cluster or on a Ray started here for the study; Ray queues them,
            and runs a run again on another node when its node is lost (up to --max_retries).
"""
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import os
import queue
import shutil
import socket
import subprocess
import time
from typing import Callable, Optional

from stilts import run_folder
from stilts.attempt import Attempts, Outcome, Stop, attempt
from stilts.errors import StiltsError
from stilts.progress import Progress, format_seconds
from stilts.settings import setting


@dataclasses.dataclass(eq=False)
class Job:
    """A submitted run; `result()` is its Outcome. An engine that lost the run (a job cancelled, out
    of memory, a node gone) gives a failed Outcome, never an exception."""
    run: object
    handle: object                  # the engine's own: a Future, a submitit Job, a Ray ObjectRef
    get: Callable                   # handle -> Outcome
    where: str = ""                 # the engine's name for it, e.g. "SLURM job 12_3"

    def result(self):
        try:
            outcome = self.get(self.handle)
            return dataclasses.replace(outcome, where=outcome.where or self.where)
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0][:200]
            return Outcome("failed", tries=1, error=f"{type(e).__name__}: {first_line}" if first_line
                           else type(e).__name__, where=self.where)


class Executor:
    """One engine. `submit(runs)` starts runs that may start now and returns their jobs; `wait(jobs)`
    blocks until at least one of them ended and returns those; entering and leaving the executor starts
    and stops the engine."""
    slots: Optional[int] = None     # runs at once: the driver hands over no more (None: the engine queues)
    parallel: Optional[int] = None  # runs the engine runs at once, for the estimates (None: slots, else measured)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, runs):
        raise NotImplementedError

    def wait(self, jobs):
        raise NotImplementedError


class LocalExecutor(Executor):
    """A pool of `--jobs` threads here, each waiting on its run's process; runs start in the order
    they were submitted."""

    def __init__(self, launch, study_folder):
        self.gpus = launch.gpus_per_run or (1 if visible_gpus() else 0)
        self.attempts = Attempts(max_retries=launch.max_retries, processes=max(1, self.gpus))
        devices = visible_gpus() if self.gpus else []
        self.groups = queue.Queue()  # the GPU sets free for a run
        for g in range(len(devices) // self.gpus if self.gpus else 0):
            self.groups.put(",".join(devices[g * self.gpus:(g + 1) * self.gpus]))
        self.slots = min(launch.jobs, self.groups.qsize()) if self.gpus else launch.jobs
        self.env = dict(os.environ)
        if not self.gpus and self.slots > 1 and "OMP_NUM_THREADS" not in self.env:  # the cores, divided
            threads = str(max(1, (os.cpu_count() or 1) // self.slots))
            self.env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self.stop = Stop()

    def __enter__(self):
        self.pool = concurrent.futures.ThreadPoolExecutor(self.slots)
        return self

    def __exit__(self, kind, *rest):
        if kind is not None:  # Ctrl-C: no new run or try, the running ones ended
            self.stop.halt()
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.shutdown()
        return False

    def submit(self, runs):
        return [Job(run, self.pool.submit(self._one, run), concurrent.futures.Future.result) for run in runs]

    def _one(self, run):
        env = dict(self.env)
        group = self.groups.get() if self.gpus else None
        if group is not None:
            env["CUDA_VISIBLE_DEVICES"] = group
        try:
            return attempt(run, self.attempts, env, self.stop)
        finally:
            if group is not None:
                self.groups.put(group)

    def wait(self, jobs):
        done, _ = concurrent.futures.wait([job.handle for job in jobs],
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        return [job for job in jobs if job.handle in done]


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


class SubmititExecutor(Executor):
    """Each batch of runs one SLURM job array (or submitit's local executor); jobs in <study>/submitit."""
    poll_seconds = 2.0

    def __init__(self, launch, study_folder):
        import submitit

        cluster = None if launch.submitit_cluster == "auto" else launch.submitit_cluster
        self.executor = submitit.AutoExecutor(folder=os.path.join(study_folder, "submitit"), cluster=cluster)
        self.attempts = Attempts(max_retries=launch.max_retries, processes=max(1, launch.gpus_per_run),
                                 preemptible=self.executor.cluster == "slurm")
        extra = dict(item.split("=", 1) for item in launch.slurm_extra.split(",") if item.strip())
        parameters = {"timeout_min": launch.slurm_time, "cpus_per_task": launch.cpus,
                      "gpus_per_node": launch.gpus_per_run, "slurm_additional_parameters": extra}
        if launch.slurm_partition:
            parameters["slurm_partition"] = launch.slurm_partition
        if launch.slurm_array_parallelism:
            parameters["slurm_array_parallelism"] = launch.slurm_array_parallelism
        self.executor.update_parameters(**parameters)

    def submit(self, runs):
        import submitit

        try:  # submitit prints sbatch's complaint too: it goes into the one line instead
            with contextlib.redirect_stderr(io.StringIO()), self.executor.batch():
                jobs = [self.executor.submit(SubmititRun(self.attempts), run) for run in runs]
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            last_line = (str(e).strip().splitlines() or [""])[-1][:300]
            raise StiltsError(f"sbatch refused the jobs ({last_line}); check --slurm_partition, --slurm_time, "
                              f"--gpus_per_run, --cpus_per_run and --slurm_extra") from None
        kind = "SLURM" if self.executor.cluster == "slurm" else "submitit"
        return [Job(run, job, lambda job: job.result(), f"{kind} job {job.job_id}") for run, job in zip(runs, jobs)]

    def wait(self, jobs):
        while True:
            done = [job for job in jobs if job.handle.done()]
            if done:
                return done
            time.sleep(self.poll_seconds)


class RayExecutor(Executor):
    """Every run a Ray task, on the cluster at --ray_address, else on a Ray started here for the study."""

    def __init__(self, launch, study_folder):
        self.address, self.cpus, self.gpus = launch.ray_address, launch.cpus, launch.gpus_per_run
        self.attempts = Attempts(max_retries=launch.max_retries, processes=max(1, launch.gpus_per_run))
        self.node_retries = launch.max_retries  # a run whose node is lost runs again on another, as often

    def __enter__(self):
        if self.address is None or loopback(self.address):  # Ray binds 127.0.0.1 only, not every interface
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         **({} if self.address else {"num_cpus": os.cpu_count()}))
            except ConnectionError as e:  # no cluster, or one that would not take us
                first_line = (str(e).strip().splitlines() or ["cannot connect"])[0]
                raise StiltsError(f"--ray_address {self.address}: {first_line}; if the cluster uses token "
                                  f"authentication, set RAY_AUTH_MODE=token here (its token: ~/.ray/auth_token)") from None
        self.task = ray.remote(_attempt_on_ray).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                        max_retries=self.node_retries)
        self.parallel = int(ray.cluster_resources().get("CPU", 1) // max(self.cpus, 1)) or 1  # Ray queues the rest
        return self

    def __exit__(self, *exc):
        import ray

        if self.started_here:
            ray.shutdown()
        return False

    def submit(self, runs):
        import ray

        return [Job(run, self.task.remote(run, self.attempts), ray.get) for run in runs]

    def wait(self, jobs):
        import ray

        done, _ = ray.wait([job.handle for job in jobs], num_returns=1)
        return [job for job in jobs if job.handle in done]


def _attempt_on_ray(run, attempts):
    """A run as a Ray task; its outcome says which node ran it."""
    import ray

    return dataclasses.replace(attempt(run, attempts), where=f"Ray node {ray.get_runtime_context().get_node_id()[:8]}")


def check_answers(address):
    """Something listens at the Ray address: ray.init would otherwise wait minutes on a dead one."""
    host, _, port = address.split("://")[-1].rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        raise StiltsError(f"--ray_address {address}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise StiltsError(f"--ray_address {address}: nothing answers there ({e.strerror or e}); start the "
                          f"cluster (ray start --head), or leave the flag out to start a Ray here") from None


def check_partition(name):
    """SLURM knows the partition (sbatch would refuse every job of the study)."""
    try:
        shown = subprocess.run(["scontrol", "show", "partition", name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return  # no scontrol to ask: sbatch will say
    if shown.returncode != 0:
        why = (shown.stderr.strip().splitlines() or ["unknown partition"])[0]
        raise StiltsError(f"--slurm_partition {name}: {why}; `sinfo -s` lists the partitions")


def loopback(address):
    """Whether a Ray address ("HOST:PORT", "ray://HOST:PORT") is on this machine's loopback."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


EXECUTORS = {"local": LocalExecutor, "submitit": SubmititExecutor, "ray": RayExecutor}


@dataclasses.dataclass
class LaunchSettings:
    """stilts-run's flags of where the runs run, declared once: the command line is built from these
    fields (stilts.flags.add_flags), and __post_init__ checks them together."""
    launcher: str = setting("local: --jobs runs at a time here; submitit: SLURM job arrays (or submitit's local "
                            "executor); ray: Ray tasks", "local", choices=tuple(EXECUTORS))
    jobs: int = setting("local: runs at a time (CPU: the cores are divided)", 1)
    gpus_per_run: int = setting("GPUs per run (more than 1: torchrun inside the run); local default: 1 on a GPU "
                                "machine", 0)
    cpus_per_run: Optional[int] = setting("submitit and ray: CPU cores per run (default: 1 per GPU, else 1)", None)
    max_retries: int = setting("tries after a run's first failure", 1)
    submitit_cluster: str = setting("submitit's executor (auto: SLURM where sbatch exists, else local processes)",
                                    "auto", choices=("auto", "slurm", "local", "debug"))
    slurm_partition: Optional[str] = setting("the SLURM partition of the jobs (default: the cluster's)", None)
    slurm_time: int = setting("minutes a run's job may take", 60 * 24)
    slurm_array_parallelism: Optional[int] = setting("jobs of an array at once", None)
    slurm_extra: str = setting("more sbatch options, KEY=VALUE,KEY=VALUE (e.g. account=abc,qos=high)", "")
    ray_address: Optional[str] = setting("a running Ray cluster (default: start one here)", None)

    def __post_init__(self):
        for flag in ("jobs", "gpus_per_run", "cpus_per_run", "max_retries", "slurm_time", "slurm_array_parallelism"):
            value = getattr(self, flag)
            least = 0 if flag in ("gpus_per_run", "max_retries") else 1
            if value is not None and value < least:
                raise StiltsError(f"--{flag} {value}: must be at least {least}")
        if self.jobs > 1 and self.launcher != "local":
            raise StiltsError(f"--jobs is for --launcher local; {self.launcher} spreads the runs itself")
        if self.launcher == "local" and self.gpus_per_run and len(visible_gpus()) < self.gpus_per_run:
            raise StiltsError(f"--gpus_per_run {self.gpus_per_run}: this machine has {len(visible_gpus())} GPU(s) "
                              f"(CUDA_VISIBLE_DEVICES)")
        if self.launcher != "local" and importlib.util.find_spec(self.launcher) is None:
            raise StiltsError(f"--launcher {self.launcher} needs the {self.launcher} package: "
                              f"pip install 'stilts[{self.launcher}]'")
        try:
            dict(item.split("=", 1) for item in self.slurm_extra.split(",") if item.strip())
        except ValueError:
            raise StiltsError(f"--slurm_extra {self.slurm_extra!r}: expected KEY=VALUE,KEY=VALUE") from None
        if self.launcher == "ray" and self.ray_address not in (None, "auto", "local"):
            check_answers(self.ray_address)
        if self.launcher == "submitit" and self.slurm_partition and self.uses_slurm():
            check_partition(self.slurm_partition)

    def uses_slurm(self):
        return self.submitit_cluster == "slurm" or (self.submitit_cluster == "auto" and bool(shutil.which("sbatch")))

    @classmethod
    def from_flags(cls, flags):
        """The settings from the parsed command line (the flags of the same names)."""
        return cls(**{field.name: getattr(flags, field.name) for field in dataclasses.fields(cls)})

    def executor(self, study_folder):
        return EXECUTORS[self.launcher](self, study_folder)

    @property
    def cpus(self):
        return self.cpus_per_run or max(1, self.gpus_per_run)

    def run_device(self):
        """(does each run use a GPU, CPU threads of each run): what a run's recorded pace depends on."""
        import torch

        local = self.launcher == "local"
        gpu = bool(self.gpus_per_run or (local and torch.cuda.is_available()))
        return gpu, self.cpus_per_run or max(1, (os.cpu_count() or 1) // (self.jobs if local else 1))

    def at_once(self):
        """How many runs run at once, in words, and as a number for the estimates."""
        if self.launcher == "local":
            return f"{self.jobs} at a time", self.jobs
        return f"spread by {self.launcher}", 1


# ---------------------------------------------------------------------------------------------
# The driver


def carry_out(runs, executor, report=print, pace=lambda: None):
    """Every run to its end on `executor`; {run folder: Outcome}. Runs are handed over in their order
    as they may start, up to the executor's slots at a time: a run that finished before is skipped,
    a target run waits for its stage A and is not started when that failed. An engine that refuses
    the first runs (bad input) stops the study; one that refuses later runs fails those.
    `pace()`: this machine's recorded pace, for the estimates."""
    folders = {run.folder for run in runs}
    if any(run.after is not None and run.after.folder not in folders for run in runs):
        raise ValueError("every run a run waits for must be among the runs")
    progress = Progress(runs, report, pace=pace)
    outcomes, waiting, live, submitted = {}, list(runs), [], False
    with executor:
        progress.parallel = executor.parallel or executor.slots
        while waiting or live:
            todo = {}  # run -> why its folder is redone (None: a fresh start)
            for run in list(waiting):  # in order: what may start now, up to the free slots
                if executor.slots and len(live) + len(todo) >= executor.slots:
                    break
                if run.after is not None and run.after.folder not in outcomes:
                    continue
                waiting.remove(run)
                why = run.unfinished()
                if run.after is not None and not outcomes[run.after.folder].ok:
                    outcomes[run.folder] = Outcome("not started")
                elif why is None:
                    outcomes[run.folder] = Outcome("skipped")
                else:
                    todo[run.folder] = run, why if run_folder.user_files(run.folder) else None
                    continue
                progress.end(run, outcomes[run.folder])
            if todo:
                try:
                    live += executor.submit([run for run, _ in todo.values()])
                except StiltsError as e:
                    if not submitted:
                        raise  # nothing started: the engine refused the study's input
                    for run, _ in todo.values():
                        outcomes[run.folder] = Outcome("failed", error=str(e))
                        progress.end(run, outcomes[run.folder])
                    continue
                submitted = True
                for run, why in todo.values():
                    progress.start(run, why)
            for job in executor.wait(live) if live else ():
                live.remove(job)
                outcomes[job.run.folder] = job.result()
                progress.end(job.run, outcomes[job.run.folder])
    return outcomes


def run_study(study, stage_a, runs, executor, baselines, report=print, pace=lambda: None):
    """A whole study: every run carried out (`carry_out`), a line of counts, and the summary files of the
    runs that ended well. Returns the runs that did not, with their outcomes: [(run, Outcome)]."""
    from stilts import study_summary

    started = time.monotonic()
    outcomes = carry_out(stage_a + runs, executor, report, pace)
    count = lambda *statuses: sum(o.status in statuses for o in outcomes.values())  # noqa: E731
    failed = [run for run in stage_a + runs if not outcomes[run.folder].ok]
    report(f"stilts-run: {count('finished')} run(s) done, {count('skipped')} skipped as finished, "
           f"{len(failed)} failed or not started, in {format_seconds(time.monotonic() - started)}")
    summary = study_summary.write_summary(study, study.arms(), [r for r in runs if outcomes[r.folder].ok], baselines,
                                          missing=[study_summary.relative(study, r.folder) for r in failed])
    if study.export:
        from stilts import export  # torch and transformers

        export.export_study(study.output_dir, summary, report)
    return [(run, outcomes[run.folder]) for run in failed]

