"""GLUE leaderboard export, validation and zip (stilts/submission.py and its CLIs).

Logits are synthetic but real-format (written by the trainer's own `write_logits_csv`) and of the
real test-set sizes, QQP's 390,965 rows included; they are written and exported once per session.
"""
import os
import shutil
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from conftest import FIXTURES, run_train
from stilts import submission
from stilts.cli import format_for_glue, make_submission
from stilts.io import write_logits_csv
from stilts.submission import LEADERBOARD, TEMPLATE_DIR
from stilts.tasks import get_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = {e.name: e for e in LEADERBOARD}
FILENAMES = sorted(e.filename for e in LEADERBOARD)


def make_logits(entry, rows=None):
    """Logits for one leaderboard file, seeded by its name; STS-B scores spill past both ends of 0..5."""
    rng = np.random.default_rng(zlib.crc32(entry.name.encode()))
    shape = (rows or entry.test_rows, get_task(entry.task).num_labels)
    return rng.normal(loc=2.5, scale=2.0, size=shape).astype(np.float32)


def expected_predictions(entry, logits):
    task = get_task(entry.task)
    if task.is_regression:
        return [repr(float(x)) for x in np.clip(logits[:, 0].astype(np.float64), 0.0, 5.0)]
    return [task.labels[i] for i in logits.argmax(axis=1)]


def read_tsv(path):
    with open(path) as f:
        header, *rows = f.read().splitlines()
    assert header == "index\tprediction"
    return [row.split("\t") for row in rows]


def run_cli(main, argv, capsys):
    """Run a CLI in-process; return (exit status, stdout, stderr)."""
    try:
        main(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The seed's all-tasks layout, IN/<task>/test_preds.csv (+ IN/mnli/mm_test_preds.csv), for all 11 files."""
    in_dir = tmp_path_factory.mktemp("runs")
    logits = {}
    for entry in LEADERBOARD:
        os.makedirs(in_dir / entry.run_task, exist_ok=True)
        logits[entry.name] = make_logits(entry)
        write_logits_csv(in_dir / entry.run_task / f"{entry.preds}.csv", logits[entry.name])
    return in_dir, logits


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory):
    """The 11 files exported from `runs` (read-only: copy it before changing anything)."""
    out_dir = tmp_path_factory.mktemp("exported")
    outcomes = submission.export_all(str(runs[0]), str(out_dir))
    assert [o.status for o in outcomes] == ["exported"] * len(LEADERBOARD), "\n".join(map(str, outcomes))
    return out_dir


@pytest.fixture
def valid_folder(exported, tmp_path):
    folder = tmp_path / "submission"
    shutil.copytree(exported, folder)
    return folder


def partial_runs(runs, tmp_path, leave_out=()):
    """A copy of the runs layout (symlinked files) without the run folders in `leave_out`."""
    in_dir = tmp_path / "in"
    for entry in LEADERBOARD:
        if entry.run_task not in leave_out:
            os.makedirs(in_dir / entry.run_task, exist_ok=True)
            src = runs[0] / entry.run_task / f"{entry.preds}.csv"
            os.symlink(src, in_dir / entry.run_task / src.name)
    return in_dir


# ---------------------------------------------------------------------------------------------
# Export


def test_every_task_exports_with_label_strings_in_order(runs, exported):
    _, logits = runs
    for entry in LEADERBOARD:
        rows = read_tsv(exported / entry.filename)
        assert len(rows) == entry.test_rows, entry.name
        assert [r[0] for r in rows] == [str(i) for i in range(entry.test_rows)]
        assert [r[1] for r in rows] == expected_predictions(entry, logits[entry.name]), entry.name


def test_label_strings_are_the_ones_glue_expects(exported):
    seen = {e.name: {r[1] for r in read_tsv(exported / e.filename)} for e in LEADERBOARD if e.name != "STS-B"}
    nli3, nli2, binary = {"contradiction", "entailment", "neutral"}, {"entailment", "not_entailment"}, {"0", "1"}
    assert seen == {"CoLA": binary, "SST-2": binary, "MRPC": binary, "QQP": binary, "WNLI": binary,
                    "MNLI-m": nli3, "MNLI-mm": nli3, "AX": nli3, "QNLI": nli2, "RTE": nli2}


def test_ax_is_predicted_from_the_diagnostic_logits_not_the_template(runs, exported):
    """Beyond the seed: `--task_name ax --do_test` logits become a real AX.tsv."""
    predictions = [r[1] for r in read_tsv(exported / "AX.tsv")]
    assert predictions == expected_predictions(ENTRY["AX"], runs[1]["AX"])
    assert len(set(predictions)) == 3


def test_mnli_run_folder_exports_both_halves(runs, tmp_path, capsys):
    in_dir, logits = runs
    status, out, _ = run_cli(format_for_glue.main, ["-t", "mnli", "-i", str(in_dir / "mnli"), "-o", str(tmp_path)],
                             capsys)
    assert status == 0
    assert sorted(os.listdir(tmp_path)) == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    for name in ("MNLI-m", "MNLI-mm"):
        rows = read_tsv(tmp_path / f"{name}.tsv")
        assert len(rows) == ENTRY[name].test_rows
        assert [r[1] for r in rows] == expected_predictions(ENTRY[name], logits[name])
        assert f"{name}.tsv" in out


def test_mnli_mm_run_alone_writes_the_mismatched_half(runs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(runs[0] / "mnli" / "mm_test_preds.csv", run / "test_preds.csv")
    status, _, _ = run_cli(format_for_glue.main, ["-t", "mnli-mm", "-i", str(run), "-o", str(tmp_path / "out")],
                           capsys)
    assert status == 0
    assert os.listdir(tmp_path / "out") == ["MNLI-mm.tsv"]
    assert [r[1] for r in read_tsv(tmp_path / "out" / "MNLI-mm.tsv")] == expected_predictions(
        ENTRY["MNLI-mm"], runs[1]["MNLI-mm"])


def test_stsb_scores_are_clipped_to_0_5(tmp_path, capsys):
    write_logits_csv(tmp_path / "test_preds.csv", [[-0.7], [2.25], [5.5], [5.0], [0.0]])
    status, _, _ = run_cli(format_for_glue.main, ["-t", "stsb", "-i", str(tmp_path), "-o", str(tmp_path),
                                                  "--no-count-check"], capsys)
    assert status == 0
    assert read_tsv(tmp_path / "STS-B.tsv") == [["0", "0.0"], ["1", "2.25"], ["2", "5.0"], ["3", "5.0"], ["4", "0.0"]]


def test_tab_separated_tsv_logits_read_with_file_format_tsv(tmp_path, capsys):
    (tmp_path / "test_preds.tsv").write_text("0.1\t0.9\n2.0\t-1.0\n")
    status, _, _ = run_cli(format_for_glue.main, ["-t", "rte", "-i", str(tmp_path), "-o", str(tmp_path),
                                                  "-f", "tsv", "--no-count-check"], capsys)
    assert status == 0
    assert read_tsv(tmp_path / "RTE.tsv") == [["0", "not_entailment"], ["1", "entailment"]]


def test_row_count_must_match_the_test_set(tmp_path, capsys):
    write_logits_csv(tmp_path / "test_preds.csv", make_logits(ENTRY["RTE"], rows=277))
    status, _, err = run_cli(format_for_glue.main, ["-t", "rte", "-i", str(tmp_path), "-o", str(tmp_path)], capsys)
    assert status == 2
    assert str(tmp_path / "test_preds.csv") in err and "277" in err and "3000" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "RTE.tsv").exists()

    status, _, _ = run_cli(format_for_glue.main, ["-t", "rte", "-i", str(tmp_path), "-o", str(tmp_path),
                                                  "--no-count-check"], capsys)
    assert status == 0
    assert len(read_tsv(tmp_path / "RTE.tsv")) == 277


@pytest.mark.parametrize("content, message", [
    ("0.1,0.2\n0.3,0.4,0.5\n", "test_preds.csv:2: expected 2 column(s)"),
    ("0.1,0.2\n0.3,high\n", "test_preds.csv:2: not a number"),
    ("0.1,0.2\n\n", "test_preds.csv:2: expected 2 column(s)"),
    ("0.1,0.2\nnan,0.4\n", "test_preds.csv:2: non-finite value"),
    ("", "empty prediction file"),
    (None, "test_preds.csv: prediction file not found"),
])
def test_bad_logits_are_one_line_errors_with_file_and_line(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "test_preds.csv").write_text(content)
    status, _, err = run_cli(format_for_glue.main, ["-t", "rte", "-i", str(tmp_path), "-o", str(tmp_path / "out"),
                                                    "--no-count-check"], capsys)
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_or_non_leaderboard_task_is_a_user_error(tmp_path, capsys):
    for task, message in [("nope", "unknown task 'nope'"), ("snli", "snli has no GLUE leaderboard file")]:
        status, _, err = run_cli(format_for_glue.main, ["-t", task, "-i", str(tmp_path), "-o", str(tmp_path)], capsys)
        assert status == 2 and message in err


def test_all_tasks_mode_falls_back_to_template_or_reports_missing(runs, tmp_path, capsys):
    in_dir = partial_runs(runs, tmp_path, leave_out={"ax", "wnli", "qqp", "cola", "sst", "mrpc", "stsb", "qnli"})
    out_dir = tmp_path / "out"
    status, out, _ = run_cli(format_for_glue.main, ["-i", str(in_dir), "-o", str(out_dir)], capsys)
    assert status == 0
    status_of = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert status_of == {"CoLA.tsv": "missing", "SST-2.tsv": "missing", "MRPC.tsv": "missing",
                         "STS-B.tsv": "missing", "QQP.tsv": "missing", "MNLI-m.tsv": "exported",
                         "MNLI-mm.tsv": "exported", "QNLI.tsv": "missing", "RTE.tsv": "exported",
                         "WNLI.tsv": "template", "AX.tsv": "template"}
    for name in ("AX.tsv", "WNLI.tsv"):
        assert (out_dir / name).read_bytes() == open(os.path.join(TEMPLATE_DIR, name), "rb").read()


def test_all_tasks_mode_reports_every_failure_and_exits_2(runs, tmp_path, capsys):
    in_dir = partial_runs(runs, tmp_path, leave_out={"rte", "qqp"})
    os.makedirs(in_dir / "rte")
    write_logits_csv(in_dir / "rte" / "test_preds.csv", make_logits(ENTRY["RTE"], rows=10))
    status, out, err = run_cli(format_for_glue.main, ["-i", str(in_dir), "-o", str(tmp_path / "out")], capsys)
    assert status == 2
    assert "RTE.tsv      failed" in out and "10 prediction rows" in out and "3000" in out
    assert "MNLI-m.tsv   exported" in out
    assert "could not export RTE.tsv" in err


def test_shipped_template_holds_valid_ax_and_wnli_placeholders():
    for name in ("AX", "WNLI"):
        check = submission.check_file(ENTRY[name], os.path.join(TEMPLATE_DIR, f"{name}.tsv"))
        assert check.problems == [] and check.rows == ENTRY[name].test_rows
    assert {r[1] for r in read_tsv(os.path.join(TEMPLATE_DIR, "WNLI.tsv"))} == {"0"}


def test_seed_readme_flow_copy_template_then_export_each_run(runs, tmp_path, capsys):
    """cp -R cache/submission_template OUT, then format_for_glue -t per run folder: AX/WNLI stay the template."""
    out_dir = tmp_path / "new_submission"
    shutil.copytree(TEMPLATE_DIR, out_dir)
    for run_task in sorted({e.run_task for e in LEADERBOARD} - {"ax", "wnli"}):
        status, _, _ = run_cli(format_for_glue.main, ["-t", run_task, "-i", str(runs[0] / run_task),
                                                      "-o", str(out_dir)], capsys)
        assert status == 0, run_task
    report = submission.validate_submission(str(out_dir))
    assert report.ok, str(report)
    assert (out_dir / "AX.tsv").read_bytes() == open(os.path.join(TEMPLATE_DIR, "AX.tsv"), "rb").read()


def test_glue_wrapper_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "glue", "format_for_glue.py"), "-t", "rte",
                             "-i", str(tmp_path), "-o", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "prediction file not found" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Validation


def rewrite(path, edit):
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(edit(lines)) + "\n")


def only_problems(report):
    return {c.entry.name: c.problems for c in report.checks if c.problems}


def test_valid_submission_passes(valid_folder):
    report = submission.validate_submission(str(valid_folder))
    assert report.ok and report.num_problems == 0
    assert str(report).splitlines()[0].endswith(": valid")


def test_validator_catches_a_short_file(valid_folder):
    rewrite(valid_folder / "CoLA.tsv", lambda lines: lines[:-1])
    problems = only_problems(submission.validate_submission(str(valid_folder)))
    assert list(problems) == ["CoLA"]
    assert problems["CoLA"] == [f"{valid_folder / 'CoLA.tsv'}: 1062 rows found, expected 1063 rows "
                                f"(1064 lines incl. header)"]


def test_validator_catches_a_bad_label(valid_folder):
    rewrite(valid_folder / "RTE.tsv", lambda lines: lines[:6] + ["5\tmaybe"] + lines[7:])
    problems = only_problems(submission.validate_submission(str(valid_folder)))
    assert list(problems) == ["RTE"]
    assert problems["RTE"] == [f"{valid_folder / 'RTE.tsv'}:7: prediction 'maybe' is not a rte label "
                               f"(one of: entailment, not_entailment)"]


def test_validator_catches_an_stsb_score_out_of_range(valid_folder):
    rewrite(valid_folder / "STS-B.tsv", lambda lines: lines[:3] + ["2\t5.5", "3\tnan"] + lines[5:])
    problems = only_problems(submission.validate_submission(str(valid_folder)))
    assert [p.split(": ", 1)[1] for p in problems["STS-B"]] == [
        "prediction '5.5' is not a number from 0.0 to 5.0", "prediction 'nan' is not a number from 0.0 to 5.0"]


def test_validator_catches_a_missing_task(valid_folder):
    os.remove(valid_folder / "QNLI.tsv")
    report = submission.validate_submission(str(valid_folder))
    assert only_problems(report) == {"QNLI": [f"{valid_folder / 'QNLI.tsv'}: file missing; expected 5463 rows "
                                              f"(5464 lines incl. header)"]}
    assert "QNLI.tsv     missing      ERROR" in str(report)


def test_validator_catches_a_shuffled_index(valid_folder):
    rewrite(valid_folder / "SST-2.tsv", lambda lines: lines[:3] + [lines[4], lines[3]] + lines[5:])
    problems = only_problems(submission.validate_submission(str(valid_folder)))
    assert [p.split(": ", 1)[1] for p in problems["SST-2"]] == [
        "index '3', expected 2 (indices must be 0..n-1 in order)",
        "index '2', expected 3 (indices must be 0..n-1 in order)"]


def test_validator_catches_a_bad_header_and_caps_row_problems(valid_folder):
    rewrite(valid_folder / "WNLI.tsv", lambda lines: ["id\tlabel"] + [f"{i}\tyes" for i in range(146)])
    problems = only_problems(submission.validate_submission(str(valid_folder)))["WNLI"]
    assert "header must be 'index\\tprediction'" in problems[0]
    assert len(problems) == 1 + submission.MAX_ROW_PROBLEMS + 1
    assert problems[-1].endswith("... and 141 more bad rows")


def test_validate_mode_of_the_cli(valid_folder, capsys):
    status, out, _ = run_cli(make_submission.main, ["--validate", str(valid_folder)], capsys)
    assert status == 0 and "valid" in out
    os.remove(valid_folder / "AX.tsv")
    status, out, err = run_cli(make_submission.main, ["--validate", str(valid_folder)], capsys)
    assert status == 2 and "AX.tsv" in out and "not a valid submission" in err


# ---------------------------------------------------------------------------------------------
# make_submission: export, validate, zip


def test_make_submission_sh_builds_a_flat_zip_of_the_eleven_files(runs, tmp_path):
    out_dir = tmp_path / "out"
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "make_submission.sh"), str(runs[0]), str(out_dir)],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert f"wrote {out_dir / 'submission.zip'}" in result.stdout
    with zipfile.ZipFile(out_dir / "submission.zip") as zf:
        assert sorted(zf.namelist()) == FILENAMES   # flat: no folders, no directory entries
        for name in FILENAMES:
            assert zf.read(name) == (out_dir / name).read_bytes()
    assert submission.validate_submission(str(out_dir)).ok


def test_make_submission_uses_templates_for_ax_and_wnli_without_runs(runs, tmp_path, capsys):
    in_dir = partial_runs(runs, tmp_path, leave_out={"ax", "wnli"})
    status, out, _ = run_cli(make_submission.main, [str(in_dir), str(tmp_path / "out")], capsys)
    assert status == 0
    assert "AX.tsv       template" in out and "WNLI.tsv     template" in out
    assert (tmp_path / "out" / "submission.zip").exists()


def test_make_submission_refuses_a_short_prediction_file(runs, tmp_path, capsys):
    in_dir = partial_runs(runs, tmp_path, leave_out={"mrpc"})
    os.makedirs(in_dir / "mrpc")
    write_logits_csv(in_dir / "mrpc" / "test_preds.csv", make_logits(ENTRY["MRPC"], rows=408))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    status, out, err = run_cli(make_submission.main, [str(in_dir), str(out_dir)], capsys)
    assert status == 2
    assert f"{in_dir / 'mrpc' / 'test_preds.csv'}: 408 prediction rows, but the MRPC test set has 1725" in out
    assert "no zip written" in err
    assert not (out_dir / "submission.zip").exists()
    assert (out_dir / "notes.txt").read_text() == "mine"


def test_failed_rebuild_keeps_the_earlier_zip_and_files(runs, exported, tmp_path, capsys):
    """A stale RTE.tsv from an earlier good export must not be zipped when the new RTE logits are bad."""
    out_dir = tmp_path / "out"
    shutil.copytree(exported, out_dir)
    submission.build_zip(str(out_dir), str(out_dir / "submission.zip"))
    old_zip = (out_dir / "submission.zip").read_bytes()
    in_dir = partial_runs(runs, tmp_path, leave_out={"rte"})
    os.makedirs(in_dir / "rte")
    (in_dir / "rte" / "test_preds.csv").write_text("1.0,oops\n")
    status, out, err = run_cli(make_submission.main, [str(in_dir), str(out_dir)], capsys)
    assert status == 2
    assert "test_preds.csv:1: not a number" in out
    assert "the existing" in err and "is from an earlier run" in err
    assert (out_dir / "submission.zip").read_bytes() == old_zip
    assert sorted(os.listdir(out_dir)) == sorted(FILENAMES + ["submission.zip"])


def test_trainer_ax_test_predictions_export_to_ax_tsv(tmp_path, capsys, tiny_bert_dir):
    """Beyond the seed, end to end: `--task_name ax --do_test` with an MNLI-shaped model, then the exporter."""
    run_dir = tmp_path / "ax"
    run_train("--task_name", "ax", "--bert_model", tiny_bert_dir, "--data_dir", os.path.join(FIXTURES, "diagnostic"),
              "--output_dir", run_dir, "--do_test", "--no_cuda", "--seed", "1", "--not-verbose")
    logits = np.loadtxt(run_dir / "test_preds.csv", delimiter=",", ndmin=2)
    assert logits.shape == (40, 3)   # the fixture's 40 diagnostic rows, MNLI's 3 label columns
    status, _, _ = run_cli(format_for_glue.main, ["-t", "ax", "-i", str(run_dir), "-o", str(tmp_path / "out"),
                                                  "--no-count-check"], capsys)
    assert status == 0
    assert [r[1] for r in read_tsv(tmp_path / "out" / "AX.tsv")] == expected_predictions(ENTRY["AX"], logits)
