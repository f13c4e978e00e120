"""Intervals and the paired bootstrap on cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from realsynth.studies.compare_report import verdict
from realsynth.studies.statistics import mean_interval, paired_bootstrap


def _mean(rows: np.ndarray) -> float:
    return float(rows[:, 0].mean())


def test_mean_interval_is_students_t():
    interval = mean_interval([1.0, 2.0, 3.0])
    # sd 1, t(0.975, 2 df) = 4.302653: half-width 4.302653 / sqrt(3).
    assert interval.value == 2.0
    assert interval.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert interval.low == pytest.approx(2.0 - 4.302653 / math.sqrt(3), rel=1e-6)
    single = mean_interval([0.7])
    assert single.value == 0.7 and math.isnan(single.low) and math.isnan(single.high)


def test_a_constant_gain_on_every_image_has_a_degenerate_interval():
    rng = np.random.default_rng(0)
    reference = [rng.random((50, 1)) for _ in range(3)]
    treatment = [r + 0.1 for r in reference]
    result = paired_bootstrap(treatment, reference, _mean, replicates=300, seed=1)
    assert result.difference.value == pytest.approx(0.1)
    assert result.difference.low == pytest.approx(0.1) and result.difference.high == pytest.approx(
        0.1
    )
    assert result.probability_positive == 1.0
    same = paired_bootstrap(reference, reference, _mean, replicates=100)
    assert (same.difference.low, same.difference.high, same.probability_positive) == (0, 0, 0)


def test_half_the_images_won_gives_the_binomial_interval():
    # 400 images: the treatment hits the first 200, the reference none. The resampled share of
    # hits has mean 0.5 and sd sqrt(0.25 / 400) = 0.025: interval about 0.5 +- 1.96 * 0.025.
    reference = [np.zeros((400, 1))]
    treatment = [np.concatenate([np.ones((200, 1)), np.zeros((200, 1))])]
    result = paired_bootstrap(treatment, reference, _mean, replicates=4000, seed=2)
    assert result.difference.value == 0.5
    assert result.difference.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert result.difference.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)


def test_seed_noise_widens_the_interval():
    # Two seeds that disagree (+0.2 and 0.0 on every image): the seed draw alone moves the mean
    # difference between 0, 0.1 and 0.2.
    reference = [np.zeros((100, 1)), np.zeros((100, 1))]
    treatment = [np.full((100, 1), 0.2), np.zeros((100, 1))]
    result = paired_bootstrap(treatment, reference, _mean, replicates=2000, seed=3)
    assert result.difference.value == pytest.approx(0.1)
    assert result.difference.low == pytest.approx(0.0) and result.difference.high == pytest.approx(
        0.2
    )
    assert 0.7 < result.probability_positive < 0.8  # 1 - P(both draws are seed 1) = 3/4


def test_bad_pairings_are_refused():
    with pytest.raises(ValueError, match="pair them seed by seed"):
        paired_bootstrap([np.zeros((3, 1))], [], _mean)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([np.zeros((3, 1))], [np.zeros((4, 1))], _mean)


def test_verdicts_in_words():
    win = {"value": 0.06, "low": 0.02, "high": 0.10, "probability_positive": 0.99}
    assert verdict("mix", "real_only", "real", "R@50", win) == (
        "mix beats real_only on real by +0.060 R@50 [+0.020, +0.100]"
    )
    loss = {"value": -0.05, "low": -0.08, "high": -0.01, "probability_positive": 0.01}
    # The winner's gain and the interval of that gain, not the loser's.
    assert verdict("naive", "real_only", "real", "R@50", loss) == (
        "real_only beats naive on real by +0.050 R@50 [+0.010, +0.080]"
    )
    tie = {"value": 0.01, "low": -0.02, "high": 0.04, "probability_positive": 0.7}
    assert "no difference detectable at this budget" in verdict(
        "mix", "real_only", "real", "R@50", tie
    )
