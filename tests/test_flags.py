"""Flags that would crash a run hours in, or silently train otherwise, are refused before it starts:
by glue/train.py, and by stilts-run before its first run."""
import pytest

from conftest import FIXTURES, RTE, refused, rte_args
from stilts.cli import run as stilts_run
from stilts.cli.train import main

BAD_FLAGS = [
    (["--learning_rate", "nan"], "--learning_rate nan: must be a number > 0"),
    (["--learning_rate", "inf"], "--learning_rate inf: must be a number > 0"),
    (["--learning_rate", "0"], "--learning_rate 0.0: must be a number > 0"),
    (["--learning_rate=-1e-5"], "--learning_rate -1e-05: must be a number > 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0: must be a number > 0 with --do_train"),
    (["--num_train_epochs=-1"], "--num_train_epochs -1.0: must be a number > 0 with --do_train"),
    (["--warmup_proportion=-0.1"], "--warmup_proportion -0.1: must be a number from 0 to 1"),
    (["--warmup_proportion", "1.5"], "--warmup_proportion 1.5: must be a number from 0 to 1"),
    (["--warmup_proportion", "nan"], "--warmup_proportion nan: must be a number from 0 to 1"),
    (["--max_grad_norm=-1"], "--max_grad_norm -1.0: must be a number >= 0"),
    (["--train_examples_number", "0"], "--train_examples_number 0: must be at least 1"),
    (["--train_save_every", "0"], "--train_save_every 0: must be at least 1"),
    (["--pad_to_multiple_of", "0"], "--pad_to_multiple_of 0: must be at least 1"),
    (["--max_seq_length", "2"], "--max_seq_length 2: rte inputs are [CLS] a [SEP] b [SEP], which needs at least 5"),
    (["--max_seq_length", "4"], "--max_seq_length 4: rte inputs are [CLS] a [SEP] b [SEP]"),
    (["--max_seq_length", "513"], "has position embeddings for 512 tokens (max_position_embeddings"),
    (["--seed=-5"], "--seed -5: must be -1 (draw one) or from 0 to 2**32 - 1"),
    (["--seed", str(2 ** 32)], f"--seed {2 ** 32}: must be -1 (draw one) or from 0 to 2**32 - 1"),
    (["--learn", "1e-4"], "unrecognized arguments: --learn 1e-4"),  # no abbreviations: every flag spelt out
]


@pytest.mark.parametrize("extra,expected", BAD_FLAGS)
def test_train_refuses_bad_flags_before_writing(tiny_bert_dir, tmp_path, capsys, extra, expected):
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_train", "--do_val",
                                    "--data_dir", RTE, *extra))
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_single_sentence_task_needs_three_tokens(tiny_bert_dir, tmp_path, capsys):
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--task_name", "sst",
                                    "--data_dir", f"{FIXTURES}/SST-2", "--max_seq_length", "2"))
    assert "--max_seq_length 2: sst inputs are [CLS] a [SEP], which needs at least 3 tokens" in err
    # Epochs only matter when training: an evaluation-only run may keep the default.
    main(rte_args(tiny_bert_dir, tmp_path / "eval", "--do_val", "--task_name", "sst",
                  "--data_dir", f"{FIXTURES}/SST-2", "--num_train_epochs", "0"))
    assert (tmp_path / "eval" / "val_metrics.json").is_file()


@pytest.mark.parametrize("extra,expected", [
    (["--learning_rate", "nan"], "--learning_rate nan: must be a number > 0"),
    (["--max_seq_length", "513"], "has position embeddings for 512 tokens"),
    (["--intermediate_args", "--num_train_epochs 0"], "--num_train_epochs 0.0: must be a number > 0"),
    (["--warmup_proportion", "2"], "--warmup_proportion 2.0: must be a number from 0 to 1"),
])
def test_stilts_run_refuses_bad_pass_through_flags_before_stage_a(tiny_bert_dir, tmp_path, capsys, extra,
                                                                   expected):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as stop:
        stilts_run.main(["--intermediate", "mnli", "--targets", "rte", "--restarts", "1", "--bert_model",
                       tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
