"""Task readers on committed real GLUE samples, and their errors on malformed files."""
import os

import pytest

from conftest import FIXTURES
from stilts.errors import StiltsError
from stilts.tasks import TASKS, get_task, resolve_data_dir


def _count_data_rows(path, header):
    with open(path, encoding="utf-8-sig") as f:
        rows = [line for line in f.read().split("\n") if line]
    return len(rows) - (1 if header else 0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_split_of_every_task_reads(name):
    task = get_task(name)
    folder = os.path.join(FIXTURES, task.folder)
    for split in task.files:
        path = task.path(split, folder)
        examples = task.read(split, folder)
        assert len(examples) == _count_data_rows(path, task.layouts[split].header)
        assert all(e.text_a for e in examples)
        assert (examples[0].text_b is not None) == (task.layouts[split].text_b is not None)
        if task.layouts[split].label is None:
            assert all(e.label is None for e in examples)
        elif task.is_regression:
            assert all(0.0 <= e.label <= 5.0 for e in examples)
        else:
            assert {e.label for e in examples} <= set(task.labels)
        assert len({e.guid for e in examples}) == len(examples), "guids must be distinct (the seed's QNLI bug)"


def test_label_order_is_the_seeds():
    assert get_task("mnli").labels == ("contradiction", "entailment", "neutral")
    assert get_task("rte").labels == get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("cola").labels == ("0", "1")
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("ax").files == {"test": "diagnostic.tsv"}


def test_cola_train_has_no_header_but_test_has_one():
    folder = os.path.join(FIXTURES, "CoLA")
    first_line = open(os.path.join(folder, "train.tsv"), encoding="utf-8").readline().split("\t")
    assert get_task("cola").read("train", folder)[0].text_a == first_line[3].rstrip("\n")
    first_test_row = open(os.path.join(folder, "test.tsv"), encoding="utf-8").read().split("\n")[1].split("\t")
    assert get_task("cola").read("test", folder)[0].guid == f"test-{first_test_row[0]}"


def test_real_rows_parse_to_their_columns():
    rte = get_task("rte").read("train", os.path.join(FIXTURES, "RTE"))
    with open(os.path.join(FIXTURES, "RTE", "train.tsv"), encoding="utf-8") as f:
        index, sentence1, sentence2, label = f.read().split("\n")[1].split("\t")
    assert (rte[0].guid, rte[0].text_a, rte[0].text_b, rte[0].label) == (f"train-{index}", sentence1, sentence2, label)
    mrpc = get_task("mrpc").read("dev", os.path.join(FIXTURES, "MRPC"))  # file starts with a BOM
    assert mrpc[0].label in ("0", "1")


def test_qqp_skips_and_counts_rows_with_missing_fields(tmp_path, caplog):
    good = "1\t2\t3\tWhat is a?\tWhat is b?\t0"
    (tmp_path / "train.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                                        f"{good}\n4\t5\t6\tbroken row\n{good}\n")
    examples = get_task("qqp").read("train", str(tmp_path))
    assert len(examples) == 2
    assert "skipped 1 rows" in caplog.text


@pytest.mark.parametrize("content,message", [
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n", "train.tsv:3: expected at least 4"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "train.tsv:2: unknown label 'maybe'"),
    ("index\tsentence1\tsentence2\tlabel\n", "no examples"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "train.tsv").write_text(content)
    with pytest.raises(StiltsError, match=message):
        get_task("rte").read("train", str(tmp_path))


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(StiltsError, match="dev.tsv: file not found"):
        get_task("rte").read("dev", str(tmp_path))
    with pytest.raises(StiltsError, match="unknown task 'foo'"):
        get_task("foo")


def test_data_dir_defaults_to_glue_dir(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    assert resolve_data_dir(get_task("sst")) == "/data/glue/SST-2"
    assert resolve_data_dir(get_task("sst"), "/elsewhere") == "/elsewhere"
    monkeypatch.delenv("GLUE_DIR")
    with pytest.raises(StiltsError, match="GLUE_DIR"):
        resolve_data_dir(get_task("sst"))


def test_snli_train_rows_may_carry_the_annotators_labels(tmp_path):
    """The raw SNLI train header names label1 only; validated rows add label2..label5 before gold_label."""
    header = ["index", "captionID", "pairID", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1", "sentence2",
              "label1", "gold_label"]
    plain = ["0", "c", "p", "b", "b", "p", "p", "A man sleeps.", "A man is awake.", "contradiction", "contradiction"]
    validated = plain[:10] + ["neutral", "contradiction", "contradiction", "contradiction", "contradiction"]
    too_wide = validated[:10] + ["neutral"] + validated[10:]
    (tmp_path / "train.tsv").write_text("\n".join("\t".join(row) for row in (header, plain, validated)) + "\n")
    examples = get_task("snli").read("train", str(tmp_path))
    assert [(e.text_b, e.label) for e in examples] == [("A man is awake.", "contradiction")] * 2
    (tmp_path / "train.tsv").write_text("\n".join("\t".join(row) for row in (header, too_wide)) + "\n")
    with pytest.raises(StiltsError, match="train.tsv:2: 16 tab-separated fields, but the header has 11"):
        get_task("snli").read("train", str(tmp_path))
