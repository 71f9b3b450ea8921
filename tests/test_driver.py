"""The launchers' shared driver on an engine written in the test: adding an engine is one Executor class,
and the driver alone skips finished runs, holds target runs for their stage A, and keeps to the slots."""
import json
import pathlib

import pytest

from stilts.attempt import Outcome
from stilts.errors import StiltsError
from stilts.launchers import Executor, Job, carry_out
from stilts.study import Run


class InlineExecutor(Executor):
    """Runs each run at once in this process: "training" writes val_metrics.json, or fails for the
    folders in `failing`. Records what it was handed, and how many runs were in flight at most."""

    def __init__(self, slots=None, failing=()):
        self.slots, self.failing, self.batches, self.most_in_flight, self.in_flight = slots, set(failing), [], 0, 0

    def submit(self, runs):
        self.batches.append([run.label for run in runs])
        self.in_flight += len(runs)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return [Job(run, run, self.train) for run in runs]

    def train(self, run):
        self.in_flight -= 1
        if run.folder in self.failing:
            return Outcome("failed", tries=1, error="boom")
        pathlib.Path(run.folder).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(run.folder) / "val_metrics.json").write_text(json.dumps({"loss": 0.5, "metrics": {"acc": 0.6}}))
        return Outcome("finished", seconds=1.0, tries=1)

    def wait(self, jobs):
        return jobs[:1]


def study_runs(tmp_path):
    """Two stage As, each with two target runs, and a baseline run that waits for nothing."""
    stage_a = [Run(f"stage A: {name}", str(tmp_path / f"intermediate_{name}"), [], ("val_metrics.json",), name,
                   metric="acc") for name in ("mnli", "qnli")]
    targets = [Run(f"rte {a.task} seed {s}", str(tmp_path / "rte" / a.task / f"seed_{s}"), [], ("val_metrics.json",),
                   "rte", a.task, s, after=a, metric="acc") for a in stage_a for s in (1, 2)]
    baseline = Run("rte baseline seed 1", str(tmp_path / "rte" / "baseline" / "seed_1"), [], ("val_metrics.json",),
                   "rte", "baseline", 1, metric="acc")
    return stage_a, targets + [baseline]


def test_targets_wait_for_their_stage_a_and_a_failed_one_starts_none(tmp_path):
    stage_a, runs = study_runs(tmp_path)
    lines = []
    engine = InlineExecutor(failing={stage_a[1].folder})
    outcomes = carry_out(stage_a + runs, engine, report=lines.append)
    assert engine.batches[0] == ["stage A: mnli", "stage A: qnli", "rte baseline seed 1"]
    assert [outcomes[r.folder].status for r in runs] == ["finished", "finished", "not started", "not started",
                                                        "finished"]
    assert outcomes[stage_a[1].folder].status == "failed"
    assert sum("not started: its stage A failed" in line for line in lines) == 2


def test_finished_runs_are_skipped_and_never_handed_to_the_engine(tmp_path):
    stage_a, runs = study_runs(tmp_path)
    carry_out(stage_a + runs, InlineExecutor(), report=lambda line: None)
    engine = InlineExecutor()
    outcomes = carry_out(stage_a + runs, engine, report=lambda line: None)
    assert engine.batches == [] and {o.status for o in outcomes.values()} == {"skipped"}


def test_no_more_runs_in_flight_than_the_engine_has_slots(tmp_path):
    stage_a, runs = study_runs(tmp_path)
    engine = InlineExecutor(slots=2)
    outcomes = carry_out(stage_a + runs, engine, report=lambda line: None)
    assert engine.most_in_flight == 2 and all(o.status == "finished" for o in outcomes.values())


def test_an_engine_that_loses_a_run_gives_a_failed_outcome(tmp_path):
    def lost(handle):
        raise RuntimeError("node gone\nmore detail")

    outcome = Job(None, None, lost).result()
    assert outcome.status == "failed" and outcome.error == "RuntimeError: node gone"


class RefusingExecutor(InlineExecutor):
    """Refuses the runs of its `refuse`-th batch, as sbatch refuses bad options."""

    def __init__(self, refuse):
        super().__init__()
        self.refuse = refuse

    def submit(self, runs):
        if len(self.batches) + 1 == self.refuse:
            self.batches.append(None)
            raise StiltsError("sbatch refused the jobs")
        return super().submit(runs)


def test_an_engine_that_refuses_the_first_runs_stops_the_study(tmp_path):
    stage_a, runs = study_runs(tmp_path)
    with pytest.raises(StiltsError):
        carry_out(stage_a + runs, RefusingExecutor(refuse=1), report=lambda line: None)


def test_an_engine_that_refuses_later_runs_fails_them_and_goes_on(tmp_path):
    stage_a, runs = study_runs(tmp_path)
    outcomes = carry_out(stage_a + runs, RefusingExecutor(refuse=2), report=lambda line: None)
    statuses = [outcomes[r.folder].status for r in stage_a + runs]
    assert statuses.count("finished") == 5 and statuses.count("failed") == 2, statuses
    assert {outcomes[r.folder].error for r in runs if outcomes[r.folder].status == "failed"} == {
        "sbatch refused the jobs"}
