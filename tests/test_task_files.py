"""Task files: GLUE tasks written out as CSV, TSV, JSON Lines, parquet and a Hugging Face dataset
give the built-in readers' features and results; multiple choice; every bad task file is one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, REPO, refused_by
from stilts.cli.evaluate import main as evaluate_main
from stilts.cli.train import main as train_main
from stilts.features import load_features, load_tokenizer
from stilts.tasks import get_task

TRAIN = ["--do_lower_case", "--not-verbose", "--seed", "5", "--train_batch_size", "8", "--eval_batch_size", "16",
         "--num_train_epochs", "1", "--learning_rate", "1e-3", "--no_features_cache"]
# Built-in task -> (its columns in the copies, the task file's keys beyond name and files)
COPIES = {
    "rte": {"text_a": "sentence1", "text_b": "sentence2", "labels": ["entailment", "not_entailment"], "metric": "acc"},
    "mrpc": {"text_a": "#1 String", "text_b": "#2 String", "labels": ["0", "1"], "metric": "acc_and_f1"},
    "stsb": {"type": "regression", "text_a": "sentence1", "text_b": "sentence2", "metric": "corr"},
}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def tokenizer(tiny_bert_dir):
    return load_tokenizer(os.path.join(tiny_bert_dir, "vocab.txt"), do_lower_case=True)


def frame(task_name, split):
    """A GLUE fixture split as a table with the copy's column names (label as in the TSV)."""
    task = get_task(task_name)
    keys = COPIES[task_name]
    rows = task.read(split, os.path.join(FIXTURES, task.folder))
    data = {"idx": [e.guid.split("-", 1)[1] for e in rows], keys["text_a"]: [e.text_a for e in rows],
            keys["text_b"]: [e.text_b for e in rows]}
    if split != "test":
        data["label"] = [e.label for e in rows]
    return pd.DataFrame(data)


def write_copy(folder, task_name, fmt, splits=("train", "dev", "test")):
    """The fixture task as a task file over files of format `fmt` (csv, tsv, jsonl, parquet) or
    through `datasets` (dataset: parquet files read by load_dataset); returns the task file's path."""
    os.makedirs(folder, exist_ok=True)
    ext = "parquet" if fmt == "dataset" else fmt
    files = {}
    for split in splits:
        data = frame(task_name, split)
        name = f"{'validation' if split == 'dev' and fmt == 'dataset' else split}.{ext}"
        path = os.path.join(folder, name)
        if ext == "csv":
            data.to_csv(path, index=False)
        elif ext == "tsv":
            data.to_csv(path, index=False, sep="\t", quoting=3)
        elif ext == "jsonl":
            data.to_json(path, orient="records", lines=True, force_ascii=False)
        else:
            data.to_parquet(path, index=False)
        files[split] = name
    spec = {"name": f"{task_name}_{fmt}", **COPIES[task_name], "label": "label", "id": "idx"}
    if fmt == "dataset":
        spec["dataset"] = {"path": ".", "splits": {s: "validation" if s == "dev" else s for s in splits}}
    else:
        spec["files"] = files
    path = os.path.join(folder, "task.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def same_features(a, b):
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids))
    assert np.array_equal(a.segment_a_lengths, b.segment_a_lengths)
    assert np.array_equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "dataset"])
@pytest.mark.parametrize("task_name", list(COPIES))
def test_a_copy_gives_the_builtin_features(tmp_path, tiny_bert_dir, task_name, fmt):
    task_file = write_copy(tmp_path / "copy", task_name, fmt)
    copy, builtin = get_task(task_file), get_task(task_name)
    assert copy.labels == builtin.labels and copy.metric == builtin.metric
    tok = tokenizer(tiny_bert_dir)
    for split in ("train", "dev", "test"):
        mine = load_features(copy, split, os.path.dirname(task_file), tok, 64)
        theirs = load_features(builtin, split, os.path.join(FIXTURES, builtin.folder), tok, 64)
        same_features(mine, theirs)


def train(argv, out):
    train_main([str(a) for a in argv] + ["--output_dir", str(out), *TRAIN])
    with open(out / "val_metrics.json") as f:
        return json.load(f)


@pytest.mark.parametrize("task_name,formats", [("rte", ["csv", "jsonl", "dataset"]), ("mrpc", ["csv"]),
                                               ("stsb", ["parquet"])])
def test_a_copy_trains_to_the_builtin_results(tmp_path, tiny_bert_dir, task_name, formats):
    model = ["--bert_model", tiny_bert_dir, "--do_train", "--do_val", "--do_test"]
    builtin = train(["--task_name", task_name, "--data_dir", os.path.join(FIXTURES, get_task(task_name).folder),
                     *model], tmp_path / "builtin")
    assert builtin["metrics"][get_task(task_name).metric] != 0  # the comparison means something
    for fmt in formats:
        task_file = write_copy(tmp_path / fmt, task_name, fmt)
        assert train(["--task_name", task_file, *model], tmp_path / f"run-{fmt}") == builtin
        for name in ("val_preds.csv", "test_preds.csv"):
            assert (tmp_path / f"run-{fmt}" / name).read_bytes() == (tmp_path / "builtin" / name).read_bytes()
        predictions = pd.read_csv(tmp_path / f"run-{fmt}" / "test_predictions.csv", dtype=str)
        assert list(predictions["id"]) == list(frame(task_name, "test")["idx"])
        logits = pd.read_csv(tmp_path / "builtin" / "test_preds.csv", header=None).to_numpy()
        if task_name == "stsb":
            assert np.allclose(predictions["prediction"].astype(float), logits[:, 0], atol=1e-6)
        else:
            assert list(predictions["prediction"]) == [get_task(task_name).labels[i] for i in logits.argmax(1)]


def test_labels_from_the_train_split_are_recorded(tmp_path, tiny_bert_dir, capsys):
    task_file = write_copy(tmp_path / "copy", "rte", "csv")
    spec = json.load(open(task_file))
    del spec["labels"]
    json.dump(spec, open(task_file, "w"))
    assert get_task(task_file).labels == ("entailment", "not_entailment")  # sorted
    out = tmp_path / "run"
    train(["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train", "--do_val", "--do_save"], out)
    assert json.load(open(out / "args.json"))["task_labels"] == ["entailment", "not_entailment"]
    # The same labels listed in another order: a head kept from the checkpoint would swap them.
    spec["labels"] = ["not_entailment", "entailment"]
    json.dump(spec, open(task_file, "w"))
    err = refused_by(capsys, train_main, ["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_val",
                                          "--bert_load_mode", "state_full_model", "--bert_load_path",
                                          out / "all_state.p", "--output_dir", tmp_path / "again", *TRAIN])
    assert "all_state.p: its run had the labels entailment, not_entailment" in err


def test_evaluate_rescores_a_task_file_run(tmp_path, tiny_bert_dir, capsys):
    task_file = write_copy(tmp_path / "copy", "mrpc", "jsonl")
    metrics = train(["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train", "--do_val"],
                    tmp_path / "run")["metrics"]
    evaluate_main(["--task-name", task_file, "--pred-file-path", str(tmp_path / "run" / "val_preds.csv"),
                   "--output-path", str(tmp_path / "rescored.json"), "--no-print"])
    assert json.load(open(tmp_path / "rescored.json")) == metrics


# ------------------------------------------------------------------------------- multiple choice


def write_choice_task(folder, list_column=False):
    """A small multiple-choice task from the MNLI fixture's premises and hypotheses (CSV, 3 choices)."""
    rows = get_task("mnli").read("train", os.path.join(FIXTURES, "MNLI"))
    hypotheses = [e.text_b for e in rows]
    data = pd.DataFrame({"premise": [e.text_a for e in rows],
                         "ending0": hypotheses, "ending1": hypotheses[1:] + hypotheses[:1],
                         "ending2": hypotheses[2:] + hypotheses[:2], "label": [i % 3 for i in range(len(rows))]})
    os.makedirs(folder, exist_ok=True)
    spec = {"name": "choice", "type": "multiple_choice", "context": "premise", "label": "label"}
    if list_column:
        data["endings"] = data[["ending0", "ending1", "ending2"]].values.tolist()
        data[["premise", "endings", "label"]].to_json(os.path.join(folder, "all.jsonl"), orient="records", lines=True)
        spec.update(choices="endings", files={s: "all.jsonl" for s in ("train", "dev", "test")})
    else:
        data.to_csv(os.path.join(folder, "all.csv"), index=False)
        spec.update(choices=["ending0", "ending1", "ending2"], files={s: "all.csv" for s in ("train", "dev", "test")})
    path = os.path.join(folder, "task.json")
    json.dump(spec, open(path, "w"))
    return path


@pytest.mark.parametrize("list_column", [False, True])
def test_multiple_choice_features(tmp_path, tiny_bert_dir, list_column):
    task = get_task(write_choice_task(tmp_path, list_column))
    assert task.is_multiple_choice and task.labels == ("0", "1", "2") and task.num_labels == 3
    features = load_features(task, "train", str(tmp_path), tokenizer(tiny_bert_dir), 32)
    examples = task.read("train", str(tmp_path))
    assert features.choices == 3 and len(features) == len(examples) and len(features.input_ids) == 3 * len(examples)
    tok = tokenizer(tiny_bert_dir)
    first = examples[0]
    for j, choice in enumerate(first.choices):  # row j of example 0 is (context, choice j), truncated as a pair
        ids_a = tok(first.text_a, add_special_tokens=False)["input_ids"]
        ids_b = tok(choice, add_special_tokens=False)["input_ids"]
        row = features.input_ids[j]
        assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id and len(row) <= 32
        assert list(row[1:features.segment_a_lengths[j] - 1]) == ids_a[:features.segment_a_lengths[j] - 2]
        assert ids_b[: len(row) - features.segment_a_lengths[j] - 1] == list(row[features.segment_a_lengths[j]:-1])
    assert list(features.labels) == [i % 3 for i in range(len(examples))]
    sub = features.subset(np.array([2, 0]))
    assert np.array_equal(sub.input_ids[0], features.input_ids[6]) and list(sub.labels) == [2, 0]
    assert np.array_equal(sub.lengths, features.lengths[[2, 0]])


def test_stilts_from_a_classification_task_into_multiple_choice(tmp_path, tiny_bert_dir):
    """Stage A on RTE, stage B on a multiple-choice task: the encoder is kept, the head starts anew."""
    stage_a = tmp_path / "rte"
    train(["--task_name", "rte", "--data_dir", os.path.join(FIXTURES, "RTE"), "--bert_model", tiny_bert_dir,
           "--do_train", "--do_val", "--do_save", "--bert_save_mode", "model_all"], stage_a)
    task_file = write_choice_task(tmp_path / "choice")
    out = tmp_path / "choice-run"
    metrics = train(["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train", "--do_val", "--do_test",
                     "--do_save", "--bert_load_mode", "state_model_only", "--bert_load_path", stage_a / "all_state.p"],
                    out)
    assert set(metrics["metrics"]) == {"acc"} and 0 <= metrics["metrics"]["acc"] <= 1
    n = len(get_task(task_file).read("dev", str(tmp_path / "choice")))
    logits = pd.read_csv(out / "val_preds.csv", header=None).to_numpy()
    assert logits.shape == (n, 3)
    predictions = pd.read_csv(out / "test_predictions.csv")
    assert set(predictions["prediction"]) <= {0, 1, 2} and len(predictions) == n
    import torch
    state = torch.load(out / "all_state.p", weights_only=True)["model"]
    assert tuple(state["classifier.weight"].shape) == (1, 32)
    # The whole model, head kept, scores the dev set as it did.
    again = train(["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_val",
                   "--bert_load_mode", "state_full_model", "--bert_load_path", out / "all_state.p"], tmp_path / "again")
    assert again["metrics"] == metrics["metrics"]


# ------------------------------------------------------------------------------- SuperGLUE examples

SUPERGLUE = {  # the columns of aps/super_glue, and the class names of its label column
    "boolq": ({"question": "is it", "passage": "it is", "idx": 0}, ["False", "True"]),
    "cb": ({"premise": "it rains", "hypothesis": "it is wet", "idx": 0}, ["entailment", "contradiction", "neutral"]),
    "copa": ({"premise": "the glass fell", "choice1": "it broke", "choice2": "it sang", "question": "effect",
              "idx": 0}, ["choice1", "choice2"]),
    "wic": ({"word": "bank", "sentence1": "a river bank", "sentence2": "a bank loan", "start1": 2, "start2": 2,
             "end1": 6, "end2": 6, "idx": 0}, ["False", "True"]),
}


@pytest.mark.parametrize("name", list(SUPERGLUE))
def test_superglue_examples_read_local_files_of_the_same_columns(tmp_path, tiny_bert_dir, name):
    import datasets

    row, names = SUPERGLUE[name]
    folder = tmp_path / name
    folder.mkdir()
    for split, label in (("train", [0, 1, 1, 0]), ("validation", [1, 0, 0, 1]), ("test", [-1] * 4)):
        columns = {k: [f"{v} {i}" if isinstance(v, str) else i for i in range(4)] for k, v in row.items()}
        features = {k: datasets.Value("string" if isinstance(v, str) else "int32") for k, v in row.items()}
        features["label"] = datasets.ClassLabel(names=names)
        data = datasets.Dataset.from_dict({**columns, "label": [max(x, 0) for x in label]},
                                          features=datasets.Features(features))
        if split == "test":  # the hub's test labels are -1 (hidden)
            data = data.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
        data.to_parquet(str(folder / f"{split}.parquet"))
    spec = json.load(open(os.path.join(REPO, "examples", "tasks", f"{name}.json")))
    assert spec["dataset"]["path"] == "aps/super_glue" and spec["dataset"]["name"] == name
    spec["dataset"] = {"path": str(folder), "splits": spec["dataset"]["splits"]}
    task_file = tmp_path / f"{name}.json"
    json.dump(spec, open(task_file, "w"))
    task = get_task(str(task_file))
    if task.is_multiple_choice:
        assert task.labels == ("0", "1")
    else:
        assert task.labels == tuple(names)
    out = tmp_path / "run"
    train(["--task_name", str(task_file), "--bert_model", tiny_bert_dir, "--do_train", "--do_val", "--do_test"], out)
    predictions = pd.read_csv(out / "test_predictions.csv", dtype=str)
    assert list(predictions["id"]) == ["0", "1", "2", "3"]
    assert set(predictions["prediction"]) <= set(task.labels)


# ------------------------------------------------------------------------------- bad task files


def bad_task(tmp_path, change):
    task_file = write_copy(tmp_path / "copy", "rte", "csv")
    spec = json.load(open(task_file))
    change(spec, tmp_path / "copy")
    json.dump(spec, open(task_file, "w"))
    return task_file


def set_key(key, value):
    return lambda spec, folder: spec.update({key: value})


def drop_key(key):
    return lambda spec, folder: spec.pop(key)


def rewrite_train(edit):
    def change(spec, folder):
        data = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
        edit(data).to_csv(folder / "train.csv", index=False)
    return change


def write_bytes(name, content):
    return lambda spec, folder: (folder / name).write_bytes(content)


BAD = [
    (set_key("text_c", "x"), "task.json: unknown key 'text_c' for a classification task"),
    (drop_key("text_a"), "task.json: missing key 'text_a'"),
    (drop_key("name"), "task.json: missing key 'name'"),
    (set_key("name", "../up"), "task.json: 'name' '../up' should be letters"),
    (set_key("type", "ranking"), "task.json: 'type' 'ranking' is not one of"),
    (set_key("type", ["classification"]), "task.json: 'type' ['classification'] is not one of"),
    (set_key("name", "MNLI"), "task.json: 'name' 'MNLI' is taken (a GLUE task"),
    (lambda spec, folder: (spec.pop("files"), spec.update(dataset={"path": ".", "data_files": 5})),
     "task.json: 'dataset' 'data_files' should be a file name"),
    (set_key("metric", "corr"), "task.json: 'metric' 'corr' does not fit a classification task"),
    (set_key("labels", ["entailment"]), "task.json: 'labels' should list two or more distinct label strings"),
    (set_key("text_b", "sentence3"), "train.csv: no column 'sentence3' (key 'text_b'); it has: idx, sentence1"),
    (set_key("labels", ["entailment", "contradiction"]), "train.csv: row 3: label 'not_entailment' is not one of"),
    (set_key("dataset", {"path": "x"}), "task.json: give either 'files' or 'dataset'"),
    (set_key("files", {"train": "train.xlsx"}), "task.json: 'files' train 'train.xlsx': unknown data file type"),
    (set_key("files", {"train": "gone.csv", "dev": "dev.csv"}), "gone.csv: file not found ('files' train of"),
    (set_key("files", {"dev": "dev.csv"}), "task.json: no train file under 'files' (it has: dev)"),
    (write_bytes("train.csv", b"idx,sentence1\n1,\xff\xfe bad\n"), "train.csv: cannot read as CSV"),
    (rewrite_train(lambda d: d.assign(label=[""] + list(d.label[1:]))), "train.csv: row 1: no value in column 'label' (key 'label')"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_task_files_are_one_line(tmp_path, tiny_bert_dir, capsys, change, message):
    task_file = bad_task(tmp_path, change)
    out = tmp_path / "out"
    err = refused_by(capsys, train_main, ["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train",
                                          "--do_val", "--output_dir", out, *TRAIN])
    assert message in err
    assert not out.exists()


def shift_rows(spec, folder):
    """A stray comma in every row's text: each data row one field wider than the header (pandas read
    such a file with the first field as an index, every column shifted)."""
    lines = (folder / "train.csv").read_text().splitlines()
    (folder / "train.csv").write_text("\n".join(lines[:1] + [line + ",extra" for line in lines[1:]]) + "\n")


def as_tsv(change_line):
    """The copy's train split as TSV, with `change_line(lines)` applied."""
    def change(spec, folder):
        data = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
        lines = data.to_csv(sep="\t", index=False).splitlines()
        (folder / "train.tsv").write_text("\n".join(change_line(lines)) + "\n")
        spec["files"]["train"] = "train.tsv"
    return change


WIDE = 1 << 20  # 1 MiB, the GLUE reader's limit on a line
MALFORMED_DATA = [
    (shift_rows, "train.csv:2: 5 comma-separated fields, but the header has 4 (a ',' inside a text without quotes?)"),
    (as_tsv(lambda lines: lines[:2] + [lines[2] + "\tstray"] + lines[3:]),
     "train.tsv:3: 5 tab-separated fields, but the header has 4 (a '\\t' inside a text?)"),
    (as_tsv(lambda lines: lines[:1] + [lines[1].replace("\t", "\t\t", 1)[:-1]] + lines[2:]), "train.tsv:2: 5 tab"),
    (write_bytes("train.csv", b"idx,sentence1,sentence2,label\n1,a\0b,c,entailment\n"),
     "train.csv:2: NUL byte in line"),
    (write_bytes("train.csv", b"idx,sentence1,sentence2,label\n1," + b"a" * (WIDE + 1) + b",c,entailment\n"),
     "train.csv:2: cannot read as CSV: field larger than field limit"),
    (write_bytes("train.csv", b"idx,sentence1,idx,label\n1,a,c,entailment\n"), "train.csv:1: column 'idx' is named twice"),
    (write_bytes("train.csv", b""), "train.csv: empty file"),
]


@pytest.mark.parametrize("change,message", MALFORMED_DATA)
def test_malformed_csv_and_tsv_rows_are_one_line(tmp_path, tiny_bert_dir, capsys, change, message):
    """Rows of another width than the header, NUL bytes, fields over 1 MiB: refused as the GLUE reader
    refuses them, naming the file and line; nothing written."""
    task_file = bad_task(tmp_path, change)
    out = tmp_path / "out"
    err = refused_by(capsys, train_main, ["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train",
                                          "--output_dir", out, *TRAIN])
    assert message in err
    assert not out.exists()


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON parser can go


@pytest.mark.parametrize("where", ["task file", "JSON Lines row", "JSON Lines text", "parquet text"])
def test_deep_json_nul_and_huge_values_in_typed_files(tmp_path, tiny_bert_dir, capsys, where):
    """JSON nested past the parser's depth is one line (not a RecursionError); a NUL character or a text
    over 1 MiB inside JSON Lines or parquet values is refused like the same bytes in a TSV line."""
    task_file = write_copy(tmp_path, "rte", "parquet" if where == "parquet text" else "jsonl")
    expected = {"task file": "task.json: not a JSON task file (nested too deeply)",
                "JSON Lines row": "train.jsonl:2: not valid JSON (nested too deeply)",
                "JSON Lines text": "train.jsonl:1: NUL character in column 'sentence1' (key 'text_a'); not text",
                "parquet text": "train.parquet: row 1: column 'sentence1' (key 'text_a') holds 1048577 characters"}
    if where == "task file":
        (tmp_path / "task.json").write_text(DEEP)
    elif where == "parquet text":
        data = pd.read_parquet(tmp_path / "train.parquet")
        data.loc[0, "sentence1"] = "a" * (WIDE + 1)
        data.to_parquet(tmp_path / "train.parquet")
    else:
        lines = (tmp_path / "train.jsonl").read_text().splitlines()
        if where == "JSON Lines row":
            lines[1] = DEEP
        else:
            row = json.loads(lines[0])
            row["sentence1"] = "a\u0000b"
            lines[0] = json.dumps(row)
        (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    err = refused_by(capsys, train_main, ["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_train",
                                          "--output_dir", tmp_path / "out", *TRAIN])
    assert expected[where] in err


@pytest.mark.parametrize("content,message", [
    ("{", "task.json: not a JSON task file"),
    ("[1]", "task.json: a task file holds a JSON object, found list"),
])
def test_unreadable_task_files(tmp_path, tiny_bert_dir, capsys, content, message):
    (tmp_path / "task.json").write_text(content)
    err = refused_by(capsys, train_main, ["--task_name", tmp_path / "task.json", "--bert_model", tiny_bert_dir,
                                          "--do_val", "--output_dir", tmp_path / "out", *TRAIN])
    assert message in err
    assert "task file not found" in refused_by(capsys, train_main, [
        "--task_name", tmp_path / "nope.json", "--bert_model", tiny_bert_dir, "--do_val",
        "--output_dir", tmp_path / "out", *TRAIN])


@pytest.mark.parametrize("regression_label,choice_change,message", [
    ("high", None, "train.parquet: row 1: label 'high' is not a number (stsb_parquet is a regression task)"),
    (None, "short_list", "all.jsonl:2: column 'endings' (key 'choices') should hold a list of 3 texts"),
    (None, "bad_label", "all.jsonl:1: label '7' is not a choice number from 0 to 2"),
])
def test_bad_rows_of_regression_and_choice_tasks(tmp_path, capsys, regression_label, choice_change, message):
    from stilts.errors import StiltsError

    if regression_label is not None:
        task_file = write_copy(tmp_path, "stsb", "parquet")
        data = pd.read_parquet(tmp_path / "train.parquet")
        data["label"] = [regression_label] + list(data["label"].astype(str))[1:]
        data.to_parquet(tmp_path / "train.parquet")
        split = "train"
    else:
        task_file = write_choice_task(tmp_path, list_column=True)
        lines = open(tmp_path / "all.jsonl").read().splitlines()
        first, second = json.loads(lines[0]), json.loads(lines[1])
        if choice_change == "short_list":
            second["endings"] = second["endings"][:2]
        else:
            first["label"] = 7
        lines[0], lines[1] = json.dumps(first), json.dumps(second)
        (tmp_path / "all.jsonl").write_text("\n".join(lines) + "\n")
        split = "dev"
    with pytest.raises(StiltsError) as e:
        get_task(task_file).read(split, str(tmp_path))
    assert message in str(e.value)


def test_datasets_missing_is_one_line(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    task_file = write_copy(tmp_path / "copy", "rte", "dataset")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    err = refused_by(capsys, train_main, ["--task_name", task_file, "--bert_model", tiny_bert_dir, "--do_val",
                                          "--output_dir", tmp_path / "out", *TRAIN])
    assert "task.json: 'dataset' needs the datasets package: pip install 'stilts[datasets]'" in err


def test_a_subprocess_run_reports_a_bad_row_without_traceback(tmp_path, tiny_bert_dir):
    task_file = bad_task(tmp_path, set_key("labels", ["entailment", "contradiction"]))
    result = subprocess.run([sys.executable, "-m", "stilts.cli.train", "--task_name", task_file, "--bert_model",
                             tiny_bert_dir, "--do_train", "--output_dir", str(tmp_path / "out"), *TRAIN],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stilts_run_takes_task_files_as_intermediate_and_targets(tmp_path, tiny_bert_dir):
    from stilts.cli.run import main as run_main

    intermediate = write_copy(tmp_path / "rte", "rte", "jsonl")
    choice = write_choice_task(tmp_path / "choice")
    out = tmp_path / "study"
    run_main(["--intermediate", intermediate, "--targets", f"mrpc,{choice}", "--seeds", "1", "--compare",
              "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--output_dir", str(out),
              *[a for a in TRAIN if a not in ("--seed", "5")]])
    summary = json.load(open(out / "summary.json"))
    assert summary["intermediate"] == "rte_jsonl" and set(summary["targets"]) == {"mrpc", "choice"}
    assert summary["targets"]["choice"]["stilts"]["metric"] == "acc"
    assert os.path.isfile(out / "intermediate_rte_jsonl" / "all_state.p")
    assert os.path.isfile(out / "choice" / "baseline" / "seed_1" / "test_predictions.csv")
    assert os.path.isfile(out / "submission_input" / "choice" / "test_predictions.csv")
    args = json.load(open(out / "choice" / "stilts" / "seed_1" / "args.json"))
    assert args["task_name"] == choice and args["bert_load_mode"] == "state_model_only"


@pytest.mark.slow
def test_multiple_choice_learns_with_minilm(tmp_path, minilm_dir):
    """Which of a premise's three MNLI hypotheses is entailed (real text, tests/fixtures/glue_learn):
    MiniLM gets well above the 1/3 of chance in one epoch (0.635 when written, seed 1)."""
    task_file = os.path.join(REPO, "tests", "fixtures", "glue_learn", "MNLI-choice", "task.json")
    out = tmp_path / "run"
    train_main(["--task_name", task_file, "--bert_model", minilm_dir, "--do_lower_case", "--do_train", "--do_val",
                "--output_dir", str(out), "--seed", "1", "--learning_rate", "1e-4", "--num_train_epochs", "1",
                "--train_batch_size", "16", "--max_seq_length", "64", "--not-verbose"])
    acc = json.load(open(out / "val_metrics.json"))["metrics"]["acc"]
    assert acc > 0.45, acc  # chance: 1/3; 200 dev questions, so 0.45 is 3.5 standard deviations above it
