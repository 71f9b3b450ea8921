"""What the terminal shows while a study runs: a line per run that starts and per run that ends, and the
time left."""
import time

from stilts import run_folder
from stilts.attempt import log_path
from stilts.errors import StiltsError


class Progress:
    """One line per run that starts and per run that ends (its time and dev score): runs done /
    running / failed, and the time left. The estimate sums, over the runs left, the mean time of the
    finished runs of the same kind (stage A or target run, of the same task), else what the machine's
    recorded pace (`pace()`, stilts.pace) gives for the run's work, else the mean of the same stage;
    divided by the runs that run at once (`parallel`, else the run-seconds finished per second of wall
    time so far)."""

    def __init__(self, runs, report=print, parallel=None, pace=lambda: None):
        self.runs, self.report, self.parallel = list(runs), report, parallel
        self.pace = pace
        self.total = len(self.runs)
        self.done = self.failed = self.running = 0
        self.seconds = {}  # run folder -> how long it took, of the runs that ran now
        self.ended = set()
        self.before = {run.folder for run in self.runs if run.finished()}  # to be skipped: no time left
        self.started = time.monotonic()

    def start(self, run, why=None):
        """`why`: the reason a folder the run left behind is redone."""
        self.running += 1
        what = f"redoing the unfinished run in {run.folder} ({why})" if why else "start"
        self.report(f"stilts-run: {run.label}: {what} (log: {log_path(run)})")

    def end(self, run, outcome):
        if outcome.status in ("finished", "failed"):
            self.running = max(0, self.running - 1)
        self.done += outcome.ok
        self.failed += not outcome.ok
        self.ended.add(run.folder)
        if outcome.status == "finished":
            self.seconds[run.folder] = outcome.seconds
        where = f" on {outcome.where}" if outcome.where else ""
        what = {"finished": f"done in {format_seconds(outcome.seconds)}{where}{_score(run)}", "skipped": "skip (finished)",
                "failed": f"FAILED after {outcome.tries} tries ({outcome.error}); log: {log_path(run)}",
                "not started": "not started: its stage A failed"}[outcome.status]
        left = self.estimate()
        estimate = f", about {format_seconds(left)} left" if left else ""
        self.report(f"stilts-run: {run.label}: {what} [{self.done}/{self.total} done, {self.running} running, "
                    f"{self.failed} failed{estimate}]")

    def estimate(self):
        """Seconds left, or None before any run of a kind that is left has finished."""
        timed = [run for run in self.runs if run.folder in self.seconds]
        left = [run for run in self.runs if run.folder not in self.ended and run.folder not in self.before]
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
    return run.stage, run.task


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
