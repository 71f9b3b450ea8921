"""Hostile or broken inputs to glue/train.py: each one is a one-line error and exit status 2.

Most cases call glue/train.py's `main` in this process (an exception other than our error type
would fail the test just as a traceback would); the pickle payload runs the real script.
"""
import math
import os
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, RTE, make_tiny_bert, refused, rte_args, run_train
from stilts.cli.train import main
from stilts.errors import StiltsError
from stilts.modeling import ModelSource, build_model
from stilts.tasks import get_task

class Payload:
    """Unpickling this runs a shell command: what a malicious `.p` file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ----------------------------------------------------------------------------- checkpoints
def test_pickle_payload_is_refused_without_running_it(tiny_bert_dir, tmp_path, capsys):
    fired = tmp_path / "payload-fired"
    torch_file = tmp_path / "torch-save.p"
    torch.save({"model": Payload(fired)}, torch_file)
    torch.load(torch_file, weights_only=False)
    assert fired.exists(), "the payload must be live for this test to mean anything"
    fired.unlink()

    args = rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                    "--bert_load_mode", "state_full_model", "--bert_load_path", torch_file)
    result = run_train(*args, check=False)  # the real script, once
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{torch_file}: refused to load" in result.stderr and "GLOBAL posix.system" in result.stderr
    assert not fired.exists(), "loading the checkpoint ran its payload"

    plain_pickle = tmp_path / "plain.p"
    plain_pickle.write_bytes(pickle.dumps({"model": Payload(fired)}))
    err = refused(capsys, *[str(plain_pickle) if a == str(torch_file) else a for a in args])
    assert f"{plain_pickle}: refused to load" in err
    assert not fired.exists(), "loading the checkpoint ran its payload"


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, tiny_bert_dir):
    """name -> (load mode, file): checkpoints that do not fit the tiny (hidden 32) RTE model."""
    folder = tmp_path_factory.mktemp("checkpoints")
    rte, mnli = get_task("rte"), get_task("mnli")
    config = ModelSource(tiny_bert_dir).config()

    def save(name, obj):
        torch.save(obj, folder / name)
        return folder / name

    truncated = save("truncated.p", build_model(config, rte).state_dict())
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    wider = ModelSource(make_tiny_bert(folder / "hidden-48", hidden_size=48)).config()
    return {
        "truncated": ("full_model_only", truncated),
        "hidden 48": ("model_only", save("hidden48.p", build_model(wider, rte).state_dict())),
        "architecture": ("model_only", save("gpt.p", {"transformer.h.0.attn.c_attn.weight": torch.zeros(32, 96)})),
        "3-way head": ("full_model_only", save("mnli.p", build_model(config, mnli).state_dict())),
        "not all_state": ("state_full_model", save("plain.p", build_model(config, rte).state_dict())),
    }


@pytest.mark.parametrize("name,expected", [
    ("truncated", "not a readable checkpoint (truncated or corrupt?)"),
    ("hidden 48", "has shape [30522, 48] but the model needs [30522, 32]; (another model size?"),
    ("architecture", "does not fit the model: unexpected keys ['bert.transformer.h.0.attn.c_attn.weight']"),
    ("3-way head", "head 'classifier.weight' has shape [3, 32] but the model needs [2, 32]"),
    ("not all_state", "not an all_state.p checkpoint"),
])
def test_checkpoint_that_does_not_fit(bad_checkpoints, tiny_bert_dir, tmp_path, capsys, name, expected):
    mode, path = bad_checkpoints[name]
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_val", "--data_dir", RTE,
                                    "--bert_load_mode", mode, "--bert_load_path", path))
    assert f"{path}:" in err and expected in err


def test_model_all_checkpoint_cannot_resume(tiny_bert_dir, tmp_path, capsys):
    main(rte_args(tiny_bert_dir, tmp_path / "saved", "--do_val", "--do_save", "--bert_save_mode", "model_all",
                  "--data_dir", RTE))
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_train", "--data_dir", RTE,
                                    "--bert_load_mode", "state_all",
                                    "--bert_load_path", tmp_path / "saved" / "all_state.p"))
    assert "the checkpoint has no optimizer, scheduler, train_state" in err and "--bert_save_mode all" in err


# ----------------------------------------------------------------------------- data files
def rte_train_bytes():
    with open(os.path.join(RTE, "train.tsv"), "rb") as f:
        return f.read()


def with_line(number, line):
    lines = rte_train_bytes().splitlines(keepends=True)
    return b"".join(lines[:number - 1] + [line] + lines[number:])


@pytest.mark.parametrize("name,content,expected", [
    ("latin-1", rte_train_bytes() + "99\tCafé crème.\tA drink.\tentailment\n".encode("latin-1"),
     "train.tsv:42: not valid UTF-8"),
    ("utf-16", rte_train_bytes().decode("utf-8").encode("utf-16"), "train.tsv:1: NUL byte"),
    ("NUL byte", with_line(5, b"7\tA\0B.\tC.\tentailment\n"), "train.tsv:5: NUL byte"),
    ("header only", rte_train_bytes().splitlines(keepends=True)[0], "no examples (empty train split)"),
    ("zero bytes", b"", "no examples (empty train split)"),
    ("enormous line", with_line(3, b"7\t" + b"word " * 400_000 + b"\tC.\tentailment\n"),
     "train.tsv:3: line longer than 1048576 bytes"),
    ("too few columns", with_line(4, b"7\tonly one sentence\n"), "train.tsv:4: expected at least 4 tab-separated"),
    ("extra column", with_line(4, b"7\tA.\tmiddle\tB.\tentailment\n"),
     "train.tsv:4: 5 tab-separated fields, but the header has 4"),
    ("unknown label", with_line(2, b"7\tA.\tB.\tmaybe\n"), "train.tsv:2: unknown label 'maybe' for rte"),
])
def test_broken_data_file(tiny_bert_dir, tmp_path, capsys, name, content, expected):
    (tmp_path / "train.tsv").write_bytes(content)
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", "--do_train", "--data_dir", tmp_path))
    assert str(tmp_path / "train.tsv") in err and expected in err


@pytest.mark.parametrize("score", ["nan", "inf", "1e400", "high"])
def test_regression_label_must_be_a_finite_number(tmp_path, score):
    with open(os.path.join(FIXTURES, "STS-B", "train.tsv"), "rb") as f:
        lines = f.read().splitlines(keepends=True)
    lines[3] = lines[3].rsplit(b"\t", 1)[0] + b"\t" + score.encode() + b"\n"
    (tmp_path / "train.tsv").write_bytes(b"".join(lines))
    with pytest.raises(StiltsError, match=f"train.tsv:4: label '{score}' is not a number"):
        get_task("stsb").read("train", str(tmp_path))


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("extra,expected", [
    (["--do_train", "--data_dir", "{tmp}"], "train.tsv: file not found (needed by --do_train for rte)"),
    (["--do_val", "--data_dir", RTE, "--task_name", "glu"], "unknown task 'glu'"),
    (["--do_val", "--data_dir", RTE, "--bert_load_mode", "state_everything"],
     "--bert_load_mode/--bert-load-mode: invalid choice: 'state_everything'"),
])
def test_bad_arguments(tiny_bert_dir, tmp_path, capsys, extra, expected):
    extra = [str(tmp_path) if a == "{tmp}" else a for a in extra]
    err = refused(capsys, *rte_args(tiny_bert_dir, tmp_path / "out", *extra))
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_folder_is_not_touched(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "val_preds.csv").write_text("earlier results\n")
    (out / "all_state.p").write_bytes(b"earlier weights")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    err = refused(capsys, *rte_args(tiny_bert_dir, out, "--do_train", "--do_val", "--do_save", "--data_dir", RTE))
    assert "not empty" in err and "--force-overwrite" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- fuzzing the TSV reader
SPLITS = [(task, split) for task in ("rte", "cola", "mrpc", "stsb", "qqp", "mnli", "sst", "ax")
          for split in get_task(task).files]
FIELD = st.text(st.sampled_from("ab \t\r\"'\\é\u2028\x00\x0b") | st.characters(), max_size=12)
LABEL = st.sampled_from(["entailment", "not_entailment", "neutral", "contradiction", "0", "1", "2.5", "nan",
                         "-inf", "1e400", "", " 1 "])


@st.composite
def tsv_files(draw):
    """UTF-8 text of tab-separated rows, mostly of one width (as real files are), some ragged."""
    width = draw(st.integers(1, 12))
    row = st.lists(FIELD | LABEL, min_size=width, max_size=width) | st.lists(FIELD | LABEL, max_size=12)
    rows = draw(st.lists(row.map("\t".join), max_size=8))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + newline.join(rows).encode("utf-8", "surrogatepass")


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_or_refuse(task_name, split, folder, content):
    task = get_task(task_name)
    path = task.path(split, folder)
    with open(path, "wb") as f:
        f.write(content)
    try:
        examples = task.read(split, str(folder))
    except StiltsError as e:
        assert str(e).startswith(path + ":"), e
        return
    for example in examples:
        if split == "test":
            assert example.label is None
        elif task.is_regression:
            assert isinstance(example.label, float) and math.isfinite(example.label)
        else:
            assert example.label in task.labels


@FUZZ
@given(split=st.sampled_from(SPLITS), content=st.binary(max_size=600))
def test_fuzz_reader_on_random_bytes(fuzz_dir, split, content):
    read_or_refuse(*split, fuzz_dir, content)


@FUZZ
@given(split=st.sampled_from(SPLITS), content=tsv_files())
def test_fuzz_reader_on_random_rows(fuzz_dir, split, content):
    read_or_refuse(*split, fuzz_dir, content)
