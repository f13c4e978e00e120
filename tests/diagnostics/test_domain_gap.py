"""Domain-gap statistics on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from realsynth.diagnostics.domain_gap import (
    domain_classifier_auc,
    frechet_distance,
    js_divergence,
    roc_auc,
)


def test_js_divergence_by_hand() -> None:
    assert js_divergence([3, 1], [6, 2]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4); JS = 1/2 KL(p||m) + 1/2 KL(q||m).
    expected = 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)) + 0.5 * np.log2(
        1 / 0.75
    )
    assert js_divergence([1, 1], [1, 0]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="count vectors"):
        js_divergence([1, 2], [1])


def test_roc_auc_by_hand() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)  # a tie: half


def test_one_distribution_gives_auc_near_half_and_different_ones_near_one() -> None:
    rng = np.random.default_rng(0)
    same = domain_classifier_auc(
        rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), replicates=300
    )
    assert abs(same["auc"] - 0.5) < 0.08 and same["low"] < 0.5 < same["high"]
    apart = domain_classifier_auc(
        rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.5, replicates=300
    )
    assert apart["auc"] > 0.97 and apart["low"] > 0.9


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([3.0, 0.0, 4.0])) == pytest.approx(25.0, rel=1e-6)
