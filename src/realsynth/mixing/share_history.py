"""Per-batch counts under shares that change while training, decided step by step.

Adaptive mixing decides new shares as the run goes, so nothing can be planned ahead. The
history is a list of changes ``(step, shares)``, each in force from its step's first global
batch ``c = step * world_size`` until the next change; the state is O(number of changes).

- Two sources: ``X_0(g) = round(T_0(g))``, the other takes the rest, exactly as for planned
  schedules (:mod:`realsynth.mixing.scheduled_composition`); shares are multiples of ``2^-16``.
  Any change, at any batch, keeps every batch at floor / ceil and the running error within 1/2.
- Three or more: from a state that is fine now, some fractional shares admit no exact
  continuation (about one random case in twenty), and an online decision cannot look ahead. So
  after the first change every batch holds a whole number of items of each source: the shares in
  force are the decided ones rounded to multiples of ``1 / batch_size`` (largest remainder).
  With whole per-batch counts the running error keeps whatever value it had at the change
  (strictly below one), so every batch is exact for the shares in force. Before the first change
  the initial shares run on the exact-fraction schedule of fixed mixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from realsynth.mixing.batch_composition import CompositionSchedule
from realsynth.mixing.scheduled_composition import SHARE_UNITS

__all__ = ["ShareHistory"]


class ShareHistory:
    """Per-batch counts of every source under shares decided while training.

    Args:
        shares: the initial exact shares (summing to 1).
        batch_size: items per batch (per rank).
        world_size: batches per step.
    """

    def __init__(self, shares: Sequence[Fraction], batch_size: int, world_size: int = 1) -> None:
        self.num_sources = len(shares)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self._initial = [Fraction(s) for s in shares]
        self._fixed = CompositionSchedule(self._initial, self.batch_size)
        # Change j: first step, per-source values (two sources: units of 2^-16; more: items per
        # batch), running counts (more sources) or running target units of source 0 (two) there.
        self.steps: list[int] = [0]
        self.values: list[list[int]] = [self._first_values()]
        self._starts = np.zeros((1, self.num_sources), dtype=np.int64)
        self._rebuild()

    def _first_values(self) -> list[int]:
        if self.num_sources == 2:
            return _units([float(s) for s in self._initial])
        return [-1] * self.num_sources  # the exact-fraction schedule, not whole counts

    def change(self, step: int, ratios: Sequence[float]) -> bool:
        """Puts ``ratios`` (normalized) in force from ``step`` on; False when nothing changes.

        Raises:
            ValueError: ``step`` is before the last change, or the ratios are not >= 0 with a
                positive sum.
        """
        if step < self.steps[-1]:
            raise ValueError(
                f"a share change at step {step} is before the last one ({self.steps[-1]})"
            )
        values = _units(ratios) if self.num_sources == 2 else _counts(ratios, self.batch_size)
        if values == self.values[-1]:
            return False
        self._put(int(step), values)
        return True

    def _put(self, step: int, values: list[int]) -> None:
        if step == self.steps[-1] and step > 0:  # a second decision for the same step
            self.values[-1] = values
        else:
            start = self._running(np.array([step * self.world_size], dtype=np.int64))
            self.steps.append(step)
            self.values.append(values)
            self._starts = np.concatenate([self._starts, start])
        self._rebuild()

    def _rebuild(self) -> None:
        self._first = np.array(self.steps, dtype=np.int64) * self.world_size
        self._table = np.array(self.values, dtype=np.int64)

    def shares(self, steps: np.ndarray) -> np.ndarray:
        """The shares in force at each given step: float64 [N, K]."""
        j = np.searchsorted(self._first, np.asarray(steps) * self.world_size, side="right") - 1
        if self.num_sources == 2:
            return self._table[j] / SHARE_UNITS
        initial = np.array([float(s) for s in self._initial])
        return np.where((j == 0)[:, None], initial[None, :], self._table[j] / self.batch_size)

    def cumulative(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in global batches ``[0, g)``: int64 [N, K]."""
        g = np.asarray(batches, dtype=np.int64)
        if self.num_sources == 2:
            target = self._running(g)[:, 0]
            first = (2 * target + SHARE_UNITS) // (2 * SHARE_UNITS)
            return np.stack([first, g * self.batch_size - first], axis=1)
        return self._running(g)

    def counts(self, batches: np.ndarray) -> np.ndarray:
        """Items of each source in each given global batch: int64 [N, K]."""
        g = np.asarray(batches, dtype=np.int64)
        return self.cumulative(g + 1) - self.cumulative(g)

    def _running(self, g: np.ndarray) -> np.ndarray:
        """Two sources: running target units ``T(g) * 2^16`` [N, 2]; more: counts [N, K]."""
        j = np.searchsorted(self._first, g, side="right") - 1
        since = (g - self._first[j])[:, None]
        if self.num_sources == 2:
            return self._starts[j] + since * self.batch_size * self._table[j]
        out = self._starts[j] + since * self._table[j]
        early = j == 0
        if early.any():
            out[early] = self._fixed.cumulative(g[early])
        return out

    def state_dict(self) -> dict[str, list | int]:
        """The changes: O(number of changes) plain numbers (and the per-rank batch size)."""
        return {
            "steps": list(self.steps),
            "values": [list(v) for v in self.values],
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, list | int]) -> None:
        """Replays the saved changes (two sources: at any world size; more: the per-rank batch
        must be the same, the changes being whole items per batch).

        Raises:
            ValueError: a history of another sampler, or 3+ sources at another batch size.
        """
        if len(state["steps"]) != len(state["values"]) or state["values"][0] != self.values[0]:
            raise ValueError("share history does not start from this sampler's initial shares")
        saved_batch = int(state.get("batch_size", self.batch_size))
        if self.num_sources > 2 and len(state["steps"]) > 1 and saved_batch != self.batch_size:
            raise ValueError(
                f"adaptive mixing of {self.num_sources} sources decided whole items per batch of "
                f"{saved_batch} per process; this run has {self.batch_size} per process: resume "
                "on the same number of processes"
            )
        fresh = ShareHistory(self._initial, self.batch_size, self.world_size)
        for step, values in zip(state["steps"][1:], state["values"][1:]):
            fresh._put(int(step), [int(v) for v in values])
        self.__dict__.update(fresh.__dict__)


def _units(ratios: Sequence[float]) -> list[int]:
    """Normalized ratios in units of ``2^-16``, summing exactly (largest remainder)."""
    return _apportion(ratios, SHARE_UNITS)


def _counts(ratios: Sequence[float], batch_size: int) -> list[int]:
    """Normalized ratios as whole items of one batch, summing to ``batch_size``."""
    return _apportion(ratios, batch_size)


def _apportion(ratios: Sequence[float], total: int) -> list[int]:
    values = [float(r) for r in ratios]
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"shares must be finite, >= 0 and not all 0, got {values}")
    exact = [v / sum(values) * total for v in values]
    out = [math.floor(e) for e in exact]
    order = sorted(range(len(values)), key=lambda k: (-(exact[k] - out[k]), k))
    for k in order[: total - sum(out)]:
        out[k] += 1
    return out
