"""The paired gain of STILTs over the baseline, against intervals worked out by hand."""
import math

import numpy as np
import pytest
from scipy import stats

from stilts.gains import excludes_zero, paired_gain

STILTS = {1: 80.0, 2: 82.0, 3: 79.0, 4: 85.0, 5: 81.0, 6: 83.0}
BASELINE = {1: 78.0, 2: 80.0, 3: 80.0, 4: 82.0, 5: 79.0, 6: 80.0}  # differences 2, 2, -1, 3, 2, 3


def test_t_interval_by_hand():
    # mean = 11/6; squared deviations sum to 3 * (1/6)^2 + (17/6)^2 + 2 * (7/6)^2 = 65/6, sd = sqrt(65/6 / 5);
    # t(0.975, 5) = 2.5706: 11/6 -+ 2.5706 * 1.4720 / sqrt(6) = 0.289 .. 3.378.
    gain = paired_gain(STILTS, BASELINE)
    half_width = stats.t.ppf(0.975, 5) * math.sqrt(65 / 6 / 5) / math.sqrt(6)
    assert gain["mean"] == pytest.approx(11 / 6)
    assert gain["ci95_low"] == pytest.approx(11 / 6 - half_width)
    assert gain["ci95_high"] == pytest.approx(11 / 6 + half_width)
    assert (gain["paired_runs"], gain["interval"]) == (6, "t")
    assert gain["ci95_low"] == pytest.approx(0.289, abs=1e-3) and excludes_zero(gain)


def test_few_pairs_get_a_reproducible_bootstrap():
    stilts, baseline = {1: 80.0, 2: 82.0, 3: 79.0}, {1: 78.0, 2: 80.0, 3: 80.0}  # differences 2, 2, -1
    gain = paired_gain(stilts, baseline)
    assert (gain["mean"], gain["paired_runs"], gain["interval"]) == (1.0, 3, "bootstrap")
    assert -1.0 <= gain["ci95_low"] < 1.0 < gain["ci95_high"] <= 2.0
    assert paired_gain(stilts, baseline) == gain
    assert not excludes_zero(gain)


def test_unpaired_seeds_and_failed_runs_are_left_out():
    stilts = {**STILTS, 7: 90.0, 8: math.nan}  # 7 has no baseline; 8 failed
    baseline = {**BASELINE, 8: 79.0, 9: 70.0, 5: math.nan}  # 9 has no STILTs run; the baseline of 5 failed
    without_5 = {seed: value for seed, value in STILTS.items() if seed != 5}
    assert paired_gain(stilts, baseline) == paired_gain(without_5, BASELINE)
    assert paired_gain(stilts, baseline)["paired_runs"] == 5


def test_one_pair_has_no_interval_and_none_no_gain():
    one = paired_gain({1: 80.0, 2: 81.0}, {1: 78.0})
    assert one["mean"] == 2.0 and one["paired_runs"] == 1 and one["interval"] is None
    assert np.isnan(one["ci95_low"]) and np.isnan(one["ci95_high"]) and not excludes_zero(one)
    none = paired_gain({1: 80.0}, {2: 78.0})
    assert np.isnan(none["mean"]) and none["paired_runs"] == 0 and not excludes_zero(none)
