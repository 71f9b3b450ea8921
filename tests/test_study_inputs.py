"""What a study checks before its first run, and what it does with the records it reads back from
its own folder (docs/pipeline.md, "What a study reads back"): bad input is one line and exit 2
before anything is written; a damaged record of a finished run makes that run redone; a run whose
data changed since it finished is refused."""
import json
import os
import shutil

import pytest

from conftest import FIXTURES, refused_by
from stilts import attempt, run_folder, study_summary
from stilts.cli import run as stilts_run
from stilts.study import Arm, Run

TRAIN_FLAGS = ["--do_lower_case", "--not-verbose", "--num_train_epochs", "1", "--train_examples_number", "8",
               "--train_batch_size", "4", "--eval_batch_size", "64", "--max_seq_length", "32", "--no_test"]


def study_argv(glue, out, model, *extra):
    return ["--intermediate", "mnli", "--targets", "rte", "--seeds", "1", "--bert_model", model,
            "--glue_dir", str(glue), "--output_dir", str(out), *TRAIN_FLAGS, *extra]


def snapshot(folder):
    return {os.path.relpath(os.path.join(root, name), folder): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    """A copy of the fixtures' MNLI and RTE, which the tests below may change."""
    folder = tmp_path_factory.mktemp("glue")
    for task in ("MNLI", "RTE"):
        shutil.copytree(os.path.join(FIXTURES, task), folder / task)
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--intermediate_args", '--learning_rate "1e-4'], "--intermediate_args '--learning_rate \"1e-4': No closing quotation"),
    (["--intermediate_seed", str(2 ** 32)], "--intermediate_seed 4294967296: must be from 0 to 2**32 - 1"),
    (["--seeds", str(2 ** 32)], "--seeds '4294967296': seeds must be distinct, from 0 to 2**32 - 1"),
    (["--intermediate_args", "--train_examples_number 41"],
     "--train_examples_number 41 (for stage A: mnli): {glue}/MNLI/train.tsv has 40 examples"),
    (["--intermediate_dev_examples", "41"], "--dev_examples_number 41 (for stage A: mnli): {glue}/MNLI/dev_matched.tsv"),
    (["--intermediate_dev_examples", "0"], "--intermediate_dev_examples 0: must be at least 1"),
    # A replay in every run would train other settings than the study checks.
    (["--args_json", "x/args.json"], "--args_json (pass-through flag): stilts-run sets it for each run"),
])
def test_bad_study_flags_stop_it_before_any_run(glue, tmp_path, tiny_bert_dir, capsys, extra, message):
    out = tmp_path / "out"
    err = refused_by(capsys, stilts_run.main, study_argv(glue, out, tiny_bert_dir, *extra))
    assert message.format(glue=glue) in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["summary.json", "Transfer_Matrix.md", "intermediate_mnli", "submitit"])
def test_a_task_named_like_a_study_file_is_refused_up_front(glue, tmp_path, tiny_bert_dir, capsys, name):
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"name": name, "files": {"train": str(glue / "RTE" / "train.tsv"),
                                                             "dev": str(glue / "RTE" / "dev.tsv")},
                                     "text_a": "sentence1", "text_b": "sentence2", "label": "label",
                                     "labels": ["entailment", "not_entailment"]}))
    argv = study_argv(glue, tmp_path / "out", tiny_bert_dir)
    argv[argv.index("rte")] = str(task_file)
    err = refused_by(capsys, stilts_run.main, argv)
    assert f"the task name {name!r} is taken" in err or f"'name' {name!r} is taken" in err
    assert not (tmp_path / "out").exists()


def rerun(capfd, argv):
    """stilts-run in this process (runs in subprocesses), which must end well; its stdout."""
    stilts_run.main(argv)
    return capfd.readouterr().out


def refused(capfd, argv):
    """stilts-run must exit 2 with one line on stderr (captured at the descriptors: its runs are
    subprocesses); returns the line."""
    with pytest.raises(SystemExit) as stop:
        stilts_run.main(argv)
    err = capfd.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_records_read_back_from_the_study_folder(glue, tmp_path, tiny_bert_dir, capfd):
    """Each record stilts-run reads from its own folder, damaged: the run it records is redone, the
    others kept; a folder where a record or the log belongs and changed data are refused up front."""
    out = tmp_path / "out"
    argv = study_argv(glue, out, tiny_bert_dir)
    first = rerun(capfd, argv)
    assert "2 run(s) done" in first
    target = out / "rte" / "stilts" / "seed_1"
    stage_a = out / "intermediate_mnli"

    damages = {  # record -> content: each makes only its run redone
        (target, "args.json"): "[1, 2]",
        (target, "val_metrics.json"): json.dumps({"loss": 1.0, "metrics": {"acc": "high"}}),
        (target, run_folder.STATUS_NAME): "[" * 100_000,
        (stage_a, "val_metrics.json"): "not json",
    }
    for (folder, name), content in damages.items():
        kept = snapshot(stage_a if folder == target else target)
        (folder / name).write_text(content)
        printed = rerun(capfd, argv)
        assert f"redoing the unfinished run in {folder} (" in printed and name in printed, printed
        assert "1 run(s) done" in printed or folder == stage_a, printed
        if folder == target:
            assert snapshot(stage_a) == kept, "a damaged target record must not redo its stage A"
        assert run_folder.state(folder) == "finished"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets"]["rte"]["stilts"]["runs"][0]["dir"] == "rte/stilts/seed_1"

    # A folder where the run's log or a record goes: one line, nothing started.
    (target / run_folder.LOG_NAME).unlink()
    (target / run_folder.LOG_NAME).mkdir()
    before = snapshot(out)
    err = refused(capfd, argv)
    assert f"{target / run_folder.LOG_NAME}: a folder stands where rte stilts seed 1 writes its stilts-run.log" in err
    assert snapshot(out) == before
    (target / run_folder.LOG_NAME).rmdir()

    # The data changed since the runs finished: refused, naming the file, nothing touched.
    with open(glue / "RTE" / "dev.tsv", "a") as f:
        f.write("999\tA new sentence.\tAnother one.\tentailment\n")
    err = refused(capfd, argv)
    assert f"{target}: this finished run read other data: {glue / 'RTE' / 'dev.tsv'} changed since" in err
    assert snapshot(out) == before


def test_a_summary_that_cannot_be_made_leaves_the_earlier_files(tmp_path, monkeypatch):
    """summary.json is written only once every summary text is made: they never disagree."""
    (tmp_path / "summary.json").write_text("earlier\n")

    class Args:
        output_dir = str(tmp_path)
        targets, no_test, tasks = [], True, {}

    def broken(args, summary):
        raise RuntimeError("the markdown failed")

    monkeypatch.setattr(study_summary, "markdown", broken)
    with pytest.raises(RuntimeError):
        study_summary.write_summary(Args, [Arm("stilts", "mnli")], [], {})
    assert (tmp_path / "summary.json").read_text() == "earlier\n"


def test_a_retried_runs_header_starts_its_own_line(tmp_path):
    """A try's log header after a progress bar's last update (no newline) starts a line of its own."""
    run = Run("r", str(tmp_path), ["--no_such_flag"], ("val_metrics.json",))
    (tmp_path / run_folder.LOG_NAME).write_text("Training:  50%|#####     | 1/2\r")
    attempt.attempt(run, attempt.Attempts(max_retries=0))
    lines = (tmp_path / run_folder.LOG_NAME).read_bytes().split(b"\n")
    assert lines[0] == b"Training:  50%|#####     | 1/2\r" and lines[1].startswith(b"# stilts-run, try 1: ")
