"""How well a cheap ranking of intermediate tasks agrees with the transfer results measured for a target.

A ranking method (LogME, task embeddings, ...) gives each candidate intermediate task a `scores` entry,
higher meaning "predicted to help more"; the STILTs runs give each candidate its measured result on the
target task. Poth et al. 2021 ("What to Pre-Train on? Efficient Intermediate Task Selection", after
Vu et al. 2020) judge the ranking by NDCG, whose relevances are the measured transfer results, and by
Regret@k = (O - M_k) / O, where O is the best measured target performance over all candidates and M_k
the best among the k candidates ranked highest. Spearman's correlation sums up the whole order,
and `random_expectation` gives each metric's value for a ranking drawn at random, the baseline that a
ranking method has to beat.

Candidates with equal predicted scores are ranked by name (ascending), so a result never depends on the
order of a dict. Every function takes the same candidates in both dicts, and finite measured values.
"""
import numpy as np
from scipy.special import comb
from scipy.stats import spearmanr


def ndcg_at_k(scores, gains, k=3):
    """NDCG@k of the ranking by `scores`, with relevance = measured gain - the smallest measured gain.

    The papers take the measured target performance itself as relevance, which ties NDCG to the
    metric's offset (when every candidate reaches 70-80 % accuracy, every ranking scores near 1) and
    leaves [0, 1] for negative gains. Shifted, the worst candidate has no relevance, and gains and target
    scores (gain = score - baseline) give the same NDCG; with linear gains, DCG@k = the sum over ranks
    i <= k of relevance_i / log2(i + 1) (Jarvelin and Kekalainen 2002), a change of scale (percent or
    fraction) changes nothing either. NDCG divides by the DCG@k of the ideal order, so it lies in [0, 1];
    when all candidates measured the same, every order is ideal: 1.0.
    """
    _check_k(k)
    relevance = _measured_in_predicted_order(scores, gains)[1]
    relevance = relevance - relevance.min()
    ideal = _dcg(np.sort(relevance)[::-1], k)
    return 1.0 if ideal == 0 else _dcg(relevance, k) / ideal


def regret_at_k(scores, values, k=3):
    """Poth et al.'s Regret@k of the ranking by `scores`, for `values` = measured target scores
    (not gains: the regret is relative to the best score): (best value - best value among the top k
    predicted) / best value, as a fraction (the paper reports percent). 0 when the top k hold a best
    candidate; NaN when the best value is not positive, where a relative regret has no meaning."""
    _check_k(k)
    ranked = _measured_in_predicted_order(scores, values)[1]
    return _relative_regret(ranked.max(), ranked[:k].max())


def spearman(scores, gains):
    """Spearman's rank correlation of predicted scores and measured gains (ties share their mean rank);
    0.0 when either side is constant, where it is undefined."""
    predicted, measured = _measured_in_predicted_order(scores, gains)
    if len(np.unique(predicted)) < 2 or len(np.unique(measured)) < 2:
        return 0.0
    return float(spearmanr(predicted, measured).statistic)


def random_expectation(values, k=3):
    """The expected NDCG@k, Regret@1, Regret@k and Spearman of a uniformly random ranking of the
    candidates measured `values` (target scores), exactly, as {"ndcg_at_k", "regret_at_1",
    "regret_at_k", "spearman"}.

    A random ranking puts every candidate at every rank with probability 1 / n, so the expected DCG@k is
    the mean relevance times the sum of the k discounts. Its top j are j candidates drawn without
    replacement, whose best is the i-th smallest value with probability C(i - 1, j - 1) / C(n, j); the
    regret is linear in that best value. Spearman's correlation averages to 0: each candidate's
    predicted rank has the mean rank as its expectation.
    """
    _check_k(k)
    ascending = np.sort(_finite(values))
    n, k = len(ascending), min(k, len(ascending))
    relevance = ascending - ascending[0]
    ideal = _dcg(relevance[::-1], k)

    def expected_best(j):
        return float((comb(np.arange(n), j - 1) / comb(n, j)) @ ascending)

    return {
        "ndcg_at_k": 1.0 if ideal == 0 else relevance.mean() * _dcg(np.ones(k), k) / ideal,
        "regret_at_1": _relative_regret(ascending[-1], expected_best(1)),
        "regret_at_k": _relative_regret(ascending[-1], expected_best(k)),
        "spearman": 0.0,
    }


def _measured_in_predicted_order(scores, measured):
    """Predicted scores and measured values as arrays, best-predicted candidate first, ties by name."""
    if set(scores) != set(measured):
        raise ValueError(f"the candidates differ: only scored {sorted(set(scores) - set(measured))}, "
                         f"only measured {sorted(set(measured) - set(scores))}")
    if any(np.isnan(score) for score in scores.values()):
        raise ValueError("a predicted score is NaN")
    _finite(measured)
    order = sorted(scores, key=lambda name: (-scores[name], name))
    predicted = np.array([scores[name] for name in order], dtype=float)
    return predicted, np.array([measured[name] for name in order], dtype=float)


def _finite(measured):
    values = np.array(list(measured.values()), dtype=float)
    if len(values) == 0:
        raise ValueError("no candidates")
    if not np.all(np.isfinite(values)):
        raise ValueError("measured values must be finite")
    return values


def _check_k(k):
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")


def _dcg(relevance, k):
    """Discounted cumulative gain of the first k relevances: the one at rank i counts 1 / log2(i + 1)."""
    top = relevance[:k]
    return float(np.sum(top / np.log2(np.arange(2, len(top) + 2))))


def _relative_regret(best, achieved):
    return float("nan") if best <= 0 else float((best - achieved) / best)
