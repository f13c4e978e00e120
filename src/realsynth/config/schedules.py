"""Step schedules from the config: a ``*_SCHEDULE`` node beside a plain key becomes a
:class:`~realsynth.mixing.step_schedule.StepSchedule` (see ``ScheduleConfig`` for the keys).

``KIND: constant`` means the plain key (``RATIO``, ``REAL_SAMPLING_RATIO``, ``LOSS_WEIGHT``,
``SYNTHETIC_LOSS_WEIGHT``) alone decides, as before schedules existed. An unset ``START_VALUE``
is the plain key's value, an unset ``END_STEP`` is ``SOLVER.MAX_ITER``, an unset
``PRETRAIN_STEPS`` half of it.
"""

from __future__ import annotations

import math
from typing import Any

from realsynth.config.schema import ConfigError
from realsynth.mixing.step_schedule import SCHEDULE_KINDS, StepSchedule

REAL_RATIO_SCHEDULE = "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE"


def build_step_schedule(
    node: Any, key: str, constant: float | None, max_iter: int, *, ratio: bool
) -> StepSchedule:
    """The schedule a ``ScheduleConfig`` node describes.

    Args:
        node: the ``*_SCHEDULE`` config node.
        key: its full key, for error messages.
        constant: the plain key's value (None when that key is unset).
        max_iter: ``SOLVER.MAX_ITER``.
        ratio: whether the values are batch shares (in [0, 1]) rather than loss weights
            (finite, >= 0).

    Raises:
        ConfigError: naming the key, for an unknown kind, a missing value, a breakpoint list
            that is not increasing, a step beyond ``max_iter`` (``START_STEP``, ``END_STEP``, a
            breakpoint's step, ``PRETRAIN_STEPS``; equal to it is fine), or a value out of range.
    """
    kind = node.KIND
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(f"{key}.KIND must be one of {SCHEDULE_KINDS}, got {kind!r}", key)
    if kind == "pretrain_finetune" and key != REAL_RATIO_SCHEDULE:
        raise ConfigError(
            f"{key}.KIND: pretrain_finetune is a preset of {REAL_RATIO_SCHEDULE}; "
            "use KIND steps here",
            key,
        )
    if kind in ("linear", "cosine", "steps") and node.START_VALUE is None and constant is None:
        raise ConfigError(
            f"{key}.START_VALUE is required: the plain key beside it is unset",
            f"{key}.START_VALUE",
        )
    _check_steps(node, kind, key, max_iter)
    try:
        schedule = _schedule(node, kind, constant, max_iter, key)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key) from None
    low, high = schedule.extremes()
    bounds_ok = 0.0 <= low <= high <= 1.0 if ratio else low >= 0 and math.isfinite(high)
    if not bounds_ok:
        expected = "in [0, 1]" if ratio else "finite and >= 0"
        raise ConfigError(
            f"{key}: every value must be {expected}, got {low:g} .. {high:g} "
            f"({schedule.describe()})",
            key,
        )
    return schedule


def _schedule(
    node: Any, kind: str, constant: float | None, max_iter: int, key: str
) -> StepSchedule:
    start = node.START_VALUE if node.START_VALUE is not None else constant
    if kind == "constant":
        return StepSchedule.constant(0.0 if constant is None else constant)
    if kind in ("linear", "cosine"):
        if node.END_VALUE is None:
            raise ValueError(f"END_VALUE is required for KIND {kind}")
        end_step = max_iter if node.END_STEP is None else node.END_STEP
        ramp = StepSchedule.linear if kind == "linear" else StepSchedule.cosine
        return ramp(start, node.END_VALUE, node.START_STEP, end_step)
    if kind == "steps":
        if not node.BREAKPOINTS:
            raise ValueError("BREAKPOINTS must hold at least one [step, value] pair for KIND steps")
        return StepSchedule.steps([list(p) for p in node.BREAKPOINTS], start)
    pretrain = max(1, max_iter // 2) if node.PRETRAIN_STEPS is None else node.PRETRAIN_STEPS
    return StepSchedule.pretrain_finetune(
        pretrain, node.PRETRAIN_REAL_RATIO, node.FINETUNE_REAL_RATIO
    )


def _check_steps(node: Any, kind: str, key: str, max_iter: int) -> None:
    """Refuse a step of the kind's keys beyond ``max_iter``: the run would never reach it."""
    steps: list[tuple[str, Any]] = []
    if kind in ("linear", "cosine"):
        steps = [("START_STEP", node.START_STEP), ("END_STEP", node.END_STEP)]
    elif kind == "steps":
        steps = [(f"BREAKPOINTS[{i}]", p[0]) for i, p in enumerate(node.BREAKPOINTS) if len(p)]
    elif kind == "pretrain_finetune":
        steps = [("PRETRAIN_STEPS", node.PRETRAIN_STEPS)]
    for name, step in steps:
        if step is not None and step > max_iter:
            what = f"{name} step {step:g}" if name.startswith("BREAKPOINTS") else f"{name}={step}"
            raise ConfigError(
                f"{key}.{what} is beyond SOLVER.MAX_ITER={max_iter}: the run never gets there; "
                f"lower it to at most {max_iter} or raise SOLVER.MAX_ITER",
                (f"{key}.{name.split('[')[0]}", "SOLVER.MAX_ITER"),
            )


def schedule_or_constant(
    node: Any, key: str, constant: float | None, max_iter: int, *, ratio: bool
) -> float | StepSchedule | None:
    """The plain value when ``node.KIND`` is constant, else the schedule."""
    if node.KIND == "constant":
        return constant
    return build_step_schedule(node, key, constant, max_iter, ratio=ratio)
