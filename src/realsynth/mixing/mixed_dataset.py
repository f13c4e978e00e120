"""MixedDataset: several sources behind one global index, every item tagged with its origin.

Global index ``i`` belongs to source k when ``offset_k <= i < offset_k + size_k``, offsets being
cumulative sizes in the given order; this is the layout :class:`MixedBatchSampler` draws from.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from realsynth.data.images import SkippedSample
from realsynth.data.slot_loader import SlotDataLoader
from realsynth.data.transforms import item_rng
from realsynth.mixing.sampler import MixedBatchSampler
from realsynth.mixing.step_schedule import StepSchedule
from realsynth.utils.distributed import get_rank, get_world_size

__all__ = ["MixedDataset", "Source", "build_mixed_loader", "is_scheduled"]

_KINDS = ("real", "synthetic")


@dataclass(frozen=True)
class Source:
    """One dataset in the mix.

    Args:
        name: unique name, copied into every item's ``source``.
        dataset: map-style dataset whose items are dicts.
        kind: ``"real"`` or ``"synthetic"``, copied into ``dataset_type``.
        ratio: share of every batch, in [0, 1], or a :class:`StepSchedule` of it.
        loss_weight: per-sample loss weight of its items, finite and >= 0, or a
            :class:`StepSchedule` of it (the sampler of :func:`build_mixed_loader` applies it at
            the step each batch is drawn for).
        background_weight: weight of the no-object / no-relation CE of unmatched queries in
            its images (``SYNTHETIC_BACKGROUND_WEIGHT``; Gen2Det ignores a synthetic image's
            background: 0.0); items carry ``background_weight`` only when it is not 1.
    """

    name: str
    dataset: Dataset
    kind: Literal["real", "synthetic"]
    ratio: float | StepSchedule
    loss_weight: float | StepSchedule
    background_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"source {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}"
            )
        low, high = _extremes(self.ratio)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"source {self.name!r}: ratio must be in [0, 1], got {self.ratio}")
        low, high = _extremes(self.loss_weight)
        if not (math.isfinite(high) and low >= 0):
            raise ValueError(
                f"source {self.name!r}: loss_weight must be finite and >= 0, got {self.loss_weight}"
            )
        if not (math.isfinite(self.background_weight) and self.background_weight >= 0):
            raise ValueError(
                f"source {self.name!r}: background_weight must be finite and >= 0, got "
                f"{self.background_weight}"
            )

    @property
    def final_ratio(self) -> float:
        """The share after the ratio schedule's last change (the ratio itself if constant)."""
        if isinstance(self.ratio, StepSchedule):
            return self.ratio.value(self.ratio.last_change_step)
        return float(self.ratio)

    def constant_weight(self) -> float:
        """The loss weight of an item fetched without a step (a plain index).

        Raises:
            ValueError: the weight follows a schedule (the sampler owns the weight of a step).
        """
        if not isinstance(self.loss_weight, StepSchedule):
            return float(self.loss_weight)
        if self.loss_weight.is_constant:
            return self.loss_weight.value(0)
        raise ValueError(
            f"source {self.name!r} has a loss-weight schedule, so items must be fetched "
            "with the (index, step, weight) triples of MixedBatchSampler(..., with_steps=True)"
        )


def _extremes(value: float | StepSchedule) -> tuple[float, float]:
    if isinstance(value, StepSchedule):
        return value.extremes()
    return float(value), float(value)


def is_scheduled(value: float | StepSchedule) -> bool:
    """True for a schedule whose value changes over steps."""
    return isinstance(value, StepSchedule) and not value.is_constant


class MixedDataset(Dataset):
    """Concatenation of sources whose items carry ``dataset_type``, ``source``, ``loss_weight``
    and ``source_id`` (the source's position in ``sources``).

    Per-item augmentation: a source dataset with ``get_item(index, rng)`` (every
    :class:`~realsynth.data.images.RelationDataset`) gets ``item_rng(seed, epoch, global index)``,
    so no two items of the mix share their random draws and an item's augmentation does not
    depend on the number of workers or on where a run was resumed.

    A source item that is a ``SkippedSample`` or ``None`` (a bad sample skipped by its dataset)
    passes through untagged; ``collate_relations`` drops and counts it.

    Args:
        sources: the sources, in global index order (real first, by convention).
        seed: base of the per-item generators.
    """

    def __init__(self, sources: Sequence[Source], *, seed: int = 0) -> None:
        if not sources:
            raise ValueError("MixedDataset needs at least one source")
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"MixedDataset: source names must be unique, repeated: {duplicates}")
        self.sources = list(sources)
        self.seed = int(seed)
        self.epoch = 0
        self.sizes = [len(s.dataset) for s in self.sources]
        self.ratios = [s.ratio for s in self.sources]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)

    def __len__(self) -> int:
        return self.offsets[-1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations the items draw (call before each epoch)."""
        self.epoch = int(epoch)
        for source in self.sources:
            if hasattr(source.dataset, "set_epoch"):
                source.dataset.set_epoch(epoch)

    def source_of(self, index: int) -> tuple[int, int]:
        """Maps a global index to ``(source position, local index)``.

        Raises:
            IndexError: ``index`` is outside ``[0, len(self))``.
        """
        if not 0 <= index < self.offsets[-1]:
            raise IndexError(
                f"MixedDataset index {index} out of range: expected 0 <= index < {self.offsets[-1]}"
            )
        # bisect_right skips empty sources, whose start equals the next source's start.
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def __getitem__(
        self, index: int | tuple[int, int, float]
    ) -> dict[str, Any] | SkippedSample | None:
        """The tagged item at a global index, or at an ``(index, step, weight)`` triple from a
        :class:`MixedBatchSampler` with ``with_steps``: the item then carries ``step`` and the
        sampler's loss weight of that step (a plain index gets its source's constant weight).

        Raises:
            TypeError: a tuple that is not ``(index, step, weight)``.
        """
        step: int | None = None
        weight: float | None = None
        if isinstance(index, tuple):
            if len(index) != 3:
                raise TypeError(
                    f"MixedDataset takes a global index or an (index, step, weight) triple of "
                    f"MixedBatchSampler(..., with_steps=True), got {index!r}"
                )
            index, step, weight = int(index[0]), int(index[1]), float(index[2])
        k, local = self.source_of(int(index))
        source = self.sources[k]
        if hasattr(source.dataset, "get_item"):
            item = source.dataset.get_item(local, item_rng(self.seed, self.epoch, int(index)))
        else:
            item = source.dataset[local]
        if item is None or isinstance(item, SkippedSample):
            return item
        if not isinstance(item, Mapping):
            raise TypeError(
                f"source {source.name!r} item {local} is a {type(item).__name__}, expected a dict"
            )
        # Shallow copy: the tags must not leak into the source's own objects, and a deep copy
        # of images and annotations costs far more than the sample is worth.
        tagged = dict(item)
        tagged["dataset_type"] = source.kind
        tagged["source"] = source.name
        tagged["loss_weight"] = source.constant_weight() if weight is None else weight
        tagged["source_id"] = k
        if source.background_weight != 1.0:
            tagged["background_weight"] = source.background_weight
        if step is not None:
            tagged["step"] = step
        return tagged


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores Ctrl-C (the main process handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    """Seeds a loader worker's numpy and python RNGs from (seed, rank, worker id).

    Workers also ignore Ctrl-C: the main process stops the run after the current step and
    needs its workers alive until then (a worker killed by SIGINT would end the run unsaved).
    """
    ignore_interrupts(worker_id)
    worker_seed = int(np.random.SeedSequence([seed, rank, worker_id]).generate_state(1)[0])
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Default collate: the list of tagged items, unchanged."""
    return batch


def build_mixed_loader(
    sources: Sequence[Source],
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    replacement: bool = False,
    num_batches: int | None = None,
    pin_memory: bool = False,
    share_horizon: int | None = None,
    shard_window: int = 8,
) -> DataLoader:
    """A DataLoader over :class:`MixedDataset` driven by :class:`MixedBatchSampler`.

    The epoch is one pass over the first real source with a positive ratio (else the first
    source with one), at its share after the last change of any ratio schedule. With a
    changing ratio or loss-weight schedule, or adaptive mixing, the sampler yields ``(index,
    step, weight)`` triples: every item carries the ``step`` it was drawn for and the loss weight
    the sampler holds in force then (the sampler is the one authority for shares and weights,
    see :meth:`MixedBatchSampler.weights_at` and :meth:`MixedBatchSampler.change_mix`). The
    sampler is ``loader.batch_sampler``; call its ``set_epoch`` and use its ``state_dict`` /
    ``load_state_dict`` to resume.

    Args:
        sources: the sources, in global index order.
        batch_size: items per batch on each rank.
        seed: seed of the sampler, the loader's generator and the workers' RNGs.
        num_workers: DataLoader worker processes.
        collate_fn: batch collation; default returns the list of tagged item dicts.
        rank: data-parallel rank; default ``torch.distributed``'s when initialized, else 0.
        world_size: data-parallel size; default ``torch.distributed``'s, else 1.
        replacement: uniform draws inside sources instead of passes without repeats.
        num_batches: batches per rank per epoch; default one pass over the epoch source.
        pin_memory: page-locked batches for faster copies to a GPU.
        share_horizon: adaptive mixing: the first step whose shares and weights are not decided
            yet (see :meth:`MixedBatchSampler.change_mix`); None for fixed or scheduled ones.
        shard_window: a source whose dataset has ``shard_sizes`` (read from shards) is visited
            this many shards at a time (see :mod:`realsynth.mixing.shard_windows`).

    Returns:
        the DataLoader.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    dataset = MixedDataset(sources, seed=seed)
    sampler = MixedBatchSampler(
        dataset.sizes,
        dataset.ratios,
        batch_size,
        seed=seed,
        replacement=replacement,
        num_batches=num_batches,
        epoch_source=_epoch_source(sources),
        rank=rank,
        world_size=world_size,
        with_steps=share_horizon is not None
        or any(is_scheduled(s.ratio) or is_scheduled(s.loss_weight) for s in sources),
        share_horizon=share_horizon,
        loss_weights=[s.loss_weight for s in sources],
        shard_sizes=[getattr(s.dataset, "shard_sizes", None) for s in sources],
        shard_window=shard_window,
    )
    return SlotDataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn if collate_fn is not None else _as_list,
        worker_init_fn=functools.partial(_seed_worker, seed=seed, rank=rank),
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )


def _epoch_source(sources: Sequence[Source]) -> int:
    """Position of the first real source with a positive (final) ratio, else of any positive
    one."""
    for want_real in (True, False):
        for k, source in enumerate(sources):
            if source.final_ratio > 0 and (source.kind == "real" or not want_real):
                return k
    raise ValueError("build_mixed_loader: every source has ratio 0")
