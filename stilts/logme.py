"""LogME: how well frozen features explain a task's labels, measured without any training.

You, Liu, Long and Jordan, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"
(ICML 2021). A model whose features suit a task fits its labels with a simple linear model, so LogME
scores features F (n examples x d dimensions) for a target column y by the evidence of the Bayesian
linear model

    y = F w + noise,    w ~ N(0, I / alpha),    noise ~ N(0, I / beta),

that is the density of y under N(0, F F^T / alpha + I / beta), at the alpha and beta that maximise it,
divided by n so that data sets of different sizes compare. Classification labels become one-vs-rest
columns, regression targets are columns already, and the score is the mean over the columns.

Everything is computed in the basis of the thin SVD F = U S V^T: with sigma_i = s_i^2 (the r <= min(n, d)
nonzero eigenvalues of F^T F) and x = U^T y, each step costs O(r), so the fixed-point iteration is cheap
once the SVD is done, whether there are more examples than dimensions or fewer.
"""
import numpy as np

# The iteration settles within tens to hundreds of steps, except where the best evidence lies at
# alpha / beta -> 0 (possible with fewer examples than dimensions), which it approaches geometrically:
# these many steps get within about 1e-7 of it.
_MAX_STEPS = 1000
_TOLERANCE = 1e-8  # relative change of alpha / beta at which the iteration has converged


def logme(features, labels, regression=False):
    """The LogME score of `features` (n, d) for `labels`: integer class ids (n,), one 0/1 column per class
    that occurs, or with `regression` float targets (n,) or (n, k). The maximum log evidence per example,
    averaged over the target columns: higher means the features suit the task better."""
    features = _checked_features(features)
    targets = _target_columns(labels, len(features), regression)
    sigma, u = _spectrum(features)
    return float(np.mean([_max_log_evidence(sigma, *_projection(u, y), features.shape) for y in targets.T]))


def log_evidence(features, y, alpha, beta):
    """The log evidence per example of one target column `y` (n,) at the given `alpha` and `beta`
    (the paper's eq. 2, divided by n): what `logme` maximises."""
    features = _checked_features(features)
    if np.ndim(y) != 1:
        raise ValueError(f"y must be one target column (n,), not shape {np.shape(y)}")
    y = _target_columns(y, len(features), regression=True)[:, 0]
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha and beta must be positive, not {alpha} and {beta}")
    sigma, u = _spectrum(features)
    return _log_evidence(sigma, *_projection(u, y), features.shape, alpha, beta)


def _checked_features(features):
    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or features.size == 0:
        raise ValueError(f"features must be a non-empty (examples, dimensions) array, not shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values")
    if not np.any(features):
        raise ValueError("features are all zero: there is nothing to fit the labels with")
    return features


def _target_columns(labels, n, regression):
    """The (n, columns) targets: float columns as given, or one 0/1 column per class that occurs."""
    labels = np.asarray(labels)
    if labels.ndim == 0 or len(labels) != n:
        raise ValueError(f"labels of shape {labels.shape} for {n} feature rows")
    if regression:
        if labels.ndim > 2:
            raise ValueError(f"regression targets must be (n,) or (n, columns), not shape {labels.shape}")
        targets = labels.astype(float).reshape(n, -1)
        if not np.all(np.isfinite(targets)):
            raise ValueError("targets contain NaN or infinite values")
        if not np.all(np.any(targets, axis=0)):
            raise ValueError("a target column is all zero: there is nothing to explain")
        return targets
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("class labels must be a 1-D array of integer ids; pass regression=True for real targets")
    return (labels[:, None] == np.unique(labels)[None, :]).astype(float)


def _spectrum(features):
    """The nonzero squared singular values sigma of F and their left singular vectors U (n, r)."""
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(features.shape) * np.finfo(float).eps))  # numpy.linalg.matrix_rank's cut
    return s[:rank] ** 2, u[:, :rank]


def _projection(u, y):
    """x^2 = (U^T y)^2, the part of y that F's columns span, and |y - U U^T y|^2, the part they miss."""
    x = u.T @ y
    return x ** 2, float(np.sum((y - u @ x) ** 2))


def _fit(sigma, x2, outside, t):
    """|m|^2 and |F m - y|^2 of the posterior mean m = beta A^-1 F^T y, which depends on t = alpha / beta only."""
    weight = 1 / (sigma + t) ** 2
    return float(np.sum(sigma * x2 * weight)), float(t ** 2 * np.sum(x2 * weight) + outside)


def _log_evidence(sigma, x2, outside, shape, alpha, beta):
    """The paper's eq. 2 over n: (n log beta + d log alpha - n log 2 pi - beta |F m - y|^2 - alpha |m|^2
    - log |A|) / 2n with A = alpha I + beta F^T F, whose d - r zero directions each add log alpha."""
    n, d = shape
    m2, residual2 = _fit(sigma, x2, outside, alpha / beta)
    log_det_a = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
    evidence = n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * residual2 - alpha * m2 - log_det_a
    return float(evidence / (2 * n))


def _max_log_evidence(sigma, x2, outside, shape):
    """The paper's fixed point (Algorithm 1) from alpha = beta = 1. Its updates depend on t = alpha / beta
    alone, so t is what is iterated until it settles.

    Labels that F's columns reproduce exactly (or miss entirely) drive t to 0 (or infinity), where the
    evidence grows without bound (or levels off); t is kept within a factor of the machine precision of
    F's spectrum, past which it no longer changes the fit, so such labels get a finite score (a large one
    for an exact fit, the evidence of no features at all for a miss).
    """
    lowest, highest = sigma[-1] * np.finfo(float).eps, sigma[0] / np.finfo(float).eps
    t = 1.0
    with np.errstate(divide="ignore"):  # an exact fit or miss divides by zero; t is then clipped
        for _ in range(_MAX_STEPS):
            alpha, beta = _fixed_point_step(sigma, x2, outside, shape[0], t)
            t, previous = float(np.clip(alpha / beta, lowest, highest)), t
            if abs(t - previous) <= _TOLERANCE * previous:
                break
    m2, residual2 = _fit(sigma, x2, outside, t)
    beta = shape[0] / (residual2 + t * m2)  # the best beta for this ratio; the updates' beta once converged
    return _log_evidence(sigma, x2, outside, shape, t * beta, beta)


def _fixed_point_step(sigma, x2, outside, n, t):
    """The paper's updates alpha <- gamma / |m|^2 and beta <- (n - gamma) / |F m - y|^2 at t = alpha / beta,
    where gamma = sum sigma / (sigma + t) counts the directions the labels determine well."""
    gamma = np.sum(sigma / (sigma + t))
    n_minus_gamma = n - len(sigma) + np.sum(t / (sigma + t))  # no cancellation when t is tiny
    m2, residual2 = _fit(sigma, x2, outside, t)
    return gamma / m2, n_minus_gamma / residual2
