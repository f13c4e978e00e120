"""Each source's share of every batch and its loss weight, resolved from the config.

Precedence: a value written on a source (``RATIO``, ``LOSS_WEIGHT``) wins; an unset one comes
from ``DATASETS.MULTI_DATASET`` (see :mod:`realsynth.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from realsynth.config import ConfigError


@dataclass(frozen=True)
class SourceMix:
    """One source's resolved share of every batch and loss weight."""

    name: str
    kind: str
    ratio: float
    loss_weight: float


def resolve_mix(
    sources: Sequence[Any], multi_dataset: Any, sizes: Sequence[int]
) -> list[SourceMix]:
    """Resolve every source's batch share and loss weight (see the module docstring for precedence).

    Args:
        sources: ``SourceConfig`` nodes (``DATASETS.SOURCES``), in order.
        multi_dataset: the ``DATASETS.MULTI_DATASET`` node.
        sizes: number of training items of each source, same order.

    Returns:
        One ``SourceMix`` per source; with ``MULTI_DATASET.ENABLED: false`` synthetic sources get a
        zero share and every weight is 1.0 (plain training on the real data).

    Raises:
        ConfigError: the resolved shares do not sum to 1 or a source with a share has no items.
    """
    md, sources = multi_dataset, list(sources)
    kinds = [s.TYPE for s in sources]
    if not md.ENABLED:
        real_total = sum(n for n, k in zip(sizes, kinds) if k == "real")
        ratios = [
            n / real_total if k == "real" and real_total else 0.0 for n, k in zip(sizes, kinds)
        ]
        return [SourceMix(s.NAME, s.TYPE, r, 1.0) for s, r in zip(sources, ratios)]
    ratios = []
    for src, size in zip(sources, sizes):
        if src.RATIO is not None:
            ratios.append(src.RATIO)
        elif md.RATIO_BY_SIZE:
            ratios.append(size / max(1, sum(sizes)))
        else:
            ratios.append(_kind_share(src.TYPE, kinds, md.REAL_SAMPLING_RATIO))
    if abs(sum(ratios) - 1.0) > 1e-6:
        listing = ", ".join(f"{s.NAME}={r:.4g}" for s, r in zip(sources, ratios))
        raise ConfigError(
            f"DATASETS.SOURCES: resolved sampling ratios sum to {sum(ratios):.6g}, "
            f"not 1 ({listing}); set RATIO on every source or on none"
        )
    for src, size, ratio in zip(sources, sizes, ratios):
        if ratio > 0 and size == 0:
            raise ConfigError(
                f"DATASETS.SOURCES: source {src.NAME!r} has ratio {ratio:.4g} but no items"
            )
    weights = [
        src.LOSS_WEIGHT
        if src.LOSS_WEIGHT is not None
        else (md.REAL_LOSS_WEIGHT if src.TYPE == "real" else md.SYNTHETIC_LOSS_WEIGHT)
        for src in sources
    ]
    return [SourceMix(s.NAME, s.TYPE, r, w) for s, r, w in zip(sources, ratios, weights)]


def _kind_share(kind: str, kinds: list[str], real_ratio: float) -> float:
    """One source's default share: its kind's share split equally among that kind's sources.

    A mix with sources of one kind only gives that kind the whole batch.
    """
    if len(set(kinds)) == 1:
        return 1.0 / len(kinds)
    share = real_ratio if kind == "real" else 1.0 - real_ratio
    return share / kinds.count(kind)
