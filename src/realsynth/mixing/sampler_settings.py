"""The settings of a :class:`realsynth.mixing.sampler.MixedBatchSampler`: their checks, and the
share schedule and loss-weight history they set up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from realsynth.mixing.batch_composition import CompositionSchedule, exact_shares
from realsynth.mixing.scheduled_composition import SHARE_UNITS, ScheduledComposition
from realsynth.mixing.share_history import ShareHistory
from realsynth.mixing.step_schedule import StepSchedule
from realsynth.mixing.weight_history import WeightHistory

__all__ = ["as_schedules", "loss_weight_history", "share_schedule", "validate_settings"]

_RATIO_TOLERANCE = 1e-6
# Schedules are tabulated per step up to their last change (8 bytes per source and step).
_MAX_SCHEDULE_STEPS = 10**8

#: What decides the items of every source in every batch.
ShareSchedule = CompositionSchedule | ScheduledComposition | ShareHistory


def as_schedules(values: Sequence[float | StepSchedule]) -> list[StepSchedule]:
    """Every value as a step schedule (a float is a constant)."""
    return [v if isinstance(v, StepSchedule) else StepSchedule.constant(v) for v in values]


def loss_weight_history(
    loss_weights: Sequence[float | StepSchedule] | None, num_sources: int
) -> WeightHistory:
    """The weight history of ``loss_weights`` (default 1.0 each), one entry per source."""
    if loss_weights is None:
        loss_weights = [1.0] * num_sources
    if len(loss_weights) != num_sources:
        raise ValueError(
            f"loss_weights must have one entry per source, got {len(loss_weights)} for "
            f"{num_sources} sources"
        )
    return WeightHistory(as_schedules(loss_weights))


def share_schedule(
    schedules: Sequence[StepSchedule], batch_size: int, world_size: int, *, adaptive: bool
) -> tuple[list[Fraction], ShareSchedule]:
    """The shares defining an epoch (the final ones under a changing schedule) and the
    schedule of every batch's composition: adaptive, scheduled or constant."""
    is_scheduled = not all(s.is_constant for s in schedules)
    if adaptive:
        if is_scheduled:
            raise ValueError("adaptive shares (share_horizon) need constant ratios")
        shares = exact_shares([s.value(0) for s in schedules])
        return shares, ShareHistory(shares, batch_size, world_size)
    if is_scheduled:
        scheduled = ScheduledComposition(schedules, batch_size, world_size)
        final = scheduled.shares(np.array([scheduled.last_change]))[0]
        return [Fraction(round(f * SHARE_UNITS), SHARE_UNITS) for f in final], scheduled
    shares = exact_shares([s.value(0) for s in schedules])
    return shares, CompositionSchedule(shares, batch_size)


def validate_settings(
    sizes: Sequence[int],
    schedules: Sequence[StepSchedule],
    batch_size: int,
    num_batches: int | None,
    epoch_source: int,
    rank: int,
    world_size: int,
) -> None:
    """Rejects bad settings with a message naming the setting."""
    _validate_sources(sizes, schedules)
    positive = sum(1 for s in schedules if s.extremes()[1] > 0)
    if int(batch_size) != batch_size or batch_size < positive:
        raise ValueError(
            f"batch_size must be an integer >= the number of sources with a positive ratio "
            f"({positive}), got {batch_size}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    if not 0 <= epoch_source < len(sizes):
        raise ValueError(f"epoch_source must be in [0, {len(sizes)}), got {epoch_source}")


def _validate_sources(sizes: Sequence[int], schedules: Sequence[StepSchedule]) -> None:
    """Rejects bad sizes or ratios, naming the source."""
    if len(sizes) != len(schedules) or not sizes:
        raise ValueError(
            f"sizes and ratios must be non-empty and of equal length, got {len(sizes)} sizes "
            f"and {len(schedules)} ratios"
        )
    for k, (size, schedule) in enumerate(zip(sizes, schedules)):
        if int(size) != size or size < 0:
            raise ValueError(f"sizes[{k}] must be a non-negative integer, got {size}")
        low, high = schedule.extremes()
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"ratios[{k}] must be in [0, 1], got {schedule.describe()}")
        if high > 0 and size == 0:
            raise ValueError(
                f"source {k} has ratio {schedule.describe()} > 0 but no items (sizes[{k}] = 0)"
            )
    if all(s.is_constant for s in schedules):
        total = math.fsum(s.value(0) for s in schedules)
        if abs(total - 1.0) > _RATIO_TOLERANCE:
            raise ValueError(f"ratios must sum to 1 (tolerance 1e-6), got sum {total:.9g}")
    elif max(s.last_change_step for s in schedules) >= _MAX_SCHEDULE_STEPS:
        raise ValueError(
            f"ratio schedules must stop changing before step {_MAX_SCHEDULE_STEPS}, got "
            f"{max(s.last_change_step for s in schedules)}"
        )
