"""StepSchedule: a value (a source's batch share or loss weight) as a function of the step.

Steps are optimizer steps, counted from 0; with W data-parallel ranks the global batch ``g``
belongs to step ``g // W``. Kinds:

- ``constant``: ``value`` at every step (today's fixed mix).
- ``linear`` / ``cosine``: ``start_value`` up to ``start_step``, then a straight line / a half
  cosine to ``end_value`` at ``end_step``, ``end_value`` from then on (``start_step ==
  end_step`` is a jump).
- ``steps``: piecewise constant: ``before`` until the first breakpoint, then each breakpoint's
  value from its step on (steps strictly increasing).
- ``pretrain_finetune``: ``pretrain_value`` for the first ``pretrain_steps`` steps, then
  ``finetune_value`` (synthetic pre-training then real fine-tuning, for a real share).

A schedule is immutable and is fully described by :meth:`definition`, a dict of plain numbers
that a sampler's ``state_dict`` stores so that a resume can check it runs the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SCHEDULE_KINDS", "StepSchedule"]

SCHEDULE_KINDS = ("constant", "linear", "cosine", "steps", "pretrain_finetune")
_VALUE_PARAMS = ("value", "start_value", "end_value", "before", "pretrain_value", "finetune_value")


class StepSchedule:
    """A scalar value per optimizer step; build with one of the class methods.

    Args:
        kind: one of :data:`SCHEDULE_KINDS`.
        breakpoints: ``(step, value)`` knots; see the class methods for their meaning per kind.
        before: value before the first knot.
        params: the kind's own parameters, kept for :meth:`definition` and :meth:`describe`.
    """

    def __init__(
        self,
        kind: str,
        breakpoints: Sequence[tuple[int, float]],
        before: float,
        params: dict[str, float | int],
    ) -> None:
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        self.kind = kind
        self._steps = np.array([int(s) for s, _ in breakpoints], dtype=np.int64)
        self._values = np.array([float(v) for _, v in breakpoints], dtype=np.float64)
        self._before = float(before)
        self._params = dict(params)
        values = [self._before, *self._values.tolist()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{kind} schedule: every value must be finite, got {values}")

    @classmethod
    def constant(cls, value: float) -> StepSchedule:
        """``value`` at every step."""
        return cls("constant", [], value, {"value": float(value)})

    @classmethod
    def linear(
        cls, start_value: float, end_value: float, start_step: int, end_step: int
    ) -> StepSchedule:
        """A line from ``start_value`` at ``start_step`` to ``end_value`` at ``end_step``."""
        return cls._ramp("linear", start_value, end_value, start_step, end_step)

    @classmethod
    def cosine(
        cls, start_value: float, end_value: float, start_step: int, end_step: int
    ) -> StepSchedule:
        """A half cosine from ``start_value`` at ``start_step`` to ``end_value`` at ``end_step``."""
        return cls._ramp("cosine", start_value, end_value, start_step, end_step)

    @classmethod
    def steps(cls, breakpoints: Sequence[Sequence[float]], before: float) -> StepSchedule:
        """Piecewise constant: ``before``, then ``value`` from each ``[step, value]`` on.

        Raises:
            ValueError: a breakpoint is not a pair, a step is not an integer >= 0, or the steps
                are not strictly increasing.
        """
        knots = []
        for i, point in enumerate(breakpoints):
            if len(point) != 2:
                raise ValueError(f"breakpoints[{i}] must be [step, value], got {list(point)}")
            step, value = point
            if int(step) != step or step < 0:
                raise ValueError(f"breakpoints[{i}]: step must be an integer >= 0, got {step}")
            if knots and int(step) <= knots[-1][0]:
                raise ValueError(
                    f"breakpoints[{i}]: steps must be strictly increasing, got {int(step)} "
                    f"after {knots[-1][0]}"
                )
            knots.append((int(step), float(value)))
        if not knots:
            raise ValueError("a steps schedule needs at least one [step, value] breakpoint")
        return cls("steps", knots, before, {"before": float(before)})

    @classmethod
    def pretrain_finetune(
        cls, pretrain_steps: int, pretrain_value: float, finetune_value: float
    ) -> StepSchedule:
        """``pretrain_value`` for steps ``[0, pretrain_steps)``, ``finetune_value`` after."""
        if int(pretrain_steps) != pretrain_steps or pretrain_steps < 1:
            raise ValueError(f"pretrain_steps must be an integer >= 1, got {pretrain_steps}")
        params = {
            "pretrain_steps": int(pretrain_steps),
            "pretrain_value": float(pretrain_value),
            "finetune_value": float(finetune_value),
        }
        knots = [(0, pretrain_value), (int(pretrain_steps), finetune_value)]
        return cls("pretrain_finetune", knots, pretrain_value, params)

    @classmethod
    def _ramp(
        cls, kind: str, start_value: float, end_value: float, start_step: int, end_step: int
    ) -> StepSchedule:
        for name, step in (("start_step", start_step), ("end_step", end_step)):
            if int(step) != step or step < 0:
                raise ValueError(f"{kind} schedule: {name} must be an integer >= 0, got {step}")
        if end_step < start_step:
            raise ValueError(
                f"{kind} schedule: end_step ({end_step}) must be >= start_step ({start_step})"
            )
        params = {
            "start_value": float(start_value),
            "end_value": float(end_value),
            "start_step": int(start_step),
            "end_step": int(end_step),
        }
        knots = [(int(start_step), start_value), (int(end_step), end_value)]
        return cls(kind, knots, start_value, params)

    def affine(self, offset: float, scale: float) -> StepSchedule:
        """The same kind of schedule of ``offset + scale * value`` (e.g. ``1 - r`` for the
        synthetic share of a real-share schedule, ``r / n`` for one of n real sources)."""
        params = {
            k: (offset + scale * v if k in _VALUE_PARAMS else v) for k, v in self._params.items()
        }
        knots = [(int(s), offset + scale * v) for s, v in zip(self._steps, self._values)]
        return StepSchedule(self.kind, knots, offset + scale * self._before, params)

    @property
    def is_constant(self) -> bool:
        """True when every step has the same value (whatever the kind)."""
        return bool(np.all(self._values == self._before))

    @property
    def last_change_step(self) -> int:
        """The first step from which the value never changes again (0 for a constant)."""
        return int(self._steps[-1]) if self._steps.size and not self.is_constant else 0

    def extremes(self) -> tuple[float, float]:
        """The smallest and largest value over all steps (ramps are monotone between knots)."""
        values = [self._before, *self._values.tolist()]
        return min(values), max(values)

    def values(self, steps: np.ndarray) -> np.ndarray:
        """The value at each given step.

        Args:
            steps: int64 array [N] of steps ``>= 0``.

        Returns:
            float64 array [N].
        """
        s = np.asarray(steps, dtype=np.int64)
        if self.kind in ("linear", "cosine"):
            return self._ramp_values(s)
        out = np.full(s.shape, self._before, dtype=np.float64)
        if self._steps.size:
            knot = np.searchsorted(self._steps, s, side="right") - 1
            out = np.where(knot >= 0, self._values[np.maximum(knot, 0)], out)
        return out

    def value(self, step: int) -> float:
        """The value at one step."""
        return float(self.values(np.array([step]))[0])

    def _ramp_values(self, s: np.ndarray) -> np.ndarray:
        (start, end), (v0, v1) = self._steps.tolist(), self._values.tolist()
        if end == start:
            return np.where(s >= start, v1, v0)
        progress = np.clip((s - start) / (end - start), 0.0, 1.0)
        if self.kind == "cosine":
            progress = 0.5 * (1.0 - np.cos(math.pi * progress))
        return v0 + (v1 - v0) * progress

    def definition(self) -> dict[str, Any]:
        """Plain-number description: equal definitions give equal schedules."""
        out: dict[str, Any] = {"kind": self.kind, **self._params}
        if self.kind == "steps":
            out["breakpoints"] = [[int(s), float(v)] for s, v in zip(self._steps, self._values)]
        return out

    def describe(self) -> str:
        """One line for the start-up summary, e.g. ``linear 0.7 -> 1 over steps 0..2000``."""
        p = self._params
        if self.kind == "constant":
            return f"{p['value']:g}"
        if self.kind in ("linear", "cosine"):
            return (
                f"{self.kind} {p['start_value']:g} -> {p['end_value']:g} over steps "
                f"{p['start_step']}..{p['end_step']}"
            )
        if self.kind == "pretrain_finetune":
            return (
                f"pretrain_finetune {p['pretrain_value']:g} for {p['pretrain_steps']} steps, "
                f"then {p['finetune_value']:g}"
            )
        points = ", ".join(f"{v:g} from {s}" for s, v in zip(self._steps, self._values))
        return f"steps {self._before:g}, {points}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepSchedule) and self.definition() == other.definition()

    def __hash__(self) -> int:
        return hash(repr(self.definition()))

    def __repr__(self) -> str:
        return f"StepSchedule({self.describe()})"
