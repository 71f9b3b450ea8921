"""`glue/train.py --args_json RUN/args.json [flags]`: a finished run replayed from its own record."""
import json

import pytest

from conftest import RTE, refused, rte_args
from stilts.cli.train import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert_dir):
    """A tiny RTE run that drew its seed (-1): the replay must find the drawn one in args.json."""
    out = tmp_path_factory.mktemp("replay") / "run"
    main(rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--data_dir", RTE, "--num_train_epochs", "1",
                  "--train_batch_size", "8", "--seed", "-1"))
    return out


def test_a_replayed_run_scores_the_same(finished_run, tmp_path):
    recorded = json.loads((finished_run / "args.json").read_text())
    assert recorded["seed"] != -1
    main(["--args_json", str(finished_run / "args.json"), "--output_dir", str(tmp_path / "again")])
    assert (tmp_path / "again" / "val_metrics.json").read_bytes() == (finished_run / "val_metrics.json").read_bytes()
    replayed = json.loads((tmp_path / "again" / "args.json").read_text())
    assert {k: v for k, v in replayed.items() if k != "output_dir"} == \
        {k: v for k, v in recorded.items() if k != "output_dir"}


def test_flags_after_the_record_change_it(finished_run, tmp_path):
    main(["--args_json", str(finished_run / "args.json"), "--output_dir", str(tmp_path / "other"),
          "--learning_rate", "1e-3"])
    assert json.loads((tmp_path / "other" / "args.json").read_text())["learning_rate"] == 1e-3
    assert (tmp_path / "other" / "val_metrics.json").read_bytes() != (finished_run / "val_metrics.json").read_bytes()


def test_replaying_into_the_runs_own_folder_is_refused(finished_run, capsys):
    before = (finished_run / "val_metrics.json").read_bytes()
    err = refused(capsys, "--args_json", finished_run / "args.json")
    assert str(finished_run) in err and (finished_run / "val_metrics.json").read_bytes() == before


@pytest.mark.parametrize("change, message", [
    ({"learning_rate": "fast"}, "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
    ({"bert_load_mode": "everything"}, "argument --bert_load_mode/--bert-load-mode: invalid choice"),
    ({"no_such_setting": 1}, "'no_such_setting' is not a glue/train.py setting"),
    ({"max_seq_length": [32]}, "max_seq_length: expected a single value, found array"),
])
def test_a_damaged_record_is_one_line_naming_it(finished_run, tmp_path, capsys, change, message):
    record = tmp_path / "args.json"
    record.write_text(json.dumps({**json.loads((finished_run / "args.json").read_text()), **change}))
    err = refused(capsys, "--args_json", record, "--output_dir", tmp_path / "out")
    assert f"{record}: " in err and message in err
    assert not (tmp_path / "out").exists()


def test_args_json_without_a_value_is_one_line(capsys):
    assert "--args_json: expected one argument" in refused(capsys, "--args_json")


def test_a_record_that_is_not_a_json_object(tmp_path, capsys):
    (tmp_path / "args.json").write_text("[1, 2]")
    err = refused(capsys, "--args_json", tmp_path / "args.json", "--output_dir", tmp_path / "out")
    assert "holds a JSON array, expected object" in err
