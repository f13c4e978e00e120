"""Per-batch item counts of every source when the shares follow step schedules.

Batch ``g`` belongs to step ``s = g // world_size`` and should hold ``b_k(g) = share_k(s) *
batch_size`` items of source k. As with fixed shares (:mod:`realsynth.mixing.batch_composition`)
it gets ``floor(b_k(g))`` or ``ceil(b_k(g))`` of them, the batch sums to ``batch_size``, and the
running count ``X_k(g)`` of batches ``[0, g)`` stays strictly within one item of the running
target ``T_k(g) = sum_{t < g} b_k(t)``.

Shares: the sources' schedule values at step s, divided by their sum (so they sum to one by
construction), then rounded to multiples of ``2^-16`` with an exact sum (largest remainder,
ties to the lower source index). Those rounded shares are the targets, reported by
:meth:`ScheduledComposition.shares`, and all the arithmetic on them is exact in int64.

- Two sources: ``X_0(g) = round(T_0(g))``, the other takes the rest (error at most 1/2).
- Three or more (up to six): the path of
  :func:`realsynth.mixing.composition_search.search_path`.

Everything is tabulated at construction up to the schedule's last change (prefix sums per
step; one state byte per global batch for three or more sources); later batches are constant
shares, handled in closed form or by a periodic table. A query therefore costs the same at any
``g``, and the tables depend only on the schedules, batch size and world size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from realsynth.mixing.composition_search import (
    MAX_SEARCH_SOURCES,
    BatchConstraints,
    PeriodicPath,
    search_path,
)
from realsynth.mixing.step_schedule import StepSchedule

__all__ = ["SHARE_UNITS", "ScheduledComposition"]

SHARE_UNITS = 1 << 16  # shares are multiples of 1 / SHARE_UNITS
_INT64_LIMIT = 1 << 62


class ScheduledComposition:
    """Per-batch counts of every source, as a function of the global batch index.

    Args:
        schedules: per-source values over steps (normalized per step).
        batch_size: items per batch (per rank).
        world_size: batches per step (one per data-parallel rank).

    Raises:
        ValueError: the values sum to zero at some step, or more than six sources share items
            under a changing schedule.
    """

    def __init__(
        self, schedules: Sequence[StepSchedule], batch_size: int, world_size: int = 1
    ) -> None:
        self.num_sources = len(schedules)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.last_change = max(s.last_change_step for s in schedules)
        steps = np.arange(self.last_change + 1, dtype=np.int64)
        self._units = _quantize(np.stack([s.values(steps) for s in schedules], axis=1))
        self._prefix = np.zeros_like(self._units)
        np.cumsum(self._units[:-1], axis=0, out=self._prefix[1:])
        self._bits = (np.arange(1 << self.num_sources)[:, None] >> np.arange(self.num_sources)) & 1
        self._limit = _INT64_LIMIT // (self.batch_size * SHARE_UNITS)
        self._states: np.ndarray | None = None
        self._tail: PeriodicPath | None = None
        if self.num_sources > 2:
            self._search()

    @property
    def change_batches(self) -> int:
        """Global batches before the last change of the shares."""
        return self.last_change * self.world_size

    def shares(self, steps: np.ndarray) -> np.ndarray:
        """The rounded target shares at each given step: float64 [N, K], rows summing to 1."""
        s = np.minimum(np.asarray(steps, dtype=np.int64), self.last_change)
        return self._units[s] / SHARE_UNITS

    def cumulative(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in global batches ``[0, g)``, for every ``g`` given.

        Args:
            batches: int64 array [N] of global batch indices ``g >= 0``.

        Returns:
            int64 array [N, K].
        """
        g = np.asarray(batches, dtype=np.int64)
        if g.size and int(g.max()) >= self._limit:
            raise ValueError(
                f"global batch {int(g.max())} is beyond the {self._limit} batches that exact "
                f"int64 targets allow at batch size {self.batch_size}"
            )
        target = self._target_units(g)
        if self.num_sources == 2:
            first = (2 * target[:, 0] + SHARE_UNITS) // (2 * SHARE_UNITS)
            return np.stack([first, g * self.batch_size - first], axis=1)
        return target // SHARE_UNITS + self._bits[self._state_of(g)]

    def counts(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in each given global batch: int64 [N, K], rows sum to batch_size."""
        g = np.asarray(batches, dtype=np.int64)
        return self.cumulative(g + 1) - self.cumulative(g)

    def _target_units(self, g: np.ndarray) -> np.ndarray:
        """``T_k(g) * SHARE_UNITS`` (exact): int64 [N, K]."""
        step, within = np.divmod(g, self.world_size)
        clipped = np.minimum(step, self.last_change)
        beyond = (step - clipped)[:, None]
        units = self._units[clipped]
        done = self._prefix[clipped] + beyond * units  # units of the steps before `step`
        return self.batch_size * (self.world_size * done + within[:, None] * units)

    def _state_of(self, g: np.ndarray) -> np.ndarray:
        assert self._states is not None and self._tail is not None
        head = self.change_batches
        early = np.minimum(g, head)
        return np.where(g < head, self._states[early], self._tail.states(np.maximum(g - head, 0)))

    def _constraints(self, g: np.ndarray) -> BatchConstraints:
        """The constraints of batches ``g`` (see :mod:`realsynth.mixing.composition_search`)."""
        before, after = self._target_units(g), self._target_units(g + 1)
        per_batch = after - before
        low = per_batch // SHARE_UNITS
        high = low + (per_batch % SHARE_UNITS != 0)
        # Step of the source's state bit allowed when low - delta <= step <= high - delta.
        delta = after // SHARE_UNITS - before // SHARE_UNITS
        weights = 1 << np.arange(self.num_sources, dtype=np.int64)

        def mask(flags: np.ndarray) -> list[int]:
            return (flags.astype(np.int64) @ weights).tolist()

        ceiled = g * self.batch_size - (before // SHARE_UNITS).sum(axis=1)
        return (
            mask(before % SHARE_UNITS != 0),
            ceiled.tolist(),
            mask((low - delta > 0) | (high - delta < 0)),
            mask(high - delta < 1),
            mask(low - delta > -1),
        )

    def _search(self) -> None:
        active = int((self._units > 0).any(axis=0).sum())
        if active > MAX_SEARCH_SOURCES:
            raise ValueError(
                f"changing shares are supported for up to {MAX_SEARCH_SOURCES} sources with "
                f"items, got {active}; keep the shares constant or merge sources"
            )
        head = self.change_batches
        tail_units = self.batch_size * self._units[-1]
        period = SHARE_UNITS // math.gcd(SHARE_UNITS, *tail_units.tolist())
        self._tail = PeriodicPath(
            self._constraints(head + np.arange(period, dtype=np.int64)), self.num_sources
        )
        self._states = search_path(
            lambda start, stop: self._constraints(np.arange(start, stop, dtype=np.int64)),
            head,
            self._tail,
            self.num_sources,
        )
        self._tail.start(int(self._states[head]))


def _quantize(values: np.ndarray) -> np.ndarray:
    """Per-step shares in units of ``1 / SHARE_UNITS`` summing exactly to ``SHARE_UNITS``.

    Args:
        values: float64 [S, K] of non-negative values, every row with a positive sum.

    Returns:
        int64 [S, K].
    """
    totals = values.sum(axis=1, keepdims=True)
    bad = np.flatnonzero(~(totals[:, 0] > 0))
    if bad.size:
        raise ValueError(f"the sources' shares sum to {totals[bad[0], 0]} at step {bad[0]}")
    exact = values / totals * SHARE_UNITS
    units = np.floor(exact).astype(np.int64)
    missing = SHARE_UNITS - units.sum(axis=1)
    # Largest remainders first, ties to the lower index (a stable sort keeps index order).
    order = np.argsort(-(exact - units), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None, :], axis=1)
    return units + (rank < missing[:, None])
