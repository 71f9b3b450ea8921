"""Featurization: the seed's [CLS] a [SEP] b [SEP] layout and pair truncation, token for token."""
import random

import numpy as np
import pytest

from conftest import VOCAB
from stilts.features import collate, featurize, load_tokenizer, truncate_pair_lengths
from stilts.tasks import Example, get_task

CLS, SEP = 101, 102
THE, CAT, SAT, ON, MAT = 1996, 4937, 2938, 2006, 13523  # bert-base-uncased vocab ids


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB, do_lower_case=True)


def seed_truncate_seq_pair(tokens_a, tokens_b, max_length):
    """The seed's algorithm, verbatim in behaviour: pop from the longer list, the second on ties."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def test_pair_truncation_trims_the_longer_sequence(tokenizer):
    ex = Example("x", "The cat sat on the mat", "the cat", "entailment")
    f = featurize([ex], get_task("rte"), tokenizer, max_seq_length=8)
    assert f.input_ids[0].tolist() == [CLS, THE, CAT, SAT, SEP, THE, CAT, SEP]
    assert f.segment_a_lengths[0] == 5


def test_pair_truncation_trims_the_second_on_ties(tokenizer):
    ex = Example("x", "the cat", "on the", "entailment")
    f = featurize([ex], get_task("rte"), tokenizer, max_seq_length=6)
    assert f.input_ids[0].tolist() == [CLS, THE, CAT, SEP, ON, SEP]


def test_single_sentence_truncation_and_labels(tokenizer):
    f = featurize([Example("x", "the cat sat on the mat", None, "1")], get_task("sst"), tokenizer, max_seq_length=5)
    assert f.input_ids[0].tolist() == [CLS, THE, CAT, SAT, SEP]
    assert f.labels.tolist() == [1]
    reg = featurize([Example("x", "a", "b", 3.8)], get_task("stsb"), tokenizer, 16)
    assert reg.labels.dtype == np.float32 and reg.labels[0] == pytest.approx(3.8)


def test_truncation_equals_the_seed_on_random_lengths():
    rng = random.Random(0)
    for _ in range(2000):
        la, lb, budget = rng.randint(0, 90), rng.randint(0, 90), rng.randint(0, 125)
        a, b = list(range(la)), list(range(lb))
        seed_truncate_seq_pair(a, b, budget)
        assert truncate_pair_lengths(la, lb, budget) == (len(a), len(b))


def test_collate_pads_and_sets_segments(tokenizer):
    examples = [Example("1", "the cat", "on the mat", "entailment"), Example("2", "the", "cat", "not_entailment")]
    f = featurize(examples, get_task("rte"), tokenizer, 128)
    batch = collate(f, np.array([0, 1]))
    assert batch["input_ids"].tolist() == [[CLS, THE, CAT, SEP, ON, THE, MAT, SEP], [CLS, THE, SEP, CAT, SEP, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert batch["labels"].tolist() == [0, 1]
    fixed = collate(f, np.array([0, 1]), pad_to=128)
    assert fixed["input_ids"].shape == (2, 128) and fixed["input_ids"][:, :8].tolist() == batch["input_ids"].tolist()


def test_casing_is_honoured():
    cased = load_tokenizer(VOCAB, do_lower_case=False)
    assert cased("The", add_special_tokens=False)["input_ids"] != [THE]
