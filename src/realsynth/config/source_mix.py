"""Each source's share of every batch and its loss weight, resolved from the config.

Precedence, for the share and the weight alike: a source's own schedule (``RATIO_SCHEDULE``,
``LOSS_WEIGHT_SCHEDULE``) wins, then its plain value (``RATIO``, ``LOSS_WEIGHT``), then the
``DATASETS.MULTI_DATASET`` schedule of its kind (``REAL_SAMPLING_RATIO_SCHEDULE``,
``SYNTHETIC_LOSS_WEIGHT_SCHEDULE``), then the plain ``MULTI_DATASET`` value (see
:mod:`realsynth.config`). A kind's share is split equally among its sources.

Normalization: with constant shares the resolved values must sum to one (a config error
otherwise). When any share follows a schedule, the sampler divides the sources' values by their
sum at every step, so the shares sum to one by construction; with only the kind-level
``REAL_SAMPLING_RATIO_SCHEDULE`` they already do (``r(t)`` real, ``1 - r(t)`` synthetic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from realsynth.config.schedules import REAL_RATIO_SCHEDULE, schedule_or_constant
from realsynth.config.schema import ConfigError
from realsynth.mixing.step_schedule import StepSchedule

MD = "DATASETS.MULTI_DATASET"


@dataclass(frozen=True)
class SourceMix:
    """One source's resolved share of every batch and loss weight (each a float or a schedule
    over optimizer steps)."""

    name: str
    kind: str
    ratio: float | StepSchedule
    loss_weight: float | StepSchedule
    background_weight: float = 1.0

    @property
    def max_ratio(self) -> float:
        """The largest share the source ever gets."""
        if isinstance(self.ratio, StepSchedule):
            return self.ratio.extremes()[1]
        return float(self.ratio)


def resolve_mix(
    sources: Sequence[Any], multi_dataset: Any, sizes: Sequence[int], *, max_iter: int
) -> list[SourceMix]:
    """Resolve every source's batch share and loss weight (see the module docstring).

    Args:
        sources: ``SourceConfig`` nodes (``DATASETS.SOURCES``), in order.
        multi_dataset: the ``DATASETS.MULTI_DATASET`` node.
        sizes: number of training items of each source, same order.
        max_iter: ``SOLVER.MAX_ITER`` (the default end of a schedule).

    Returns:
        One ``SourceMix`` per source; with ``MULTI_DATASET.ENABLED: false`` synthetic sources get a
        zero share and every weight is 1.0 (plain training on the real data; schedules unused).

    Raises:
        ConfigError: constant shares that do not sum to 1, a source with a share but no items,
            a share schedule on the only source with a share (it always has share 1), or a bad
            schedule (naming its key).
    """
    md, sources = multi_dataset, list(sources)
    kinds = [s.TYPE for s in sources]
    if not md.ENABLED:
        real_total = sum(n for n, k in zip(sizes, kinds) if k == "real")
        ratios = [
            n / real_total if k == "real" and real_total else 0.0 for n, k in zip(sizes, kinds)
        ]
        return [SourceMix(s.NAME, s.TYPE, r, 1.0) for s, r in zip(sources, ratios)]
    ratios = _ratios(sources, md, sizes, max_iter)
    constants = [r for r in ratios if not isinstance(r, StepSchedule)]
    if len(constants) == len(ratios) and abs(sum(constants) - 1.0) > 1e-6:
        listing = ", ".join(f"{s.NAME}={r:.4g}" for s, r in zip(sources, constants))
        raise ConfigError(
            f"DATASETS.SOURCES: resolved sampling ratios sum to {sum(constants):.6g}, "
            f"not 1 ({listing}); set RATIO on every source or on none"
        )
    weights = _weights(sources, md, max_iter)
    mix = [
        SourceMix(s.NAME, s.TYPE, r, w, _background_weight(s, md))
        for s, r, w in zip(sources, ratios, weights)
    ]
    for m, size in zip(mix, sizes):
        if m.max_ratio > 0 and size == 0:
            raise ConfigError(
                f"DATASETS.SOURCES: source {m.name!r} has ratio {_describe(m.ratio)} but no items"
            )
    active = [k for k, m in enumerate(mix) if m.max_ratio > 0]
    if len(active) == 1 and isinstance(mix[active[0]].ratio, StepSchedule):
        k = active[0]
        own = sources[k].RATIO_SCHEDULE.KIND != "constant"
        key = f"DATASETS.SOURCES[{k}].RATIO_SCHEDULE" if own else REAL_RATIO_SCHEDULE
        raise ConfigError(
            f"{key}: source {mix[k].name!r} is the only source with a share > 0, so it always "
            f"fills the whole batch (share 1) and {_describe(mix[k].ratio)} changes nothing; set "
            "KIND constant, or give another source a share",
            key,
        )
    return mix


def _background_weight(source: Any, md: Any) -> float:
    """A source's ``BACKGROUND_WEIGHT``, else its kind's (``SYNTHETIC_BACKGROUND_WEIGHT`` for
    synthetic sources, 1 for real ones)."""
    own = source.get("BACKGROUND_WEIGHT")  # absent from a plain node: the kind's default
    if own is not None:
        return float(own)
    return float(md.SYNTHETIC_BACKGROUND_WEIGHT) if source.TYPE == "synthetic" else 1.0


def _ratios(
    sources: list[Any], md: Any, sizes: Sequence[int], max_iter: int
) -> list[float | StepSchedule]:
    kinds = [s.TYPE for s in sources]
    kind_level = schedule_or_constant(
        md.REAL_SAMPLING_RATIO_SCHEDULE,
        REAL_RATIO_SCHEDULE,
        md.REAL_SAMPLING_RATIO,
        max_iter,
        ratio=True,
    )
    ratios: list[float | StepSchedule] = []
    for i, (src, size) in enumerate(zip(sources, sizes)):
        if src.RATIO is not None or src.RATIO_SCHEDULE.KIND != "constant":
            key = f"DATASETS.SOURCES[{i}].RATIO_SCHEDULE"
            ratios.append(
                schedule_or_constant(src.RATIO_SCHEDULE, key, src.RATIO, max_iter, ratio=True)
            )
        elif md.RATIO_BY_SIZE:
            ratios.append(size / max(1, sum(sizes)))
        else:
            ratios.append(_kind_share(src.TYPE, kinds, kind_level))
    return ratios


def _weights(sources: list[Any], md: Any, max_iter: int) -> list[float | StepSchedule]:
    synthetic = schedule_or_constant(
        md.SYNTHETIC_LOSS_WEIGHT_SCHEDULE,
        f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE",
        md.SYNTHETIC_LOSS_WEIGHT,
        max_iter,
        ratio=False,
    )
    weights: list[float | StepSchedule] = []
    for i, src in enumerate(sources):
        if src.LOSS_WEIGHT is not None or src.LOSS_WEIGHT_SCHEDULE.KIND != "constant":
            key = f"DATASETS.SOURCES[{i}].LOSS_WEIGHT_SCHEDULE"
            weights.append(
                schedule_or_constant(
                    src.LOSS_WEIGHT_SCHEDULE, key, src.LOSS_WEIGHT, max_iter, ratio=False
                )
            )
        else:
            weights.append(md.REAL_LOSS_WEIGHT if src.TYPE == "real" else synthetic)
    return weights


def _kind_share(
    kind: str, kinds: list[str], real_ratio: float | StepSchedule
) -> float | StepSchedule:
    """One source's default share: its kind's share split equally among that kind's sources.

    A mix with sources of one kind only gives that kind the whole batch.
    """
    if len(set(kinds)) == 1:
        return 1.0 / len(kinds)
    count = kinds.count(kind)
    if isinstance(real_ratio, StepSchedule):
        if kind == "real":
            return real_ratio.affine(0.0, 1.0 / count)
        return real_ratio.affine(1.0 / count, -1.0 / count)
    share = real_ratio if kind == "real" else 1.0 - real_ratio
    return share / count


def _describe(value: float | StepSchedule) -> str:
    return value.describe() if isinstance(value, StepSchedule) else f"{value:.4g}"
