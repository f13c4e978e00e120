"""Intervals for claims about learning: a mean over seeds, and a paired bootstrap of a difference.

Pure functions of arrays, seeded: the same inputs and seed give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval (``low``/``high`` NaN when it cannot be formed)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of per-seed values with Student's t interval (``n - 1`` degrees of freedom).

    Args:
        values: one value per seed (at least one).
        level: coverage of the interval, in (0, 1).

    Returns:
        :class:`Interval`; with one value the interval is NaN (nothing to estimate spread from).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"mean_interval needs a non-empty 1-d sequence, got shape {array.shape}")
    mean = float(array.mean())
    if array.size == 1:
        return Interval(mean, math.nan, math.nan)
    spread = stats.sem(array)
    if spread == 0:  # identical values: SciPy's interval is undefined for a zero scale
        return Interval(mean, mean, mean)
    low, high = stats.t.interval(level, array.size - 1, loc=mean, scale=spread)
    return Interval(mean, float(low), float(high))


@dataclass(frozen=True)
class PairedDifference:
    """Treatment minus reference with a bootstrap interval and ``P(difference > 0)``."""

    difference: Interval
    probability_positive: float
    replicates: int

    def to_dict(self) -> dict[str, float]:
        return {
            **self.difference.to_dict(),
            "probability_positive": self.probability_positive,
            "replicates": self.replicates,
        }


def paired_bootstrap(
    treatment: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    metric: Callable[[np.ndarray], float],
    *,
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Bootstrap over seeds and evaluation images of ``mean_s metric(T_s) - metric(R_s)``.

    Seeds and images are crossed factors: run s of the treatment is paired with run s of the
    reference (same seed), and every run scored the same images in the same order. Each
    replicate draws seeds with replacement and, independently, one set of image indices with
    replacement that every drawn run is scored on, so the image-to-image correlation between the
    two arms is kept (a paired test) and both sources of noise widen the interval.

    Args:
        treatment: per seed, per-image records [N, d] (N and d equal everywhere).
        reference: the same for the reference variant, seed for seed.
        metric: records of some images [n, d] -> the value (e.g. R@50 recomputed from them).
        replicates: bootstrap draws.
        level: coverage of the percentile interval.
        seed: seed of the draws.

    Returns:
        :class:`PairedDifference` (observed difference, percentile interval, share of replicates
        above 0).
    """
    if len(treatment) != len(reference) or not treatment:
        raise ValueError(
            f"paired_bootstrap: {len(treatment)} treatment runs but {len(reference)} reference "
            "runs; pair them seed by seed"
        )
    shapes = {np.shape(r) for r in [*treatment, *reference]}
    if len(shapes) != 1:
        raise ValueError(f"paired_bootstrap: every run must score the same images, got {shapes}")
    num_seeds, num_images = len(treatment), shapes.pop()[0]
    rng = np.random.default_rng(seed)
    observed = float(np.mean([metric(t) - metric(r) for t, r in zip(treatment, reference)]))
    draws = np.empty(replicates)
    for b in range(replicates):
        seeds = rng.integers(0, num_seeds, size=num_seeds)
        images = rng.integers(0, num_images, size=num_images)
        draws[b] = np.mean(
            [metric(treatment[s][images]) - metric(reference[s][images]) for s in seeds]
        )
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return PairedDifference(
        Interval(observed, float(low), float(high)), float((draws > 0).mean()), replicates
    )
