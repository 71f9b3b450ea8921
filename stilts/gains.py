"""The gain of STILTs over plain fine-tuning on a target task, from runs paired by seed.

A study trains the target task with and without intermediate training under the same seeds. A seed
fixes the head's initialisation and the data order, whose luck moves small tasks' scores by points, so
the per-seed difference cancels much of it: the gain is the mean of the differences, and its 95 %
interval says whether that mean could as well be zero.
"""
import math

import numpy as np
from scipy import stats

_T_INTERVAL_PAIRS = 5  # from this many pairs on, a t interval; below, a bootstrap
_BOOTSTRAP_RESAMPLES = 10_000
_BOOTSTRAP_SEED = 0  # the same runs always give the same interval


def paired_gain(stilts_values, baseline_values):
    """The gain from {seed: target score} of STILTs runs and of baseline runs, as {"mean", "ci95_low",
    "ci95_high", "paired_runs", "interval"}.

    Only seeds with a finite score on both sides pair up; the gain is the mean of their differences
    (STILTs - baseline). Its 95 % interval is the t interval, mean +- t(0.975, n - 1) sd / sqrt(n), from
    5 pairs on ("interval": "t"); with 2 to 4 pairs, where a t interval rests on normality nobody can
    check, the percentile bootstrap of the mean ("bootstrap"), which cannot reach past the observed
    differences and so understates the uncertainty of so few runs. One pair has no spread to go by and
    no pair has no gain: the bounds are NaN ("interval": None), and with no pair the mean too.
    """
    # Sorted, so that the bootstrap draws the same resamples whatever the dicts' order.
    seeds = sorted(seed for seed in set(stilts_values) & set(baseline_values)
                   if math.isfinite(stilts_values[seed]) and math.isfinite(baseline_values[seed]))
    differences = np.array([stilts_values[seed] - baseline_values[seed] for seed in seeds], dtype=float)
    n = len(differences)
    mean = float(differences.mean()) if n else float("nan")
    if n >= _T_INTERVAL_PAIRS:
        half_width = stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n)
        low, high, interval = mean - half_width, mean + half_width, "t"
    elif n >= 2:
        resamples = np.random.default_rng(_BOOTSTRAP_SEED).integers(0, n, size=(_BOOTSTRAP_RESAMPLES, n))
        low, high = np.percentile(differences[resamples].mean(axis=1), [2.5, 97.5])
        interval = "bootstrap"
    else:
        low = high = float("nan")
        interval = None
    return {"mean": mean, "ci95_low": float(low), "ci95_high": float(high), "paired_runs": n, "interval": interval}


def excludes_zero(gain):
    """Whether the 95 % interval of a `paired_gain` lies wholly above or below zero (never without one)."""
    return bool(gain["ci95_low"] > 0 or gain["ci95_high"] < 0)
