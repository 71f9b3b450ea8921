"""stilts as an installed package: the built wheel, installed (not editable) into a fresh venv and
run from an empty folder, must find its packaged BERT configs and vocabularies, submission templates
and adapter configs, and stilts-run must start its runs through the installed package, not through
a file of this clone."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow  # see conftest.py


def run(*args, cwd=None, check=True):
    """A command as a user of the installed package runs it: offline, without the clone's settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "BERT_ALL_DIR", "PYTHONPATH")}
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                            env=dict(env, HF_HUB_OFFLINE="1"))
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv holding only the wheel built from this clone; its bin/ folder is returned."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: building in the clone reuses its build/ folder, where a deleted module lives on.
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "build", "*.egg-info",
                                                                  "__pycache__", "demo_output", "runs"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", source, "-w", work / "dist")
    (wheel,) = (work / "dist").glob("stilts-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", work / "venv")
    python = work / "venv" / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    # torch, transformers & co. come from this venv. Written after the install, so that pip never saw
    # this venv's editable stilts; a path listed in a .pth file does not run that venv's .pth hooks.
    site_packages = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    with open(os.path.join(site_packages, "deps.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    return work / "venv" / "bin"


@pytest.fixture
def empty_dir(tmp_path):
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def test_data_files_come_from_the_installed_package(venv, empty_dir):
    show = ("import json, stilts; from stilts import modeling, study, submission; print(json.dumps("
            "[stilts.__file__, modeling.ModelSource('bert-base-uncased').vocab_path, submission.TEMPLATE_DIR,"
            " *study.ADAPTER_CONFIGS.values()]))")
    paths = json.loads(run(venv / "python", "-c", show, cwd=empty_dir).stdout)
    installed = os.path.dirname(paths[0])
    assert not paths[0].startswith(REPO) and paths[0].startswith(str(venv.parent)), paths[0]
    for path in paths[1:]:
        assert path.startswith(installed + os.sep) and os.path.exists(path), path


def test_make_submission_copies_the_packaged_templates(venv, empty_dir):
    (empty_dir / "in").mkdir()
    result = run(venv / "stilts-make-submission", "in", "out", cwd=empty_dir, check=False)
    assert result.returncode == 2 and "no zip written" in result.stderr, result.stderr  # the other tasks are missing
    for name in ("AX.tsv", "WNLI.tsv"):
        template = os.path.join("stilts", "cache", "submission_template", name)
        assert any(f"copied {venv.parent}" in line and f"{template} (placeholder predictions)" in line
                   for line in result.stdout.splitlines()), result.stdout
        with open(os.path.join(REPO, "cache", "submission_template", name), "rb") as f:
            assert (empty_dir / "out" / name).read_bytes() == f.read()


def test_train_help(venv, empty_dir):
    assert "--bert_model" in run(venv / "stilts-train", "--help", cwd=empty_dir).stdout


def test_train_with_the_packaged_vocabulary(venv, empty_dir, tiny_bert_dir):
    """bert-base-uncased's vocab.txt, with no $BERT_ALL_DIR, is the wheel's copy (the hub is offline)."""
    run(venv / "stilts-train", "--task_name", "rte", "--data_dir", os.path.join(FIXTURES, "RTE"), "--do_val",
        "--bert_model", "bert-base-uncased", "--bert_config_json_path", os.path.join(tiny_bert_dir, "config.json"),
        "--bert_load_mode", "model_only", "--bert_load_path", os.path.join(tiny_bert_dir, "model.safetensors"),
        "--do_lower_case", "--not-verbose", "--max_seq_length", "32", "--output_dir", "out", cwd=empty_dir)
    assert "acc" in json.load(open(empty_dir / "out" / "val_metrics.json"))["metrics"]


def test_run_starts_the_installed_train_module(venv, empty_dir, tiny_bert_dir):
    result = run(venv / "stilts-run", "--intermediate", "mnli", "--targets", "rte", "--restarts", "1",
                 "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", "study", "--do_lower_case",
                 "--not-verbose", "--num_train_epochs", "1", "--train_examples_number", "8",
                 "--max_seq_length", "32", "--no_test", cwd=empty_dir)
    # Each run's command opens its log (the terminal gets one line per run).
    logs = [empty_dir / "study" / "intermediate_mnli" / "stilts-run.log",
            empty_dir / "study" / "rte" / "stilts" / "seed_1" / "stilts-run.log"]
    starts = [log.read_text().splitlines()[0] for log in logs]
    assert all(line.startswith(f"# stilts-run, try 1: {venv / 'python'} -m stilts.cli.train") for line in starts), \
        (starts, result.stdout)
    assert os.path.isfile(empty_dir / "study" / "summary.json")


def test_run_adapters_reads_the_packaged_adapter_config(venv, empty_dir):
    """The packaged bert-base-uncased adapter config is read (it has "use_adapter"); the refusal
    that follows is about the missing base weights, not the config."""
    result = run(venv / "stilts-run", "--adapters", "--intermediate", "mnli", "--targets", "rte", "--restarts", "1",
                 "--bert_model", "bert-base-uncased", "--glue_dir", FIXTURES, "--output_dir", "study",
                 cwd=empty_dir, check=False)
    assert result.returncode == 2 and "--adapters: stage B loads the base weights" in result.stderr, result.stderr
