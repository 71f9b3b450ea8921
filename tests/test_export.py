"""stilts-export: a run's model as a transformers folder. For a classification, a regression and a
multiple-choice run of the tiny BERT, the folder loaded with transformers' Auto classes (and
pipeline() for classification) gives the logits of the run's val_preds.csv, and the labels keep
their names; bad sources and folders are one line, leaving nothing behind."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FIXTURES, REPO, refused_by, rte_args, run_study
from stilts.cli.export import main as export_main
from stilts.cli.train import main as train_main
from stilts.tasks import get_task

MC_TASK = os.path.join(REPO, "tests", "fixtures", "glue_learn", "MNLI-choice", "task.json")
MAX_LEN = 128


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tmp_path_factory):
    """A finished run of each kind, with its all_state.p (model_all) and dev predictions."""
    out = tmp_path_factory.mktemp("runs")
    tasks = {"rte": ("rte", os.path.join(FIXTURES, "RTE")), "stsb": ("stsb", os.path.join(FIXTURES, "STS-B")),
             "choice": (MC_TASK, None)}
    folders = {}
    for name, (task, data_dir) in tasks.items():
        folders[name] = out / name
        argv = rte_args(tiny_bert_dir, folders[name], "--do_train", "--do_val", "--do_save", "--bert_save_mode",
                        "model_all", "--train_examples_number", "16", "--num_train_epochs", "1",
                        "--max_seq_length", str(MAX_LEN), "--seed", "1", "--learning_rate", "1e-3")
        argv[argv.index("rte")] = task
        if data_dir:
            argv += ["--data_dir", data_dir]
        train_main(argv)
    return folders


def export(source, out):
    export_main([str(source), "--out", str(out)])
    return out


def dev_rows(task_spec, data_dir, tokenizer):
    """The dev examples whose tokens fit MAX_LEN (where stilts truncates as the seed did, a pipeline
    truncates its own way), with their row numbers."""
    task = get_task(task_spec)
    examples = task.read("dev", data_dir or task.default_folder())
    rows = [i for i, e in enumerate(examples)
            if len(tokenizer(e.text_a, e.text_b)["input_ids"]) <= MAX_LEN]
    assert len(rows) > 5
    return [examples[i] for i in rows], rows


def val_logits(folder):
    return pd.read_csv(folder / "val_preds.csv", header=None).to_numpy()


@pytest.mark.parametrize("name,task_spec,data_dir,labels", [
    ("rte", "rte", os.path.join(FIXTURES, "RTE"), {0: "entailment", 1: "not_entailment"}),
    ("stsb", "stsb", os.path.join(FIXTURES, "STS-B"), None),
])
def test_an_exported_model_gives_the_runs_logits(runs, tmp_path, name, task_spec, data_dir, labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = export(runs[name], tmp_path / "export")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= set(os.listdir(out))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertForSequenceClassification" and tokenizer.model_max_length == MAX_LEN
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == ("regression" if labels is None else "single_label_classification")
    if labels is not None:  # the label names round-trip, in logit-column order
        assert model.config.id2label == labels and model.config.label2id == {v: k for k, v in labels.items()}
    assert "stilts" not in json.dumps(config)  # no stilts-only setting (its attention) in the config
    examples, rows = dev_rows(task_spec, data_dir, tokenizer)
    batch = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(logits, val_logits(runs[name])[rows], atol=1e-5, rtol=1e-5)
    if labels is not None:  # and the pipeline a user would call gives each label the run's probability
        classify = pipeline("text-classification", model=str(out))
        said = classify([{"text": e.text_a, "text_pair": e.text_b} for e in examples], top_k=None)
        readable = pd.read_csv(runs[name] / "val_predictions.csv").iloc[rows]
        for scores, (_, row) in zip(said, readable.iterrows()):
            assert {s["label"]: pytest.approx(s["score"], abs=1e-5) for s in scores} == \
                {label: row[f"p_{label}"] for label in labels.values()}
            assert max(scores, key=lambda s: s["score"])["label"] == row["prediction"]
    card = (out / "README.md").read_text()
    assert "- Target task: " + get_task(task_spec).name in card and "- Seed: 1" in card
    assert "--train_examples_number 16" in card and "## Dev metrics" in card


def test_a_multiple_choice_model_exports_to_the_multiple_choice_class(runs, tmp_path):
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    out = export(runs["choice"] / "all_state.p", tmp_path / "export")
    model = AutoModelForMultipleChoice.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertForMultipleChoice"
    task = get_task(MC_TASK)
    examples = task.read("dev", task.default_folder())
    logits, rows = [], []
    for row, example in enumerate(examples):
        pairs = tokenizer([example.text_a] * len(example.choices), list(example.choices), padding=True,
                          return_tensors="pt")
        if pairs["input_ids"].shape[1] > MAX_LEN:  # truncated: stilts as the seed did, transformers its own way
            continue
        with torch.no_grad():
            logits.append(model(**{k: v[None] for k, v in pairs.items()}).logits[0].numpy())
        rows.append(row)
    assert len(rows) > len(examples) // 2
    np.testing.assert_allclose(np.array(logits), val_logits(runs["choice"])[rows], atol=1e-5, rtol=1e-5)
    assert "AutoModelForMultipleChoice" in (out / "README.md").read_text()


def test_a_stage_b_run_names_its_intermediate_task(tiny_bert_dir, runs, tmp_path):
    stage_b = tmp_path / "stage_b"
    train_main(rte_args(tiny_bert_dir, stage_b, "--do_train", "--do_val", "--do_save", "--bert_save_mode",
                        "model_all", "--train_examples_number", "8", "--num_train_epochs", "1", "--seed", "2",
                        "--data_dir", os.path.join(FIXTURES, "RTE"), "--bert_load_mode", "state_model_only",
                        "--bert_load_path", str(runs["stsb"] / "all_state.p")))
    card = (export(stage_b, tmp_path / "export") / "README.md").read_text()
    assert "through stsb" in card and "- Intermediate task: stsb (stage B started from the encoder of" in card


def test_bad_sources_and_folders_are_one_line(runs, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert "is not empty; name a new folder" in refused_by(capsys, export_main, [runs["rte"], "--out", taken])
    assert os.listdir(taken) == ["notes.txt"]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    err = refused_by(capsys, export_main, [empty, "--out", tmp_path / "a"])
    assert "no all_state.p or all_state.safetensors in this run folder" in err
    plain = tmp_path / "plain.bin"
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2)}, plain)
    assert "a plain state dict, without the record" in refused_by(capsys, export_main, [plain, "--out", tmp_path / "b"])
    garbage = tmp_path / "garbage.p"
    garbage.write_bytes(b"not a checkpoint")
    assert "garbage.p: not a torch checkpoint" in refused_by(capsys, export_main, [garbage, "--out", tmp_path / "c"])
    assert not {"a", "b", "c"} & set(os.listdir(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no half-built folder left


@pytest.mark.slow  # two studies: see conftest.py
def test_a_study_exports_the_best_dev_run_of_each_target(tiny_bert_dir, tmp_path):
    """stilts-run --export: OUT/export/<target>/ is the best dev run of the target (any arm), with a
    model card naming its restarts; a repeated study replaces it."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "study"
    for _ in range(2):  # the second time every run is finished: the export is made again
        result = run_study(out, tiny_bert_dir, "--export", targets="rte", seeds="1,2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["targets"]["rte"]
    runs = [(arm, run) for arm in ("stilts", "baseline") for run in entry[arm]["runs"]]
    arm, best = max(runs, key=lambda pair: pair[1]["value"])
    assert f"exported rte ({arm} seed {best['seed']}, the best dev acc)" in result.stdout
    exported = out / "export" / "rte"
    card = (exported / "README.md").read_text()
    assert "the best of 2 restarts by dev acc" in card and f"| {best['seed']} | {best['value']:.4f} |" in card
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    trained = torch.load(out / best["dir"] / "all_state.p", weights_only=True)["model"]
    assert torch.equal(model.classifier.weight, trained["classifier.weight"])
    assert not [name for name in os.listdir(out / "export") if name.startswith(".")]  # no half-built folder
