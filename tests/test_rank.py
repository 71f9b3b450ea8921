"""stilts-rank end to end on the fixtures with a tiny BERT: the rankings, their JSON, the evaluation
against a study's measured gains, and bad command lines."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES, VOCAB, refused_by
from stilts import ranking_metrics
from stilts.cli.rank import main as rank_main
from stilts.cli.train import main as train_main

CANDIDATES = ("mnli", "qnli", "sst")
TRAIN = ["--do_lower_case", "--not-verbose", "--seed", "1", "--num_train_epochs", "1", "--train_batch_size", "8",
         "--train_examples_number", "16", "--learning_rate", "1e-3", "--no_features_cache"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert_dir):
    """A study folder as stilts-run leaves it: a stage A per candidate, and a summary whose gains
    for rte are set by hand (sst > mnli > qnli)."""
    out = tmp_path_factory.mktemp("study")
    for name in CANDIDATES:
        train_main(["--task_name", name, "--data_dir",
                    os.path.join(FIXTURES, {"mnli": "MNLI", "qnli": "QNLI", "sst": "SST-2"}[name]),
                    "--bert_model", tiny_bert_dir, "--do_train", "--do_save", "--bert_save_mode", "model_all",
                    "--output_dir", str(out / f"intermediate_{name}"), *TRAIN])
    gains = {"mnli": 0.02, "qnli": -0.01, "sst": 0.05}
    summary = {"intermediates": list(CANDIDATES), "targets": {"rte": {
        "majority_baseline": 0.575, "baseline": {"mean": 0.6, "runs": []},
        **{f"stilts:{name}": {"mean": 0.6 + gain, "runs": [], "gain": {"mean": gain}} for name, gain in gains.items()}}}}
    (out / "summary.json").write_text(json.dumps(summary))
    return out, gains


def rank(*argv):
    rank_main([str(a) for a in argv])


def test_rankings_and_their_evaluation(study, tiny_bert_dir, tmp_path, capsys):
    out, gains = study
    result_path = tmp_path / "r.json"
    rank("--target", "rte", "--candidates", ",".join(CANDIDATES), "--study", out, "--glue_dir", FIXTURES,
         "--embedding_model", tiny_bert_dir, "--max_examples", "30", "--json", result_path)
    printed = capsys.readouterr().out
    result = json.loads(result_path.read_text())
    assert result["target"] == "rte" and set(result["methods"]) == {"semb", "textemb", "logme"}
    values = {name: 0.6 + gain for name, gain in gains.items()}
    for method, entry in result["methods"].items():
        scores = entry["scores"]
        assert set(scores) == set(CANDIDATES) and all(np.isfinite(list(scores.values())))
        assert entry["ranking"] == sorted(scores, key=lambda name: -scores[name])
        assert entry["seconds"] > 0 and f"{method} (" in printed
        assert result["evaluation"][method] == {
            "ndcg@3": pytest.approx(ranking_metrics.ndcg_at_k(scores, gains, 3)),
            "regret@1": pytest.approx(ranking_metrics.regret_at_k(scores, values, 1)),
            "regret@3": pytest.approx(ranking_metrics.regret_at_k(scores, values, 3)),
            "spearman": pytest.approx(ranking_metrics.spearman(scores, gains))}
    assert result["evaluation"]["random"]["spearman"] == pytest.approx(0.0)
    assert result["measured"]["sst"] == {"gain": 0.05, "score": pytest.approx(0.65)}
    # Regret@3 of three candidates: the best is always among the top 3.
    assert all(result["evaluation"][m]["regret@3"] == 0 for m in ("semb", "textemb", "logme"))
    assert "| logme |" in printed and "| random |" in printed


def test_a_dataset_is_most_similar_to_itself(tmp_path, tiny_bert_dir, capsys):
    """SEmb and TextEmb of RTE against a copy of RTE and two other tasks: the copy scores 1."""
    copy = tmp_path / "RTE-copy"
    shutil.copytree(os.path.join(FIXTURES, "RTE"), copy)
    task_file = tmp_path / "rte_copy.json"
    task_file.write_text(json.dumps({"name": "rte_copy", "files": {"train": "RTE-copy/train.tsv"},
                                     "text_a": "sentence1", "text_b": "sentence2", "label": "label"}))
    rank("--target", "rte", "--candidates", f"mnli,sst,{task_file}", "--glue_dir", FIXTURES, "--bert_model",
         tiny_bert_dir, "--embedding_model", tiny_bert_dir, "--json", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert "evaluation" not in result and set(result["methods"]) == {"semb", "textemb"}
    for entry in result["methods"].values():
        assert entry["ranking"][0] == "rte_copy" and entry["scores"]["rte_copy"] == pytest.approx(1.0, abs=1e-6)
        assert all(entry["scores"][name] < 1 - 1e-4 for name in ("mnli", "sst"))


def test_logme_from_checkpoints(study, tiny_bert_dir, tmp_path):
    out, _ = study
    checkpoints = ",".join(f"{name}={out / f'intermediate_{name}' / 'all_state.p'}" for name in ("mnli", "qnli"))
    rank("--target", "stsb", "--candidates", "mnli,qnli", "--method", "logme", "--checkpoints", checkpoints,
         "--bert_model", tiny_bert_dir, "--glue_dir", FIXTURES, "--do_lower_case", "--json", tmp_path / "r.json")
    scores = json.loads((tmp_path / "r.json").read_text())["methods"]["logme"]["scores"]
    assert set(scores) == {"mnli", "qnli"} and scores["mnli"] != scores["qnli"]
    # The same encoders as any intermediate model (stilts-run --intermediate NAME=MODEL): mnli's as a
    # transformers folder, qnli's as a plain state dict.
    from transformers import BertConfig, BertForSequenceClassification

    stage_a = {name: torch.load(out / f"intermediate_{name}" / "all_state.p", weights_only=True)["model"]
               for name in ("mnli", "qnli")}
    model = BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert_dir, num_labels=3))
    model.load_state_dict(stage_a["mnli"], strict=False)
    model.save_pretrained(tmp_path / "mnli-model")
    shutil.copy(VOCAB, tmp_path / "mnli-model" / "vocab.txt")
    torch.save(stage_a["qnli"], tmp_path / "qnli.p")
    rank("--target", "stsb", "--candidates", "mnli,qnli", "--method", "logme", "--checkpoints",
         f"mnli={tmp_path / 'mnli-model'},qnli={tmp_path / 'qnli.p'}", "--bert_model", tiny_bert_dir, "--glue_dir",
         FIXTURES, "--do_lower_case", "--json", tmp_path / "r2.json")
    assert json.loads((tmp_path / "r2.json").read_text())["methods"]["logme"]["scores"] == pytest.approx(scores)


@pytest.mark.parametrize("argv,message", [
    (["--candidates", "mnli"], "--candidates: give at least two tasks"),
    (["--candidates", "mnli,qnli", "--method", "taskemb"], "--method 'taskemb': not one of semb, textemb, logme"),
    (["--candidates", "mnli,qnli", "--method", "logme"], "--method logme needs stage A checkpoints"),
    (["--candidates", "mnli,qnli", "--method", "textemb"], "--bert_model: TextEmb and LogME need the study's encoder"),
    (["--candidates", "mnli,qnli", "--method", "logme", "--checkpoints", "mnli=/nope.p,qnli=/nope.p",
      "--bert_model", "x"], "/nope.p: stage A checkpoint of mnli not found"),
    (["--candidates", "mnli,qnli", "--study", "/nope"], "/nope/summary.json: cannot read the study's summary"),
])
def test_bad_command_lines(capsys, argv, message):
    assert message in refused_by(capsys, rank_main, ["--target", "rte", "--glue_dir", FIXTURES, *argv])


def test_textemb_and_logme_with_another_encoder_family(tmp_path, capsys):
    """A tiny RoBERTa (no pooler, no token types): TextEmb reads its token states, LogME its <s> state."""
    from test_encoders import make_tiny_encoder

    roberta = make_tiny_encoder(tmp_path / "roberta", "roberta")
    stage_a = {}
    for name, folder in (("mnli", "MNLI"), ("qnli", "QNLI")):
        train_main(["--task_name", name, "--data_dir", os.path.join(FIXTURES, folder), "--bert_model", roberta,
                    "--do_train", "--do_save", "--bert_save_mode", "model_all",
                    "--output_dir", str(tmp_path / name), *TRAIN])
        stage_a[name] = tmp_path / name / "all_state.p"
    rank("--target", "rte", "--candidates", "mnli,qnli", "--method", "textemb,logme", "--bert_model", roberta,
         "--checkpoints", ",".join(f"{k}={v}" for k, v in stage_a.items()), "--glue_dir", FIXTURES,
         "--json", tmp_path / "r.json")
    methods = json.loads((tmp_path / "r.json").read_text())["methods"]
    assert all(np.isfinite(list(m["scores"].values())).all() for m in methods.values())
    assert methods["logme"]["scores"]["mnli"] != methods["logme"]["scores"]["qnli"]


def bad_study(tmp_path, study, change):
    """A copy of the study folder with `change(folder)` applied."""
    folder = tmp_path / "bad-study"
    shutil.copytree(study[0], folder)
    change(folder)
    return folder


def write(name, content):
    return lambda folder: (folder / name).write_text(content)


@pytest.mark.parametrize("change,message", [
    (write("summary.json", '{"targets": []}'), "summary.json: not a stilts-run summary ('targets'"),
    (write("summary.json", '{"targets": {}, "intermediates": "mnli"}'), "'intermediates' a list of them"),
    (write("summary.json", "[" * 100_000), "summary.json: not a JSON file (nested too deeply)"),
    (write("intermediate_mnli/args.json", '{"bert_model": 5, "do_lower_case": true}'),
     "intermediate_mnli/args.json: its bert_model should be a string"),
])
def test_a_damaged_study_is_one_line(study, tiny_bert_dir, tmp_path, capsys, change, message):
    folder = bad_study(tmp_path, study, change)
    err = refused_by(capsys, rank_main, ["--target", "rte", "--candidates", ",".join(CANDIDATES), "--study", folder,
                                         "--glue_dir", FIXTURES, "--embedding_model", tiny_bert_dir])
    assert message in err


def test_bad_numbers_and_a_json_over_the_study(study, tiny_bert_dir, capsys):
    out, _ = study
    base = ["--target", "rte", "--candidates", "mnli,qnli", "--glue_dir", FIXTURES, "--bert_model", tiny_bert_dir,
            "--embedding_model", tiny_bert_dir]
    assert "--seed -1: must be from 0 to 2**32 - 1" in refused_by(capsys, rank_main, [*base, "--seed", "-1"])
    err = refused_by(capsys, rank_main, [*base, "--max_seq_length", "513"])
    assert f"--max_seq_length 513: {tiny_bert_dir} (--embedding_model) has position embeddings for 512 tokens" in err
    before = (out / "summary.json").read_bytes()
    err = refused_by(capsys, rank_main, [*base, "--study", out, "--json", out / "summary.json"])
    assert "summary.json: a file of the study; name another file" in err
    assert (out / "summary.json").read_bytes() == before


def test_the_embedding_model_default_and_its_flag(tiny_bert_dir, capsys, monkeypatch):
    """Without an installed all-MiniLM-L6-v2 and with the hub off, SEmb says so at once and names
    --embedding_model; an embedding model that cannot be loaded names that flag, not --bert_model."""
    from stilts import ranking

    base = ["--target", "rte", "--candidates", "mnli,qnli", "--glue_dir", FIXTURES, "--method", "semb"]
    monkeypatch.setattr(ranking, "embedding_model_folders", lambda: [])
    err = refused_by(capsys, rank_main, base)
    assert "semb: no all-MiniLM-L6-v2 here and the Hugging Face hub is off" in err and "--embedding_model" in err
    err = refused_by(capsys, rank_main, [*base, "--embedding_model", "someone/missing-model"])
    assert "pass a local model folder as --embedding_model" in err


def test_logme_ranks_the_candidates_it_has_a_stage_a_for(study, tmp_path, capsys):
    """A study candidate without a stage A is marked not scored by LogME, the others ranked; LogME on a
    target whose sampled labels are one class warns that its scores mean nothing."""
    folder = bad_study(tmp_path, study, lambda f: shutil.rmtree(f / "intermediate_qnli"))
    rank("--target", "rte", "--candidates", ",".join(CANDIDATES), "--study", folder, "--glue_dir", FIXTURES,
         "--method", "logme", "--json", tmp_path / "r.json")
    printed = capsys.readouterr().out
    logme = json.loads((tmp_path / "r.json").read_text())["methods"]["logme"]
    assert set(logme["scores"]) == {"mnli", "sst"} and "qnli" in logme["not_scored"]
    assert "logme: qnli not scored (no stage A checkpoint" in printed
    assert "next: a prediction is a shortlist; measure it (top 2 by logme): stilts-run --intermediates" in printed

    one_class = tmp_path / "one_class"
    one_class.mkdir()
    (one_class / "train.csv").write_text("a,label\n" + "".join(f"text {i},yes\n" for i in range(20)))
    (one_class / "task.json").write_text(json.dumps({"name": "one_class", "files": {"train": "train.csv"},
                                                     "text_a": "a", "labels": ["yes", "no"]}))
    rank("--target", one_class / "task.json", "--candidates", "mnli,sst", "--study", folder, "--glue_dir", FIXTURES,
         "--method", "logme", "--json", tmp_path / "r1.json")
    assert "logme: warning: these scores mean nothing: every sampled one_class training example has the label 'yes'" \
        in capsys.readouterr().out
    assert "warning" in json.loads((tmp_path / "r1.json").read_text())["methods"]["logme"]
