"""stilts-run's launchers on a tiny BERT: --jobs 2, submitit's local executor and a local Ray give the
summary of --jobs 1; a failing run is retried, then reported; a killed launcher, started again,
finishes without doing a run twice."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import LONG_TRAINING, REPO, run_study, study_argv, values
from stilts import attempt

@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_dir):
    out = tmp_path_factory.mktemp("jobs1") / "out"
    result = run_study(out, tiny_bert_dir, "--jobs", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["--jobs", "2"], ["--launcher", "submitit", "--submitit_cluster", "local"],
                                      ["--launcher", "ray", "--cpus_per_run", "1"]])
def test_every_launcher_gives_the_summary_of_one_job(reference, tmp_path, tiny_bert_dir, launcher):
    if launcher[-1] in ("local", "1") and launcher[1] in ("submitit", "ray"):
        pytest.importorskip(launcher[1])
    out = tmp_path / "out"
    result = run_study(out, tiny_bert_dir, *launcher)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = values(reference)
    assert values(out).keys() == expected.keys() and len(expected) == 8
    # Runs with other thread counts sum floats in another order: equal up to float noise.
    assert values(out) == pytest.approx(expected, abs=1e-5)
    for run in (out / "rte" / "stilts" / "seed_1", out / "intermediate_mnli"):
        assert (run / attempt.LOG_NAME).is_file() and "stilts-run, try 1" in (run / attempt.LOG_NAME).read_text()
    assert "9/9 done, 0 running, 0 failed" in result.stdout


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, tiny_bert_dir):
    """A run that cannot write its metrics fails (bad input: not tried again); the other runs
    finish, the summary lists it as missing, and the command ends with status 1 and one line naming
    it and its log."""
    out = tmp_path / "out"
    broken = out / "rte" / "baseline" / "seed_1"
    # A folder where the run writes its dev logits (a folder where stilts-run reads a record, such as
    # val_metrics.json, is refused before any run starts: test_study_records).
    (broken / "val_preds.csv").mkdir(parents=True)
    result = run_study(out, tiny_bert_dir, "--max_retries", "2", targets="rte", seeds="1")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    log = (broken / attempt.LOG_NAME).read_text()
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("# stilts-run")] == ["# stilts-run, try 1"]
    failures = [line for line in result.stderr.splitlines() if "failed:" in line]
    assert len(failures) == 1 and "rte baseline seed 1 failed" in failures[0]
    assert "val_preds.csv: cannot write" in failures[0] and str(broken / attempt.LOG_NAME) in failures[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == ["rte/baseline/seed_1"]
    assert "baseline" not in summary["targets"]["rte"] and len(summary["targets"]["rte"]["stilts"]["runs"]) == 1
    assert "2 run(s) done, 0 skipped as finished, 1 failed" in result.stdout


def test_a_killed_run_is_tried_again(tmp_path, tiny_bert_dir):
    """A run that dies (here: SIGKILL, as the out-of-memory killer does) is tried again, and the
    study ends well."""
    out = tmp_path / "out"
    victim = out / "rte" / "stilts" / "seed_1"
    env = dict(os.environ, STILTS_CACHE_DIR=str(tmp_path / "cache"))
    study = subprocess.Popen([sys.executable, "-m", "stilts.cli.run", *study_argv(out, tiny_bert_dir, "--max_retries",
                                                                                  "1", targets="rte", seeds="1")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and study.poll() is None:  # kill its first try once it runs
        if subprocess.run(["pkill", "-9", "-f", f"output_dir {victim} "]).returncode == 0:
            break
        time.sleep(0.05)
    output = study.communicate()[0]
    assert study.returncode == 0, output[-3000:]
    tries = [line for line in (victim / attempt.LOG_NAME).read_text().splitlines() if line.startswith("# stilts-run")]
    assert [t.split(":")[0] for t in tries] == ["# stilts-run, try 1", "# stilts-run, try 2"]
    assert (victim / "val_metrics.json").is_file()


def test_a_failed_stage_a_leaves_its_runs_unstarted(tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    (out / "intermediate_mnli" / "all_state.p").mkdir(parents=True)  # stage A cannot save its checkpoint
    result = run_study(out, tiny_bert_dir, "--max_retries", "0", targets="rte", seeds="1")
    assert result.returncode == 1
    assert "rte stilts seed 1 not started: its stage A failed" in result.stderr
    assert json.loads((out / "summary.json").read_text())["missing"] == ["intermediate_mnli", "rte/stilts/seed_1"]
    assert (out / "rte" / "baseline" / "seed_1" / "val_metrics.json").is_file()  # the baseline ran anyway


@pytest.mark.slow
def test_a_killed_launcher_finishes_when_started_again(tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    env = dict(os.environ, STILTS_CACHE_DIR=str(tmp_path / "cache"))
    launcher = subprocess.Popen([sys.executable, "-m", "stilts.cli.run", *study_argv(out, tiny_bert_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    finished = lambda: sorted(out.glob("*/*/seed_*/val_metrics.json"))  # noqa: E731
    deadline = time.monotonic() + 300
    while len(finished()) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    done_before = {path: path.stat().st_mtime_ns for path in finished()}
    assert 2 <= len(done_before) < 8
    time.sleep(1)  # the killed launcher's run dies with it (its parent-death signal)
    result = subprocess.run([sys.executable, "-m", "stilts.cli.run", *study_argv(out, tiny_bert_dir)],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in done_before} == done_before  # none done twice
    assert len(finished()) == 8
    assert f"{len(done_before) + 1} skipped as finished" in result.stdout  # stage A too


@pytest.mark.slow
def test_a_stage_a_stopped_midway_resumes_from_its_checkpoint(tmp_path, tiny_bert_dir):
    """The launcher killed while stage A trains (its run dies with it), then the same command again:
    stage A continues from its newest periodic checkpoint, which kept the training state, while the
    all_state.p the targets read holds the model alone, as in every study; the scores are those of an
    uninterrupted study."""
    import torch

    reference = tmp_path / "reference"
    assert run_study(reference, tiny_bert_dir, *LONG_TRAINING, targets="rte", seeds="1").returncode == 0
    out, stage_a = tmp_path / "out", tmp_path / "out" / "intermediate_mnli"
    argv = [sys.executable, "-m", "stilts.cli.run", *study_argv(out, tiny_bert_dir, *LONG_TRAINING, targets="rte",
                                                                  seeds="1")]
    env = dict(os.environ, STILTS_CACHE_DIR=str(out) + "-cache")
    launcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while len(list(stage_a.glob("all_state___epoch*.p"))) < 3:  # a few steps in
        assert launcher.poll() is None and time.monotonic() < deadline, "stage A never checkpointed"
        time.sleep(0.02)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    time.sleep(1)  # its run dies with it (the parent-death signal)
    assert not (stage_a / "val_metrics.json").exists()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tries = [line for line in (stage_a / attempt.LOG_NAME).read_text().splitlines() if line.startswith("# stilts-run")]
    assert "--bert_load_mode from_pretrained" in tries[0] and "--train_save_mode all" in tries[0]
    assert "--bert_load_mode state_all --bert_load_path " + str(stage_a / "all_state___epoch") in tries[-1]
    assert set(torch.load(stage_a / "all_state.p", weights_only=True)) == {"args", "model"}  # model_all
    assert "optimizer" in torch.load(sorted(stage_a.glob("all_state___epoch*.p"))[-1], weights_only=True)
    expected = json.loads((reference / "intermediate_mnli" / "val_metrics.json").read_text())
    assert json.loads((stage_a / "val_metrics.json").read_text()) == expected  # exact resume: the same scores
    assert values(out) == values(reference) and len(values(out)) == 2


@pytest.mark.parametrize("argv,message", [
    (["--jobs", "0"], "--jobs 0: must be at least 1"),
    (["--launcher", "ray", "--jobs", "2"], "--jobs is for --launcher local"),
    (["--slurm_extra", "account"], "--slurm_extra 'account': expected KEY=VALUE"),
    # Port 9 (discard) on loopback: nothing listens, and ray.init would wait for minutes.
    (["--launcher", "ray", "--ray_address", "127.0.0.1:9"], "--ray_address 127.0.0.1:9: nothing answers there"),
    (["--launcher", "ray", "--ray_address", "head-node"], "--ray_address head-node: expected HOST:PORT"),
])
def test_bad_launcher_flags(capsys, argv, message):
    from conftest import refused_by
    from stilts.cli.run import main

    assert message in refused_by(capsys, main, study_argv("out", "x", *argv))


def test_a_launcher_without_its_package_is_one_line(capsys, monkeypatch):
    import importlib.util

    from conftest import refused_by
    from stilts.cli.run import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    err = refused_by(capsys, main, study_argv("out", "x", "--launcher", "submitit"))
    assert "--launcher submitit needs the submitit package: pip install 'stilts[submitit]'" in err


def test_resume_command_continues_from_the_newest_checkpoint(tmp_path):
    from stilts.study import Run

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("all_state___epoch0000___batch000009.p", "all_state___epoch0001___batch000002.p",
                 "all_state___epoch0000___batch000019.p"):
        (folder / name).write_bytes(b"")
    argv = ["--task_name", "rte", "--bert_load_mode", "state_model_only", "--bert_load_path", "/a/all_state.p",
            "--seed", "1"]
    run = Run("r", str(folder), argv, ("val_metrics.json",), resumable=True)
    command = attempt.command_for(run, attempt.Attempts())
    assert command[-7:] == ["--seed", "1", "--bert_load_mode", "state_all", "--bert_load_path",
                            str(folder / "all_state___epoch0001___batch000002.p"), "--force-overwrite"]
    assert "state_model_only" not in command
    stage_a = Run("a", str(folder), argv, ("all_state.p",))  # saves the model alone: starts over
    assert "state_all" not in attempt.command_for(stage_a, attempt.Attempts())
