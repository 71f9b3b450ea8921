"""Ranking metrics against values worked out by hand, and the random baseline against all permutations."""
import itertools
import math

import numpy as np
import pytest

from stilts.ranking_metrics import ndcg_at_k, random_expectation, regret_at_k, spearman

L3 = math.log2(3)  # the discount of rank 2; rank 1 has log2(2) = 1, rank 3 log2(4) = 2

# Measured target scores of four candidate intermediate tasks.
VALUES = {"a": 80.0, "b": 75.0, "c": 70.0, "d": 78.0}


def test_ndcg_by_hand():
    # Predicted order a, b, c, d. Relevance = value - 70: a 10, b 5, c 0, d 8.
    # DCG@3 = 10/1 + 5/log2(3) + 0/2; ideal order a, d, b: 10/1 + 8/log2(3) + 5/2.
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}
    assert ndcg_at_k(scores, VALUES, k=3) == pytest.approx((10 + 5 / L3) / (10 + 8 / L3 + 5 / 2))
    # k = 1: a, the best, comes first.
    assert ndcg_at_k(scores, VALUES, k=1) == 1.0


def test_ndcg_is_the_same_for_gains_and_scores():
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}
    gains = {name: value - 77.0 for name, value in VALUES.items()}  # some negative
    assert ndcg_at_k(scores, gains) == pytest.approx(ndcg_at_k(scores, VALUES))


def test_regret_by_hand():
    # Predicted order b, c, d, a: top 1 holds 75, top 2 still 75, top 3 reaches 78, top 4 the best, 80.
    scores = {"b": 0.9, "c": 0.8, "d": 0.7, "a": 0.1}
    assert regret_at_k(scores, VALUES, k=1) == pytest.approx((80 - 75) / 80)  # 0.0625
    assert regret_at_k(scores, VALUES, k=2) == pytest.approx((80 - 75) / 80)
    assert regret_at_k(scores, VALUES, k=3) == pytest.approx((80 - 78) / 80)  # 0.025
    assert regret_at_k(scores, VALUES, k=4) == 0.0


def test_spearman_by_hand():
    # Ranks of the scores 0.9, 0.8, 0.7, 0.1: a 4, b 3, c 2, d 1; of the values 80, 75, 70, 78: a 4, b 2, c 1, d 3.
    # Differences 0, 1, 1, -2: rho = 1 - 6 * (0 + 1 + 1 + 4) / (4 * (16 - 1)) = 1 - 36/60 = 0.4.
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}
    assert spearman(scores, VALUES) == pytest.approx(0.4)


def test_perfect_ranking():
    assert ndcg_at_k(VALUES, VALUES, k=3) == 1.0
    assert regret_at_k(VALUES, VALUES, k=1) == 0.0
    assert spearman(VALUES, VALUES) == pytest.approx(1.0)


def test_reversed_ranking():
    # Values 1, 2, 3 ranked 1, 2, 3 (worst first). Relevance 0, 1, 2.
    # DCG@3 = 0/1 + 1/log2(3) + 2/2; ideal 2/1 + 1/log2(3) + 0/2.
    values = {"x": 1.0, "y": 2.0, "z": 3.0}
    reversed_scores = {name: -value for name, value in values.items()}
    assert ndcg_at_k(reversed_scores, values, k=3) == pytest.approx((1 / L3 + 1) / (2 + 1 / L3))
    assert regret_at_k(reversed_scores, values, k=1) == pytest.approx((3 - 1) / 3)
    assert regret_at_k(reversed_scores, values, k=2) == pytest.approx((3 - 2) / 3)
    assert spearman(reversed_scores, values) == pytest.approx(-1.0)


def test_ties_in_the_scores_are_broken_by_name():
    # a and b tie; a comes first by name, whatever the dict order, and a measured only 1 of the best 3.
    values = {"b": 3.0, "a": 1.0, "c": 2.0}
    scores = {"b": 0.5, "a": 0.5, "c": 0.1}
    assert regret_at_k(scores, values, k=1) == pytest.approx((3 - 1) / 3)
    # NDCG@1 = relevance of a (0) / relevance of b (2).
    assert ndcg_at_k(scores, values, k=1) == 0.0


def test_degenerate_inputs():
    same = {"a": 2.0, "b": 2.0, "c": 2.0}
    assert spearman({"a": 1.0, "b": 2.0, "c": 3.0}, same) == 0.0  # constant: undefined, reported as 0
    assert spearman(same, {"a": 1.0, "b": 2.0, "c": 3.0}) == 0.0
    assert ndcg_at_k({"a": 1.0, "b": 2.0, "c": 3.0}, same) == 1.0  # every order is ideal
    assert math.isnan(regret_at_k({"a": 1.0, "b": 2.0}, {"a": -0.1, "b": 0.0}, k=1))  # no positive best
    assert ndcg_at_k(VALUES, VALUES, k=10) == 1.0  # k past the candidates: all of them


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="candidates differ"):
        ndcg_at_k({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match="NaN"):
        spearman({"a": math.nan, "b": 2.0}, {"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="finite"):
        regret_at_k({"a": 1.0, "b": 2.0}, {"a": math.nan, "b": 2.0}, k=1)
    with pytest.raises(ValueError, match="at least 1"):
        regret_at_k(VALUES, VALUES, k=0)


def test_random_expectation_by_hand():
    # Values x 60, y 70, z 90; relevance 0, 10, 30; k = 2. The six orders (first two shown):
    #   x y: DCG@2 = 0 + 10/log2(3), best of two 70     y z: 10 + 30/log2(3), 90
    #   x z:         0 + 30/log2(3),              90     z x: 30 + 0,          90
    #   y x:        10 + 0,                       70     z y: 30 + 10/log2(3), 90
    # Mean DCG@2 = (80 + 80/log2(3)) / 6, ideal (z y) 30 + 10/log2(3).
    # Regret@1: each candidate comes first twice, mean first value (60 + 70 + 90)/3 = 220/3 -> (90 - 220/3)/90.
    # Regret@2: mean best of two = (70 + 90 + 70 + 90 + 90 + 90)/6 = 250/3 -> (90 - 250/3)/90.
    # Spearman over the orders: 1, 0.5, 0.5, -0.5, -0.5, -1 -> 0.
    expected = random_expectation({"x": 60.0, "y": 70.0, "z": 90.0}, k=2)
    assert expected["ndcg_at_k"] == pytest.approx((80 + 80 / L3) / 6 / (30 + 10 / L3))
    assert expected["regret_at_1"] == pytest.approx((90 - 220 / 3) / 90)
    assert expected["regret_at_k"] == pytest.approx((90 - 250 / 3) / 90)
    assert expected["spearman"] == 0.0


def test_random_expectation_is_the_mean_over_all_orders():
    values = {f"task{i}": v for i, v in enumerate([71.0, 64.5, 80.0, 64.5, 77.25, 69.0])}  # with a tie
    names = sorted(values)
    orders = [dict(zip(order, range(len(names), 0, -1))) for order in itertools.permutations(names)]
    expected = random_expectation(values, k=3)
    assert expected["ndcg_at_k"] == pytest.approx(np.mean([ndcg_at_k(s, values, k=3) for s in orders]))
    assert expected["regret_at_1"] == pytest.approx(np.mean([regret_at_k(s, values, k=1) for s in orders]))
    assert expected["regret_at_k"] == pytest.approx(np.mean([regret_at_k(s, values, k=3) for s in orders]))
    assert expected["spearman"] == pytest.approx(np.mean([spearman(s, values) for s in orders]), abs=1e-12)
