"""The local launcher's GPUs, on a CPU machine with a faked device list: each run gets its own
CUDA_VISIBLE_DEVICES set (K devices with --gpus_per_run K, then torchrun with K processes), no two
runs that overlap in time share a device, a device is free again when its run ends or fails, and
more GPUs per run than the machine has is one line."""
import json
import pathlib
import threading
import time

import pytest

from stilts import launchers
from stilts.attempt import Outcome
from stilts.errors import StiltsError
from stilts.study import Run


@pytest.fixture
def devices(monkeypatch):
    monkeypatch.setattr(launchers, "visible_gpus", lambda: ["0", "1", "2", "3", "4"])


def fake_runs(tmp_path, count):
    return [Run(f"run {i}", str(tmp_path / f"run_{i}"), [], ("val_metrics.json",), "rte", "baseline", i, metric="acc")
            for i in range(count)]


def test_no_two_runs_at_once_share_a_device_and_a_failed_run_frees_its_own(devices, tmp_path, monkeypatch):
    lock, busy, seen = threading.Lock(), set(), []

    def train(run, attempts, env, stop):  # stands in for the run's process
        mine = env["CUDA_VISIBLE_DEVICES"].split(",")
        with lock:
            assert not busy & set(mine), (busy, mine)
            busy.update(mine)
            seen.append((run.seed, mine, attempts.processes))
        time.sleep(0.05)
        with lock:
            busy.difference_update(mine)
        if run.seed % 3 == 0:
            return Outcome("failed", tries=1, error="out of memory")
        pathlib.Path(run.folder).mkdir()
        (pathlib.Path(run.folder) / "val_metrics.json").write_text(json.dumps({"metrics": {"acc": 0.5}}))
        return Outcome("finished", 0.05, 1)

    monkeypatch.setattr(launchers, "attempt", train)
    executor = launchers.LaunchSettings(jobs=4, gpus_per_run=2).executor(str(tmp_path))
    assert executor.slots == 2  # 5 devices hold two pairs: the fifth is never used
    outcomes = launchers.carry_out(fake_runs(tmp_path, 9), executor, report=lambda line: None)
    assert [o.status for o in outcomes.values()].count("failed") == 3
    assert len(seen) == 9 and all(len(mine) == 2 and processes == 2 for _, mine, processes in seen)
    assert {device for _, mine, _ in seen for device in mine} == {"0", "1", "2", "3"}


def test_more_gpus_per_run_than_the_machine_has_is_one_line(devices):
    with pytest.raises(StiltsError, match=r"--gpus_per_run 6: this machine has 5 GPU\(s\)"):
        launchers.LaunchSettings(gpus_per_run=6)


def test_one_gpu_each_by_default_on_a_gpu_machine(devices, tmp_path):
    executor = launchers.LaunchSettings(jobs=8).executor(str(tmp_path))
    assert executor.gpus == 1 and executor.slots == 5 and executor.attempts.processes == 1
