"""stilts-run on real engines: a one-node SLURM (sbatch through submitit) and a two-node Ray cluster,
both on 127.0.0.1 (scripts/cluster/). `pytest -m cluster`; .ci/run brings both clusters up first and
down after. Where a cluster cannot start here (not root, no packages), its tests are skipped with
the script's one line saying why.
"""
import os
import re
import subprocess

import pytest

from conftest import REPO, run_study, values

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
    os.environ["PATH"] = f"{CLUSTER}{os.pathsep}{os.environ['PATH']}"
    yield
    if started:
        subprocess.run(["bash", os.path.join(CLUSTER, "slurm.sh"), "down"], capture_output=True)


@pytest.fixture(scope="module")
def ray_cluster():
    started = cluster("ray.sh")
    # The cluster uses Ray's token authentication (ray.sh), and so must the study's driver.
    os.environ["RAY_AUTH_MODE"] = "token"
    yield "127.0.0.1:" + os.environ.get("STILTS_RAY_PORT", "6379")
    del os.environ["RAY_AUTH_MODE"]
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
