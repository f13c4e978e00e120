"""Per-source label statistics and the class weights derived from them.

Statistics are kept per source. Combining sources is never implicit: :func:`combine_statistics`
needs one explicit weight per source and identical class and predicate vocabularies, so real and
synthetic counts are not merged silently (the public implementation's mistake).
:func:`frequency_class_weights` turns counts into CE class weights (SpeaQ's formula).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class AnnotatedDataset(Protocol):
    source: str
    classes: list[str]
    predicates: list[str]

    def __len__(self) -> int: ...

    def annotation(self, index: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SourceStatistics:
    """Label counts of one source.

    Attributes:
        object_counts: int64 [C], objects per 0-based class.
        predicate_counts: int64 [R], relations per 0-based predicate.
    """

    source: str
    classes: tuple[str, ...]
    predicates: tuple[str, ...]
    num_images: int
    object_counts: np.ndarray
    predicate_counts: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_images": self.num_images,
            "object_counts": dict(zip(self.classes, self.object_counts.tolist())),
            "predicate_counts": dict(zip(self.predicates, self.predicate_counts.tolist())),
        }


def compute_statistics(dataset: AnnotatedDataset) -> SourceStatistics:
    """Counts objects per class and relations per predicate from annotations (no images read).

    A dataset with ``label_counts()`` (every :class:`~realsynth.data.images.RelationDataset`)
    answers from its index at once; others are read annotation by annotation.
    """
    num_classes, num_predicates = len(dataset.classes), len(dataset.predicates)
    if hasattr(dataset, "label_counts"):
        objects, relations = dataset.label_counts()
    else:
        objects = np.zeros(num_classes, dtype=np.int64)
        relations = np.zeros(num_predicates, dtype=np.int64)
        for index in range(len(dataset)):
            ann = dataset.annotation(index)
            objects += np.bincount(ann["labels"].numpy(), minlength=num_classes)[:num_classes]
            relations += np.bincount(ann["relations"][:, 2].numpy(), minlength=num_predicates)[
                :num_predicates
            ]
    return SourceStatistics(
        source=dataset.source,
        classes=tuple(dataset.classes),
        predicates=tuple(dataset.predicates),
        num_images=len(dataset),
        object_counts=objects,
        predicate_counts=relations,
    )


def combine_statistics(
    stats: Sequence[SourceStatistics], *, weights: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of per-source counts.

    Args:
        stats: one entry per source (distinct source names).
        weights: a finite weight >= 0 for every source in ``stats``.

    Returns:
        (object counts float64 [C], predicate counts float64 [R]).

    Raises:
        ValueError: duplicate or unweighted sources, bad weights, or differing vocabularies.
    """
    if not stats:
        raise ValueError("combine_statistics needs at least one source")
    names = [s.source for s in stats]
    if len(set(names)) != len(names):
        raise ValueError(f"combine_statistics: duplicate source names {names}")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"combine_statistics: no weight given for source(s) {missing}")
    for name in names:
        if not np.isfinite(weights[name]) or weights[name] < 0:
            raise ValueError(
                f"combine_statistics: weight of '{name}' must be finite and >= 0, "
                f"got {weights[name]}"
            )
    first = stats[0]
    for s in stats[1:]:
        if s.classes != first.classes or s.predicates != first.predicates:
            raise ValueError(
                f"combine_statistics: sources '{first.source}' and '{s.source}' have different "
                "class or predicate vocabularies"
            )
    objects = sum(weights[s.source] * s.object_counts.astype(np.float64) for s in stats)
    predicates = sum(weights[s.source] * s.predicate_counts.astype(np.float64) for s in stats)
    return objects, predicates


def frequency_class_weights(counts: np.ndarray, *, alpha: float, beta: float) -> np.ndarray:
    """CE weights that lift rare classes: ``w_c = max(1, sqrt(alpha / (f_c + 1e-5))) ** beta``.

    SpeaQ's predicate reweighting (``criterion.py`` of mlvlab/SpeaQ, ``OVERSAMPLE_PARAM`` alpha,
    ``UNDERSAMPLE_PARAM`` beta): ``f_c`` is class c's share of all counted occurrences; a class
    rarer than ``alpha`` gets ``(alpha / f_c) ** (beta / 2)``, a frequent one weight 1.

    Args:
        counts: [K] occurrences per class (e.g. ``SourceStatistics.predicate_counts``).
        alpha: frequency below which a class is lifted (> 0).
        beta: exponent (>= 0; 0 gives all ones).

    Returns:
        float64 [K] weights, each >= 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError(
            f"frequency_class_weights: counts must be >= 0 with a positive sum, got {counts}"
        )
    if not alpha > 0 or not beta >= 0:
        raise ValueError(
            f"frequency_class_weights: need alpha > 0 and beta >= 0, got {alpha}, {beta}"
        )
    share = counts / counts.sum()
    return np.maximum(np.sqrt(alpha / (share + 1e-5)), 1.0) ** beta
