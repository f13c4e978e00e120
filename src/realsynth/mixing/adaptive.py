"""Adaptive mixing: shares (and synthetic loss weights) that follow a small real holdout.

Method ``gradient_alignment``, after DoGE (Fan, Pagliardini and Jaggi, "DoGE: Domain
Reweighting with Generalization Estimation", ICML 2024; its out-of-domain variant): every
``INTERVAL`` steps, the gradient of each source's training loss on the current batch is compared
with the gradient of the loss on a holdout batch (:mod:`realsynth.mixing.alignment`), and the
shares take an exponentiated-gradient step towards the sources whose gradients point where the
holdout's does:

    a_k = SMOOTHING * a_k + (1 - SMOOTHING) * cos(g_k, g_holdout)
    share_k  <-  share_k * exp(STEP_SIZE * a_k), then the nearest point of
                 {MIN_k <= share_k <= MAX_k, sum share_k = 1} along the same ray (a common factor
                 and clipping, found by bisection).

DoGE uses the raw inner product scaled by the learning rate; realsynth uses a score in [-1, 1],
so that ``STEP_SIZE`` means the same at any loss scale and learning rate (a step of 1.0
multiplies the share of a perfectly aligned source by e relative to an orthogonal one). Score
``cosine`` is the formula above, which shrinks with a source's item count (a smaller share
scores lower whatever the data); score ``projection`` is the inner product of per-item mean
gradients over noise-free gradient lengths common to all sources, whose expectation does not
depend on the count: each of its parts is smoothed, then their ratio taken
(:func:`projection_score`). With ``ADAPT_WEIGHTS``
the loss weight of every synthetic source takes the same multiplicative step, clipped to
``[MIN_WEIGHT, MAX_WEIGHT]``. A source without items in the measured batch keeps its alignment.

A decision made after step ``s`` rules the batches drawn for steps ``s + INTERVAL`` ..
``s + 2 * INTERVAL - 1``: the loader may already hold batches up to one interval ahead, and a
fixed delay keeps the trajectory a function of the seed alone (not of the number of workers).
The mixer only decides; the shares and weights in force at a step are the sampler's
(:meth:`realsynth.mixing.sampler.MixedBatchSampler.change_mix`, ``weights_at``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SCORE_RULES", "AdaptiveMixer", "Decision", "project_shares", "projection_score"]

_BISECTION_STEPS = 200
SCORE_RULES = ("cosine", "projection")
#: ``projection``: a half product ``g_A . g_B`` counts as at least this fraction of
#: ``|g_A| |g_B|`` (at or below zero, noise hides the mean gradient).
PROJECTION_FLOOR = 1e-3


@dataclass(frozen=True)
class Decision:
    """One decision: from ``step`` on, these shares and weights; and what was measured."""

    step: int
    ratios: list[float]
    weights: list[float]
    alignment: list[float | None]
    smoothed: list[float | None]


class AdaptiveMixer:
    """The decisions of adaptive mixing (pure arithmetic; the measurement is elsewhere).

    Args:
        names: source names, in the mix's order.
        kinds: ``real`` / ``synthetic`` per source.
        ratios: initial shares (summing to 1).
        weights: initial loss weights.
        interval: steps between decisions.
        step_size: exponentiated-gradient step.
        smoothing: EMA factor of the alignment, in [0, 1).
        min_ratios / max_ratios: per-source share bounds.
        adapt_weights: also move the synthetic sources' weights.
        min_weight / max_weight: bounds of the adapted weights.
        score: ``cosine`` (the EMA of the measured cosines) or ``projection`` (the EMA of
            each part of the projection score, then their ratio: :func:`projection_score`).

    Raises:
        ValueError: bounds that no shares summing to one can meet, or a bad setting.
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        kinds: Sequence[str],
        ratios: Sequence[float],
        weights: Sequence[float],
        interval: int,
        step_size: float,
        smoothing: float,
        min_ratios: Sequence[float],
        max_ratios: Sequence[float],
        adapt_weights: bool = False,
        min_weight: float = 0.0,
        max_weight: float = 1.0,
        score: str = "cosine",
    ) -> None:
        if score not in SCORE_RULES:
            raise ValueError(f"unknown score {score!r}; one of {', '.join(SCORE_RULES)}")
        if interval < 1 or not step_size > 0 or not 0 <= smoothing < 1:
            raise ValueError(
                f"adaptive mixing needs interval >= 1, step_size > 0 and smoothing in [0, 1), "
                f"got {interval}, {step_size}, {smoothing}"
            )
        if sum(min_ratios) > 1 + 1e-9 or sum(max_ratios) < 1 - 1e-9:
            raise ValueError(
                f"share bounds admit no mix: the minimums sum to {sum(min_ratios):.4g} and the "
                f"maximums to {sum(max_ratios):.4g} (need <= 1 and >= 1)"
            )
        self.names, self.kinds = list(names), list(kinds)
        self.interval, self.step_size, self.smoothing = int(interval), step_size, smoothing
        self.low = np.array(min_ratios, dtype=np.float64)
        self.high = np.array(max_ratios, dtype=np.float64)
        self.adapt_weights = bool(adapt_weights)
        self.weight_bounds = (float(min_weight), float(max_weight))
        outside = [
            f"{name} {r:g} not in [{lo:g}, {hi:g}]"
            for name, r, lo, hi in zip(self.names, ratios, self.low, self.high)
            if not lo - 1e-12 <= r <= hi + 1e-12
        ]
        if outside:
            raise ValueError(
                f"the starting shares must lie within the bounds (MIN_RATIO / MAX_RATIO): "
                f"{'; '.join(outside)}"
            )
        self.ratios = np.array(ratios, dtype=np.float64)
        self.weights = np.array(weights, dtype=np.float64)
        self.score = score
        self.smoothed: list[float | None] = [None] * len(self.names)
        self.parts: list[list[float] | None] = [None] * len(self.names)
        self.decisions = 0

    @property
    def initial_horizon(self) -> int:
        """Steps whose batches need no decision: the first two intervals."""
        return 2 * self.interval

    @property
    def next_decision(self) -> int:
        """The step after which the next decision is taken: ``(decisions + 1) * interval``."""
        return (self.decisions + 1) * self.interval

    def due(self, step: int) -> bool:
        """Whether a decision is due once the batch drawn for step ``step - 1`` is trained
        (a batch skipped at the due step moves the decision to the next trained batch)."""
        return step >= self.next_decision

    def decide(
        self,
        step: int,
        alignment: Sequence[float | None],
        parts: Sequence[Sequence[float] | None] | None = None,
    ) -> Decision:
        """The shares and weights from step ``step + interval`` on, given the alignment
        measured after step ``step`` (None for a source absent from the batch) and, with
        ``projection``, the parts of each source's score (``alignment.projection_parts``)."""
        if self.score == "projection":
            if parts is None:
                raise ValueError("the projection score needs the measured parts")
            self._smooth_parts(parts)
        else:
            self._smooth_values(alignment)
        push = np.array([0.0 if a is None else a for a in self.smoothed])
        self.ratios = project_shares(
            self.ratios * np.exp(self.step_size * push), self.low, self.high
        )
        start = step + self.interval
        if self.adapt_weights:
            moved = self.weights * np.exp(self.step_size * push)
            synthetic = np.array([kind == "synthetic" for kind in self.kinds])
            self.weights = np.where(synthetic, np.clip(moved, *self.weight_bounds), self.weights)
        self.decisions += 1
        return Decision(
            start, self.ratios.tolist(), self.weights.tolist(), list(alignment), list(self.smoothed)
        )

    def _smooth_values(self, alignment: Sequence[float | None]) -> None:
        for k, value in enumerate(alignment):
            if value is None or not math.isfinite(value):
                continue
            old = self.smoothed[k]
            self.smoothed[k] = (
                value if old is None else self.smoothing * old + (1 - self.smoothing) * value
            )

    def _smooth_parts(self, parts: Sequence[Sequence[float] | None]) -> None:
        """The EMA of every part, then the score of the averages: a ratio of averages, stable
        where the ratio of one measurement's noisy parts is not."""
        for k, measured in enumerate(parts):
            if measured is None or not all(math.isfinite(x) for x in measured):
                continue
            old = self.parts[k]
            self.parts[k] = (
                list(measured)
                if old is None
                else [self.smoothing * a + (1 - self.smoothing) * b for a, b in zip(old, measured)]
            )
            self.smoothed[k] = projection_score(self.parts[k])

    def state_dict(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "ratios": self.ratios.tolist(),
            "weights": self.weights.tolist(),
            "smoothed": list(self.smoothed),
            "parts": list(self.parts),
            "decisions": self.decisions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["ratios"]) != len(self.names):
            raise ValueError(
                f"adaptive state for {len(state['ratios'])} sources, this run has "
                f"{len(self.names)} ({self.names})"
            )
        if state.get("interval", self.interval) != self.interval:
            raise ValueError(
                f"the run was written with a decision interval of {state['interval']} steps, "
                f"this run has {self.interval}; resume with the same interval (the sampler's "
                "decided batches follow it)"
            )
        self.ratios = np.array(state["ratios"], dtype=np.float64)
        self.weights = np.array(state["weights"], dtype=np.float64)
        self.smoothed = list(state["smoothed"])
        self.parts = list(state.get("parts", [None] * len(self.names)))
        self.decisions = int(state["decisions"])


def project_shares(shares: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``clip(c * shares, low, high)`` with the factor ``c`` that makes it sum to one.

    Args:
        shares: float64 [K], >= 0 (zeros are lifted to their minimum only).
        low / high: float64 [K] bounds, ``sum(low) <= 1 <= sum(high)``.

    Returns:
        float64 [K] summing to 1 (to 1e-12) with ``low <= out <= high``.
    """
    logs = np.log(np.maximum(shares, 1e-300))
    lo, hi = -1500.0, 1500.0  # log c: beyond any ratio of positive float64 shares

    def scaled(log_c: float) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.clip(np.exp(logs + log_c), low, high)

    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if scaled(mid).sum() < 1:
            lo = mid
        else:
            hi = mid
    out = scaled(0.5 * (lo + hi))
    return out / out.sum()


def projection_score(parts: Sequence[float]) -> float:
    """The projection score ``(g_k . g_h) / sqrt((g_BA . g_BB) (g_hA . g_hB))``
    (:mod:`realsynth.mixing.alignment`).

    Args:
        parts: ``[g_k . g_h, g_BA . g_BB, |g_BA| |g_BB|, g_hA . g_hB, |g_hA| |g_hB|]`` (one
            measurement's or their averages); each half product counts as at least
            ``PROJECTION_FLOOR`` times its norms.

    Returns:
        the ratio clipped to [-1, 1] (0.0 where the norms are zero).
    """
    cross, half_b, norms_b, half_h, norms_h = (float(x) for x in parts)
    denominator = math.sqrt(
        max(half_b, PROJECTION_FLOOR * norms_b) * max(half_h, PROJECTION_FLOOR * norms_h)
    )
    if not denominator > 0:
        return 0.0
    return min(1.0, max(-1.0, cross / denominator))
