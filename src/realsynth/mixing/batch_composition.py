"""How many items of each source go into every batch of a mixed stream.

Source k should supply ``s_k = ratio_k * batch_size`` items per batch. Every batch gets
``floor(s_k)`` or ``ceil(s_k)`` of them, the batch always sums to ``batch_size``, and after any
number of batches ``g`` the running count ``X_k(g)`` stays strictly within one item of
``g * s_k`` (largest remainder with carry-over).

Writing ``s_k = base_k + q_k`` with ``0 <= q_k < 1``, only the fractional "extras" need
scheduling: ``E = sum q_k`` of them per batch (an integer), at most one per source. The schedule
is a pure function of ``g``:

- two sources with a fractional share: ``X_i(g) = round(g * q_i)``, the other takes the rest;
  deviations are at most 1/2.
- three or more: this is a Pfair schedule (Baruah et al., 1996): ``E`` processors, one task per
  source of weight ``q_k``, each task on at most one processor per slot, lag strictly within one.
  realsynth uses PD^2 (Anderson & Srinivasan, "Mixed Pfair/ERfair scheduling of asynchronous
  periodic tasks", JCSS 2004), which is optimal: the ``i``-th extra of source k may go into
  batches ``[floor((i-1)/q_k), ceil(i/q_k))``; each batch the ``E`` eligible sources whose next
  extra has the earliest deadline get one, ties broken by the successor-overlap bit and, for
  sources with ``q_k >= 1/2``, by the group deadline. Plain earliest-deadline-first (and
  "largest debt first") are not enough: they can reach a batch with fewer than ``E`` eligible
  sources. The pattern repeats with the period ``P`` after which every ``g * q_k`` is an
  integer, so it is tabulated once when ``P`` is small and stepped forward from the start of
  the period otherwise.

Ratios are given as floats; they are read as the nearest fractions with denominators up to
10^6 (0.7 -> 7/10) and rescaled to sum to exactly one, so the schedule is exact integer math.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["CompositionSchedule", "exact_shares"]

_MAX_DENOMINATOR = 10**6
_MAX_TABLE_PERIOD = 1 << 16
_INT64_SAFE = 1 << 31


def exact_shares(ratios: Sequence[float]) -> list[Fraction]:
    """Exact fractions for float ratios, rescaled to sum to one.

    Args:
        ratios: non-negative floats with a positive sum.

    Returns:
        one Fraction per ratio, summing to exactly 1.
    """
    # A tiny positive ratio must not round to zero: keep its exact binary value instead.
    fracs = [Fraction(r).limit_denominator(_MAX_DENOMINATOR) or Fraction(r) for r in ratios]
    total = sum(fracs)
    if total <= 0:
        raise ValueError(f"ratios must have a positive sum, got {list(ratios)}")
    return [f / total for f in fracs]


class CompositionSchedule:
    """Per-batch item counts of every source, as a function of the global batch index.

    Args:
        shares: exact per-source fractions summing to 1 (see :func:`exact_shares`).
        batch_size: items per batch.
    """

    def __init__(self, shares: Sequence[Fraction], batch_size: int) -> None:
        if sum(shares) != 1:
            raise ValueError(f"shares must sum to exactly 1, got {sum(shares)}")
        denom = math.lcm(*(s.denominator for s in shares))
        numer = [int(s * denom) for s in shares]
        self.num_sources = len(shares)
        self._shares = list(shares)
        self.batch_size = int(batch_size)
        self._denom = denom
        self._base = np.array([a * batch_size // denom for a in numer], dtype=np.int64)
        self._rem = [a * batch_size % denom for a in numer]
        self.extras_per_batch = sum(self._rem) // denom
        self.period = denom // math.gcd(denom, *self._rem)
        # Whole periods add exactly period * q_k extras to source k.
        self._extras_per_period = np.array(
            [self.period * r // denom for r in self._rem], dtype=np.int64
        )
        self._active = [k for k, r in enumerate(self._rem) if r > 0]
        self._table: np.ndarray | None = None
        self._cursor: tuple[int, list[int]] = (0, [0] * self.num_sources)
        if len(self._active) > 2 and self.period <= _MAX_TABLE_PERIOD:
            self._table = self._pfair_rows(0, self.period + 1)

    def cumulative(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in global batches ``[0, g)``, for every ``g`` given.

        Args:
            batches: int64 array [N] of global batch indices ``g >= 0``.

        Returns:
            int64 array [N, K]; row differences of consecutive ``g`` are per-batch counts.
        """
        g = np.asarray(batches, dtype=np.int64)
        whole, within = np.divmod(g, self.period)
        extras = whole[:, None] * self._extras_per_period[None, :]
        extras += self._extras_within(within)
        return g[:, None] * self._base[None, :] + extras

    def shares(self, steps: np.ndarray) -> np.ndarray:
        """The per-source shares at each given step (the same at every step): float64 [N, K]."""
        row = np.array([float(s) for s in self._shares], dtype=np.float64)
        return np.broadcast_to(row, (np.asarray(steps).shape[0], self.num_sources)).copy()

    def counts(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in each given global batch.

        Args:
            batches: int64 array [N] of global batch indices.

        Returns:
            int64 array [N, K], every row summing to ``batch_size``.
        """
        g = np.asarray(batches, dtype=np.int64)
        return self.cumulative(g + 1) - self.cumulative(g)

    def _extras_within(self, t: np.ndarray) -> np.ndarray:
        """Extras handed out in batches ``[0, t)`` for ``0 <= t <= period``: int64 [N, K]."""
        out = np.zeros((t.shape[0], self.num_sources), dtype=np.int64)
        if not self._active:
            return out
        if len(self._active) == 2:
            i, j = self._active
            dtype = np.int64 if self._denom < _INT64_SAFE else object
            tt = t.astype(dtype)
            rounded = (tt * self._rem[i] + self._denom // 2) // self._denom
            out[:, i] = rounded.astype(np.int64)
            out[:, j] = t - out[:, i]
            return out
        if self._table is not None:
            return self._table[t]
        for row, value in enumerate(t.tolist()):
            out[row] = self._pfair_rows(value, value + 1)[0]
        return out

    def _pfair_rows(self, start: int, stop: int) -> np.ndarray:
        """PD^2 extras before batches ``start .. stop - 1`` (within one period)."""
        step, extras = self._cursor
        if step > start:
            step, extras = 0, [0] * self.num_sources
        rows = np.empty((stop - start, self.num_sources), dtype=np.int64)
        while step < stop:
            if step >= start:
                rows[step - start] = extras
            extras = self._pfair_step(step, extras)
            step += 1
        self._cursor = (step, extras)
        return rows

    def _pfair_step(self, slot: int, extras: list[int]) -> list[int]:
        """Hands out the extras of batch ``slot`` (0-based) by PD^2 priority."""
        denom = self._denom
        keyed = sorted(
            (_pd2_key(extras[k] + 1, self._rem[k], denom), k)
            for k in self._active
            if extras[k] * denom // self._rem[k] <= slot  # the next extra is released
        )
        if len(keyed) < self.extras_per_batch:  # cannot happen: PD^2 is optimal
            raise RuntimeError(f"Pfair schedule ran out of eligible sources at batch {slot}")
        new = list(extras)
        for _, k in keyed[: self.extras_per_batch]:
            new[k] += 1
        return new


def _pd2_key(i: int, rem: int, denom: int) -> tuple[int, int, int]:
    """PD^2 priority of the ``i``-th extra of a source with weight ``rem / denom`` (smaller first).

    (deadline, -b, -group deadline): ``d = ceil(i / w)``; ``b = d - floor(i / w)`` is 1 when the
    next extra's window overlaps this one's; heavy sources (``w >= 1/2``) carry the group
    deadline ``ceil(ceil(d (1 - w)) / (1 - w))``, the end of the cascade of overlapping windows
    that a delay here would push.
    """
    deadline = _ceil_div(i * denom, rem)
    overlap = deadline - i * denom // rem
    group = 0
    if 2 * rem >= denom:
        light = denom - rem  # (1 - w) * denom
        group = _ceil_div(_ceil_div(deadline * light, denom) * denom, light)
    return (deadline, -overlap, -group)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
