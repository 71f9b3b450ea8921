"""stilts-run --intermediate NAME=MODEL: an intermediate model the user already has, taken as it is (no
stage A). The same weights as a stilts stage A, given as a transformers folder or as a plain state
dict with the seed's names, give the targets the scores of the study that trained that stage A; a
model of another size is refused before any run."""
import json
import shutil

import pytest
import torch

from conftest import VOCAB, make_tiny_bert, refused_by, study_argv, values
from stilts.cli.run import main


def argv_with(out, model, intermediate, *extra):
    """The conftest study (targets rte, seed 1) with `intermediate` for --intermediate."""
    argv = study_argv(out, model, *extra, targets="rte", seeds="1")
    argv[argv.index("--intermediate") + 1] = intermediate
    return [str(a) for a in argv]


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory):
    """A study that trains its stage A: its folder and scores."""
    out = tmp_path_factory.mktemp("trained") / "out"
    main(argv_with(out, tiny_bert_dir, "mnli"))
    return out


def seed_names(state):
    """The seed's (pytorch-pretrained-BERT's) parameter names: LayerNorm gamma and beta."""
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state.items()}


@pytest.mark.slow  # three studies: see conftest.py
def test_an_intermediate_model_gives_the_scores_of_its_stage_a(trained, tiny_bert_dir, tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    stage_a = torch.load(trained / "intermediate_mnli" / "all_state.p", weights_only=True)["model"]
    folder = tmp_path / "mnli-model"  # as a user's fine-tuned MNLI model on the hub is saved
    config = BertConfig.from_pretrained(tiny_bert_dir, num_labels=3)
    model = BertForSequenceClassification(config)
    assert not model.load_state_dict(stage_a, strict=False).unexpected_keys
    model.save_pretrained(folder)
    shutil.copy(VOCAB, folder / "vocab.txt")
    plain = tmp_path / "mnli.p"  # as the seed released its models
    torch.save(seed_names(stage_a), plain)
    expected = values(trained)
    for source in (folder, plain):
        out = tmp_path / f"from-{source.name}"
        main(argv_with(out, tiny_bert_dir, f"mnli={source}"))
        printed = capsys.readouterr().out
        assert f"intermediate mnli: the encoder of {source}, taken as it is (no stage A)" in printed
        assert "stage A: mnli" not in printed and not (out / "intermediate_mnli" / "stilts-run.log").exists()
        assert values(out) == pytest.approx(expected, abs=1e-6) and len(expected) == 2
        summary = json.loads((out / "summary.json").read_text())
        assert summary["intermediate"] == "mnli" and summary["intermediates_from"] == {"mnli": str(source)}
        assert f"Intermediate mnli: the encoder of {source}" in (out / "summary.md").read_text()
    main(argv_with(out, tiny_bert_dir, f"mnli={source}"))  # repeated: nothing to do
    assert "every run finished before" in capsys.readouterr().out
    err = refused_by(capsys, main, argv_with(out, tiny_bert_dir, f"mnli={folder}"))
    assert f"this study's intermediate mnli came from {plain}, not {folder}" in err
    # A study keeps what its intermediate was: imported, or trained by its stage A.
    err = refused_by(capsys, main, argv_with(out, tiny_bert_dir, "mnli"))
    assert f"this study took its intermediate mnli as it is, from {plain}" in err
    err = refused_by(capsys, main, argv_with(trained, tiny_bert_dir, f"mnli={plain}"))
    assert "this study trained its intermediate mnli (stage A)" in err


def test_an_intermediate_model_that_does_not_fit_is_refused_before_any_run(tiny_bert_dir, tmp_path, capsys):
    wide = make_tiny_bert(tmp_path / "wide", hidden_size=48)
    capsys.readouterr()  # transformers' bar of saving it
    out = tmp_path / "out"
    err = refused_by(capsys, main, argv_with(out, tiny_bert_dir, f"mnli={wide}"))
    assert f"{wide}: weights 'bert." in err and "but the model needs [32]; (another model size?" in err
    assert not (out / "rte").exists() and not (out / "intermediate_mnli" / "all_state.p").exists()
    not_there = tmp_path / "missing.p"
    err = refused_by(capsys, main, argv_with(out, tiny_bert_dir, f"mnli={not_there}"))
    assert f"{not_there}: no such file or model folder (--intermediate mnli=)" in err
    assert "the name before '='" in refused_by(capsys, main, argv_with(out, tiny_bert_dir, f"m/x={wide}"))
    err = refused_by(capsys, main, argv_with(out, tiny_bert_dir, f"summary.json={wide}"))
    assert "the name 'summary.json' is taken by the study's own files" in err


def test_taken_and_trained_intermediates_mix(tiny_bert_dir, tmp_path):
    """--intermediates mnli,qnli=MODEL: a stage A for mnli alone; qnli's runs start from its imported
    checkpoint and wait for no stage A."""
    from conftest import FIXTURES
    from stilts.study import Study

    model = tmp_path / "qnli.p"
    study = Study(intermediates=["mnli", f"qnli={model}"], targets=["rte"], seeds=[1], bert_model=tiny_bert_dir,
                  output_dir=str(tmp_path / "out"), glue_dir=FIXTURES)
    stage_a, runs = study.plan()
    assert [run.task for run in stage_a] == ["mnli"] and study.given == {"qnli": str(model)}
    by_arm = {run.arm: run for run in runs}
    assert set(by_arm) == {"stilts:mnli", "stilts:qnli"} and by_arm["stilts:qnli"].after is None
    load_path = by_arm["stilts:qnli"].argv[by_arm["stilts:qnli"].argv.index("--bert_load_path") + 1]
    assert load_path == str(tmp_path / "out" / "intermediate_qnli" / "all_state.p")
    assert by_arm["stilts:mnli"].after is stage_a[0]
