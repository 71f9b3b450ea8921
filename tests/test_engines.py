"""stilts-run on real engines: a one-node SLURM (sbatch through submitit) and a two-node Ray cluster,
both on 127.0.0.1 (scripts/cluster/). `pytest -m cluster`; .ci/run brings both clusters up first and
down after. Where a cluster cannot start here (not root, no packages), its tests are skipped with
the script's one line saying why.
"""
import glob
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import LONG_TRAINING, REPO, run_study, study_argv, values
from stilts import attempt

CLUSTER = os.path.join(REPO, "scripts", "cluster")
pytestmark = pytest.mark.cluster


def cluster(script):
    """Bring a cluster up (a no-op when it runs); skip with the script's line when it cannot start here.
    Takes down at the end only a cluster it started."""
    result = subprocess.run(["bash", os.path.join(CLUSTER, script), "up"], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    return "already running" not in result.stdout and "nothing to start" not in result.stdout


@pytest.fixture(scope="module")
def slurm():
    started = cluster("slurm.sh")
    # The sacct stand-in: without accounting storage submitit cannot tell a job that died.
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{CLUSTER}{os.pathsep}{path}"
    yield
    os.environ["PATH"] = path
    if started:
        subprocess.run(["bash", os.path.join(CLUSTER, "slurm.sh"), "down"], capture_output=True)


@pytest.fixture(scope="module")
def ray_cluster():
    started = cluster("ray.sh")
    # The cluster uses Ray's token authentication (ray.sh), and so must the study's driver.
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    yield "127.0.0.1:" + os.environ.get("STILTS_RAY_PORT", "6379")
    if before is None:
        del os.environ["RAY_AUTH_MODE"]
    else:
        os.environ["RAY_AUTH_MODE"] = before
    if started:
        subprocess.run(["bash", os.path.join(CLUSTER, "ray.sh"), "down"], capture_output=True)


@pytest.fixture(scope="module")
def local_scores(tmp_path_factory, tiny_bert_dir):
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_study(out, tiny_bert_dir, targets="rte")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return values(out)


def job_of(stdout, label):
    """The engine's name for the job that ran the run `label`, from its end line."""
    found = re.search(rf"^stilts-run: {re.escape(label)}: done in \S+ on (.+?), dev ", stdout, re.M)
    assert found, stdout
    return found.group(1)


def test_a_study_on_slurm_gives_the_scores_of_the_local_launcher(slurm, local_scores, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_study(out, tiny_bert_dir, "--launcher", "submitit", "--submitit_cluster", "slurm",
                       "--slurm_partition", "debug", "--slurm_time", "20", targets="rte")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert values(out) == pytest.approx(local_scores, abs=1e-4) and len(local_scores) == 4
    # sbatch ran them as arrays: stage A's (with the baseline runs, which need nothing), then its targets'.
    stage_a = job_of(result.stdout, "stage A: mnli")
    stilts = {job_of(result.stdout, f"rte stilts seed {s}") for s in (1, 2)}
    baseline = {job_of(result.stdout, f"rte baseline seed {s}") for s in (1, 2)}
    array = lambda job: re.fullmatch(r"SLURM job (\d+)_\d+", job).group(1)  # noqa: E731
    assert {array(j) for j in baseline} == {array(stage_a)}
    assert len({array(j) for j in stilts}) == 1 and array(next(iter(stilts))) != array(stage_a)
    assert (out / "submitit").is_dir()


def test_a_partition_slurm_does_not_have_is_one_line(slurm, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_study(out, tiny_bert_dir, "--launcher", "submitit", "--submitit_cluster", "slurm",
                       "--slurm_partition", "no_such_partition", targets="rte")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--slurm_partition no_such_partition: " in result.stderr and not out.exists()


def test_a_study_on_two_ray_nodes_gives_the_scores_of_the_local_launcher(ray_cluster, local_scores, tmp_path,
                                                                          tiny_bert_dir):
    out = tmp_path / "out"
    result = run_study(out, tiny_bert_dir, "--launcher", "ray", "--ray_address", ray_cluster, "--cpus_per_run", "1",
                       targets="rte")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert values(out) == pytest.approx(local_scores, abs=1e-4) and len(local_scores) == 4
    labels = ["stage A: mnli"] + [f"rte {arm} seed {s}" for arm in ("stilts", "baseline") for s in (1, 2)]
    nodes = {job_of(result.stdout, label) for label in labels}
    assert len(nodes) == 2 and all(node.startswith("Ray node ") for node in nodes), nodes


def test_a_run_on_a_lost_ray_node_runs_again_on_the_other(ray_cluster, local_scores, tmp_path, tiny_bert_dir):
    """The second node is stopped while both nodes train (1 CPU each, a run per CPU): its run goes to
    the head, and the study ends as the local launcher's."""
    out = tmp_path / "out"
    env = dict(os.environ, STILTS_CACHE_DIR=str(out) + "-cache")
    study = subprocess.Popen([sys.executable, "-m", "stilts.cli.run",
                              *study_argv(out, tiny_bert_dir, "--launcher", "ray", "--ray_address", ray_cluster,
                                          "--cpus_per_run", "1", targets="rte")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(training(out)) < 2:  # stage A and a baseline run, one on each node
            assert time.monotonic() < deadline and study.poll() is None, "two runs never trained at once"
            time.sleep(0.2)
        stopped = subprocess.run(["bash", os.path.join(CLUSTER, "ray.sh"), "stop-node2"], capture_output=True,
                                 text=True)
        assert stopped.returncode == 0, stopped.stderr
        stdout, _ = study.communicate(timeout=600)
    finally:
        study.kill()
        subprocess.run(["bash", os.path.join(CLUSTER, "ray.sh"), "up"], capture_output=True)  # node2 back
    assert study.returncode == 0, stdout[-3000:]
    assert values(out) == pytest.approx(local_scores, abs=1e-4)
    tries = {run: log.read_text().count("# stilts-run, try 1:") for run, log in logs(out).items()}
    assert sorted(tries.values())[-1] == 2 and sum(tries.values()) == len(tries) + 1, tries  # one run twice


def logs(out):
    return {log.parent.relative_to(out): log for log in out.glob("**/" + attempt.LOG_NAME)}


def training(out):
    """The runs whose process started and has not finished (a log, no val_metrics.json)."""
    return [run for run, log in logs(out).items() if not (log.parent / "val_metrics.json").exists()]


def slurm_job_of(folder):
    """The SLURM job (ARRAY_TASK form) whose training process writes into `folder`, or None."""
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                argv = f.read().split(b"\0")
            if b"stilts.cli.train" not in argv or str(folder).encode() not in argv:
                continue
            with open(cmdline.replace("cmdline", "environ"), "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        return f"{env[b'SLURM_ARRAY_JOB_ID'].decode()}_{env[b'SLURM_ARRAY_TASK_ID'].decode()}"
    return None


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory, tiny_bert_dir):
    """An uninterrupted study of long runs (local launcher)."""
    out = tmp_path_factory.mktemp("long") / "local"
    assert run_study(out, tiny_bert_dir, *LONG_TRAINING, targets="rte").returncode == 0
    return out


# How a job is ended in the middle: `scontrol requeue` (SIGTERM, then SIGKILL after the grace period, as
# on pre-emption), and the signal SLURM sends a job nearing its time limit (--slurm_time; submitit asks
# for USR2 90 s before it): sent here at once, as submitit's own tests do, rather than waiting minutes.
ENDINGS = {"requeue": lambda job: ["scontrol", "requeue", job],
           "time limit": lambda job: ["scancel", "--signal", "USR2", job]}


@pytest.mark.parametrize("victim,ending", [("rte/baseline/seed_1", "requeue"), ("intermediate_mnli", "time limit")])
def test_a_requeued_run_continues_from_its_checkpoint_in_the_requeued_job(slurm, long_reference, tmp_path,
                                                                         tiny_bert_dir, victim, ending):
    """A run's job (a target run's, and stage A's) ended after the run's first periodic checkpoint, by
    SLURM's own signals: the requeued job resumes the run (no failed try used), and the scores are
    those of an uninterrupted study. Stage A's all_state.p still holds the model alone."""
    out = tmp_path / "out"
    env = dict(os.environ, STILTS_CACHE_DIR=str(out) + "-cache")
    study = subprocess.Popen([sys.executable, "-m", "stilts.cli.run",
                              *study_argv(out, tiny_bert_dir, *LONG_TRAINING, "--launcher", "submitit",
                                          "--submitit_cluster", "slurm", "--slurm_time", "20", "--max_retries", "0",
                                          targets="rte")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    victim, job = out / victim, None
    try:
        deadline = time.monotonic() + 300
        while job is None:  # its first periodic checkpoint, while it still trains
            assert time.monotonic() < deadline and study.poll() is None, "the run never checkpointed"
            if glob.glob(str(victim / "all_state___epoch*___batch*.p")):
                job = slurm_job_of(victim)
            time.sleep(0.05)
        ended = subprocess.run(ENDINGS[ending](job), capture_output=True, text=True)
        assert ended.returncode == 0, ended.stderr
        stdout, _ = study.communicate(timeout=600)
    finally:
        study.kill()
    assert study.returncode == 0, stdout[-3000:]
    assert values(out) == pytest.approx(values(long_reference), abs=1e-4)
    log = (victim / attempt.LOG_NAME).read_text()
    said = {"requeue": "# stilts-run: the job is being ended (SIGTERM",
            "time limit": "# stilts-run: the job is being requeued (its time limit is near, or it is pre-empted)"}[ending]
    assert said in log and log.count("# stilts-run, try 1:") == 2 and "try 2" not in log, log
    resumed = [line for line in log.splitlines() if line.startswith("# stilts-run, try 1:")][-1]
    assert "--bert_load_mode state_all --bert_load_path" in resumed and "all_state___epoch" in resumed, log
    if victim.name == "intermediate_mnli":
        import torch

        assert set(torch.load(victim / "all_state.p", weights_only=True)) == {"args", "model"}
    assert subprocess.run(["squeue", "-h", "-j", job.split("_")[0]], capture_output=True, text=True).stdout == ""


def test_a_killed_launcher_started_again_finishes_without_redoing_a_run(slurm, tmp_path, tiny_bert_dir):
    """stilts-run killed while a target run's job trains (SLURM keeps the job): the same command again
    touches no finished run and completes, leaving no job behind. (A new job that finds its run's
    folder held by the old one waits for it: test_attempt.py; on this 2-CPU node the old jobs hold
    both CPUs, so the new ones start only after them.)"""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "stilts.cli.run",
            *study_argv(out, tiny_bert_dir, *LONG_TRAINING, "--launcher", "submitit", "--submitit_cluster", "slurm",
                        "--slurm_time", "20", targets="rte")]
    env = dict(os.environ, STILTS_CACHE_DIR=str(out) + "-cache")
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    victim = out / "rte" / "baseline" / "seed_1"
    try:
        deadline = time.monotonic() + 300
        while slurm_job_of(victim) is None:
            assert time.monotonic() < deadline and first.poll() is None, "the run never trained"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    done_before = {path: path.stat().st_mtime_ns for path in out.glob("**/val_metrics.json")}
    again = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in done_before} == done_before
    assert len(values(out)) == 4
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == ""
