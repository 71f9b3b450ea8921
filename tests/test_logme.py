"""LogME against the density it is defined by, a brute-force maximum, and the paper's properties."""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal, ortho_group

from stilts.logme import log_evidence, logme

SHAPES = [(30, 5), (30, 50)]  # more examples than dimensions, and fewer


def data(n, d, seed=0, noise=0.5):
    """Features and a target that is linear in them plus noise."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    return features, features @ rng.normal(size=d) + noise * rng.normal(size=n)


def marginal_log_density(features, y, alpha, beta):
    """log N(y; 0, F F^T / alpha + I / beta) per example, the evidence LogME maximises, from scratch."""
    n = len(y)
    covariance = features @ features.T / alpha + np.eye(n) / beta
    return multivariate_normal(np.zeros(n), covariance).logpdf(y) / n


@pytest.mark.parametrize("n,d", SHAPES + [(30, 30)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.01, 30.0), (50.0, 0.2)])
def test_log_evidence_is_the_marginal_density(n, d, alpha, beta):
    features, y = data(n, d)
    expected = marginal_log_density(features, y, alpha, beta)
    assert log_evidence(features, y, alpha, beta) == pytest.approx(expected, abs=1e-10)


def test_log_evidence_with_rank_deficient_features():
    features, y = data(30, 6)
    features[:, 3:] = features[:, :3] @ np.ones((3, 3))  # rank 3 in 6 dimensions
    assert log_evidence(features, y, 0.3, 2.0) == pytest.approx(marginal_log_density(features, y, 0.3, 2.0), abs=1e-10)


def grid_maximum(features, y):
    """The largest evidence on a grid of 241 x 241 log-spaced (alpha, beta), from F F^T's eigenvalues."""
    eigenvalues, vectors = np.linalg.eigh(features @ features.T)
    z2 = (vectors.T @ y) ** 2
    alphas, betas = np.meshgrid(np.logspace(-6, 6, 241), np.logspace(-6, 6, 241), indexing="ij")
    variances = eigenvalues / alphas[..., None] + 1 / betas[..., None]  # of y along each eigenvector
    density = -0.5 * (np.log(2 * np.pi * variances) + z2 / variances).sum(axis=-1)
    return density.max() / len(y)


def optimised_maximum(features, y):
    """The best log_evidence that Nelder-Mead finds over (log alpha, log beta) from several starts."""
    def negative(log_params):
        return -log_evidence(features, y, *np.exp(log_params))

    options = {"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000}
    return max(-minimize(negative, start, method="Nelder-Mead", options=options).fun
               for start in [(0, 0), (-4, 4), (4, -4), (3, 3), (-3, -3)])


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("seed,noise", [(0, 0.5), (1, 0.5), (2, 5.0)])
def test_logme_is_the_maximum_evidence(n, d, seed, noise):
    features, y = data(n, d, seed, noise)
    score = logme(features, y, regression=True)
    assert score >= grid_maximum(features, y) - 1e-12
    assert score == pytest.approx(optimised_maximum(features, y), abs=1e-6)


@pytest.mark.parametrize("n,d", SHAPES)
def test_logme_of_unrelated_labels_is_the_maximum_evidence(n, d):
    features = np.random.default_rng(3).normal(size=(n, d))
    y = np.random.default_rng(4).normal(size=n)
    score = logme(features, y, regression=True)
    assert score >= grid_maximum(features, y) - 1e-12
    assert score == pytest.approx(optimised_maximum(features, y), abs=1e-6)


@pytest.mark.parametrize("n,d", SHAPES)
def test_a_rotation_of_the_features_changes_nothing(n, d):
    # The evidence depends on F only through F F^T, and (F Q)(F Q)^T = F F^T for orthogonal Q.
    features, y = data(n, d)
    rotation = ortho_group.rvs(d, random_state=5)
    rotated = logme(features @ rotation, y, regression=True)
    assert rotated == pytest.approx(logme(features, y, regression=True), abs=1e-9)


# With more dimensions than examples any labels fit exactly, and only the prior on w tells them apart.
@pytest.mark.parametrize("n,d,margin", [(30, 5, 1.0), (30, 50, 0.05)])
def test_labels_the_features_explain_score_higher(n, d, margin):
    features, linear = data(n, d, noise=0.1)
    unrelated = np.random.default_rng(6).permutation(linear)  # the same values, in an order F cannot explain
    assert logme(features, linear, regression=True) > logme(features, unrelated, regression=True) + margin


def test_classification_is_the_mean_over_one_vs_rest_columns():
    features, _ = data(40, 8)
    labels = np.random.default_rng(7).integers(0, 3, size=40)
    one_hot = np.eye(3)[labels]
    per_class = [logme(features, one_hot[:, c], regression=True) for c in range(3)]
    assert logme(features, labels) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert logme(features, one_hot, regression=True) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_only_the_classes_that_occur_count():
    features, _ = data(40, 8)
    labels = np.random.default_rng(7).integers(0, 3, size=40)
    assert logme(features, labels * 5) == logme(features, labels)  # ids 0, 5, 10: three classes all the same


def test_exactly_fitting_or_missing_labels_give_finite_scores():
    # One-hot features: the class columns lie exactly in their span, and a column of F misses class 2.
    labels = np.repeat([0, 1, 2], 10)
    perfect = np.eye(3)[labels]
    blind = np.eye(3)[labels][:, :2]
    with np.errstate(all="raise"):
        exact, missing = logme(perfect, labels), logme(blind, labels)
    assert np.isfinite(exact) and np.isfinite(missing)
    assert exact > missing > logme(np.ones((30, 1)), labels)


@pytest.mark.parametrize("features,labels,regression,message", [
    (np.ones((5, 3)), [0, 1, 0, 1], False, "labels of shape"),
    (np.ones((5, 3)), np.ones((4, 2)), True, "labels of shape"),
    (np.array([[1.0, np.nan]] * 4), [0, 1, 0, 1], False, "NaN"),
    (np.ones((4, 2)), [0.0, np.nan, 1.0, 2.0], True, "NaN"),
    (np.ones((4, 2)), [0.5, 1.0, 0.5, 1.0], False, "integer ids"),
    (np.zeros((4, 2)), [0, 1, 0, 1], False, "all zero"),
    (np.ones((4, 2)), [0.0, 0.0, 0.0, 0.0], True, "all zero"),
    (np.ones(4), [0, 1, 0, 1], False, "examples, dimensions"),
])
def test_bad_input_is_refused(features, labels, regression, message):
    with pytest.raises(ValueError, match=message):
        logme(features, labels, regression=regression)


def test_log_evidence_refuses_bad_parameters():
    features, y = data(10, 3)
    with pytest.raises(ValueError, match="positive"):
        log_evidence(features, y, 0.0, 1.0)
    with pytest.raises(ValueError, match="one target column"):
        log_evidence(features, np.stack([y, y], axis=1), 1.0, 1.0)
