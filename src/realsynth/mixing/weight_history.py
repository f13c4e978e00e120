"""Every source's loss weight at every optimizer step: planned, then decided while training.

Until the first change a source's weight is its schedule's value at the step (a constant is a
schedule too). Adaptive mixing then puts whole weight vectors in force from chosen steps on
(:meth:`WeightHistory.change`), each until the next change; the state is O(number of changes)
and replaying it gives the same weights bit for bit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from realsynth.mixing.step_schedule import StepSchedule

__all__ = ["WeightHistory"]


class WeightHistory:
    """Per-step loss weights of every source.

    Args:
        schedules: every source's loss weight over steps (finite, >= 0).

    Raises:
        ValueError: a weight that is negative or not finite at some step.
    """

    def __init__(self, schedules: Sequence[StepSchedule]) -> None:
        self.schedules = list(schedules)
        self.num_sources = len(self.schedules)
        for k, schedule in enumerate(self.schedules):
            low, high = schedule.extremes()
            if not (math.isfinite(high) and low >= 0):
                raise ValueError(
                    f"loss_weights[{k}] must be finite and >= 0, got {schedule.describe()}"
                )
        self.is_scheduled = not all(s.is_constant for s in self.schedules)
        # Change j: the weights in force from optimizer step steps[j] on.
        self.steps: list[int] = []
        self.values: list[list[float]] = []

    def at(self, step: int) -> list[float]:
        """The weights of the batches drawn for optimizer step ``step`` (0-based)."""
        j = bisect.bisect_right(self.steps, int(step)) - 1
        if j >= 0:
            return list(self.values[j])
        return [schedule.value(step) for schedule in self.schedules]

    def change(self, step: int, weights: Sequence[float]) -> bool:
        """Puts ``weights`` in force from ``step`` on; False when nothing changes.

        Raises:
            ValueError: planned weights that change over steps (a decision would overrule the
                plan), ``step`` before the last change, or weights not finite and >= 0.
        """
        values = self.check(step, weights)
        if values == self.at(step):
            return False
        self._put(int(step), values)
        return True

    def check(self, step: int, weights: Sequence[float]) -> list[float]:
        """The validated weights of a change at ``step``; changes nothing.

        Raises:
            ValueError: as :meth:`change`.
        """
        if self.is_scheduled:
            raise ValueError("adaptive loss weights need constant planned weights, not schedules")
        if self.steps and step < self.steps[-1]:
            raise ValueError(
                f"a weight change at step {step} is before the last one ({self.steps[-1]})"
            )
        values = [float(w) for w in weights]
        if len(values) != self.num_sources:
            raise ValueError(f"{len(values)} loss weights for {self.num_sources} sources")
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"loss weights must be finite and >= 0, got {values}")
        return values

    def _put(self, step: int, values: list[float]) -> None:
        if self.steps and step == self.steps[-1]:  # a second decision for the same step
            self.values[-1] = values
        else:
            self.steps.append(step)
            self.values.append(values)

    def state_dict(self) -> dict[str, Any]:
        """The changes: plain numbers."""
        return {"steps": list(self.steps), "values": [list(v) for v in self.values]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replays saved changes in place of this history's.

        Raises:
            ValueError: a history of another number of sources, or an invalid change.
        """
        if len(state["steps"]) != len(state["values"]):
            raise ValueError("weight history: as many steps as weight vectors expected")
        fresh = WeightHistory(self.schedules)
        for step, values in zip(state["steps"], state["values"]):
            fresh._put(int(step), fresh.check(int(step), values))
        self.steps, self.values = fresh.steps, fresh.values
