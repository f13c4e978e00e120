"""MixedBatchSampler: batches with an exact per-source composition (the note's
MultiDatasetDynamicSampler, without its reliance on index order).

Global indices follow :class:`realsynth.data.mixed_dataset.MixedDataset`: source k occupies
``[offset_k, offset_k + sizes[k])``, offsets being cumulative sizes in the given order.

The sampler sees one infinite stream of global batches ``g = 0, 1, 2, ...``. Batch ``g`` holds
``counts_k(g)`` items of source k (see :mod:`realsynth.data.batch_composition`), taken from
source k's own infinite stream (see :mod:`realsynth.data.permutation`) at positions
``[X_k(g), X_k(g) + counts_k(g))``, ``X_k(g)`` being the items of k in batches before ``g``.
Epoch ``e`` is global batches ``[e * L, (e + 1) * L)``; rank ``r`` of ``W`` takes ``r, r + W, ...``
of them. Everything is a pure function of ``(seed, epoch, batch index)``, so resuming costs
nothing and no memory grows with the sources' sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from realsynth.data.batch_composition import CompositionSchedule, exact_shares
from realsynth.data.permutation import KeyedStream

__all__ = ["MixedBatchSampler"]

_RATIO_TOLERANCE = 1e-6
# Indices generated per vectorized chunk: large enough to amortize numpy overhead, small
# enough to stay in cache and keep time to first batch short.
_CHUNK_INDICES = 1 << 16


class MixedBatchSampler(Sampler[list[int]]):
    """Yields lists of global indices, every batch with the exact per-source composition.

    Args:
        sizes: items per source, in global index order.
        ratios: share of every batch per source; each in [0, 1], summing to 1 (+-1e-6).
        batch_size: items per batch (global indices per yielded list).
        seed: seed of all permutations and draws.
        replacement: ``False``: passes without repeats, a new permutation per pass.
            ``True``: independent uniform draws inside each source.
        num_batches: batches per rank per epoch; default one pass over ``epoch_source``.
        epoch_source: the source whose size defines an epoch (by convention 0, the real data).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        ratios: Sequence[float],
        batch_size: int,
        *,
        seed: int = 0,
        replacement: bool = False,
        num_batches: int | None = None,
        epoch_source: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _validate(sizes, ratios, batch_size, num_batches, epoch_source, rank, world_size)
        self.sizes = [int(s) for s in sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.replacement = bool(replacement)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shares = exact_shares(ratios)
        self.schedule = CompositionSchedule(self.shares, self.batch_size)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes[:-1])]).astype(np.int64)
        self._streams = [
            KeyedStream(size, seed=self.seed, stream_id=k, replacement=self.replacement)
            if share > 0
            else None
            for k, (size, share) in enumerate(zip(self.sizes, self.shares))
        ]
        if num_batches is None:
            per_batch = self.shares[epoch_source] * self.batch_size
            one_pass = math.ceil(self.sizes[epoch_source] / per_batch)
            num_batches = math.ceil(one_pass / self.world_size)
        self.num_batches = int(num_batches)
        self.epoch = 0
        self._position = 0

    def __len__(self) -> int:
        return self.num_batches

    @property
    def global_batches_per_epoch(self) -> int:
        """Global batches in one epoch (all ranks together)."""
        return self.num_batches * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch the next iteration yields (as ``DistributedSampler.set_epoch``).

        Setting the epoch the sampler is already in keeps the position, so a resumed run that
        calls ``set_epoch`` at the top of its epoch loop continues mid-epoch.
        """
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0

    def global_batch(self, index: int) -> int:
        """Global batch index of this rank's ``index``-th batch in the current epoch."""
        return self.epoch * self.global_batches_per_epoch + self.rank + index * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        per_chunk = max(1, _CHUNK_INDICES // self.batch_size)
        # Chunks grow from one batch so that the first batch is ready at once.
        chunk = 1
        while self._position < self.num_batches:
            stop = min(self.num_batches, self._position + chunk)
            chunk = min(per_chunk, 4 * chunk)
            # One flat list sliced per batch: far fewer live containers for the garbage
            # collector to scan than ndarray.tolist() on the 2-D array.
            flat = self.batches(self._position, stop).ravel().tolist()
            for begin in range(0, len(flat), self.batch_size):
                self._position += 1
                yield flat[begin : begin + self.batch_size]
        self.epoch += 1
        self._position = 0

    def batches(self, start: int, stop: int) -> np.ndarray:
        """This rank's batches ``[start, stop)`` of the current epoch, without moving.

        Args:
            start: first batch index within the epoch (0-based, per rank).
            stop: one past the last batch index.

        Returns:
            int64 array [stop - start, batch_size] of global indices, sources in order.
        """
        first = self.global_batch(start)
        g = np.arange(first, first + (stop - start) * self.world_size, self.world_size)
        # One ascending query for g and g + 1 (the quota method's cursor then never rewinds):
        # consecutive batches share their edges, strided ones (several ranks) interleave them.
        if self.world_size == 1:
            cumulative = self.schedule.cumulative(np.arange(g[0], g[-1] + 2))
            before, after = cumulative[:-1], cumulative[1:]
        else:
            cumulative = self.schedule.cumulative(np.stack([g, g + 1], axis=1).ravel())
            before, after = cumulative[0::2], cumulative[1::2]
        counts = after - before
        # Column c of batch b belongs to the source whose cumulative count first exceeds c.
        bounds = np.cumsum(counts, axis=1)
        columns = np.arange(self.batch_size)
        owner = np.zeros((g.shape[0], self.batch_size), dtype=np.int16)
        for k in range(self.schedule.num_sources - 1):
            owner += columns[None, :] >= bounds[:, k : k + 1]
        out = np.empty((g.shape[0], self.batch_size), dtype=np.int64)
        for k, stream in enumerate(self._streams):
            total = int(counts[:, k].sum())
            if stream is None or total == 0:
                continue
            if self.world_size == 1:  # consecutive batches: one contiguous run of positions
                items = stream.take(int(before[0, k]), total)
            else:
                cnt = counts[:, k]
                within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
                items = stream.at(np.repeat(before[:, k], cnt) + within)
            items += self.offsets[k]
            out[owner == k] = items
        return out

    def state_dict(self) -> dict[str, int]:
        """Progress of the live iterator plus the settings a resume must agree on."""
        return {
            "epoch": self.epoch,
            "position": self._position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_batches": self.num_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resumes at ``state_dict``'s epoch and position; settings must match.

        Raises:
            ValueError: a key is missing, or seed / batch size / world size / epoch length
                differ from this sampler's.
        """
        current = self.state_dict()
        missing = sorted(set(current) - set(state_dict))
        if missing:
            raise ValueError(f"MixedBatchSampler state_dict is missing keys {missing}")
        for key in ("seed", "batch_size", "world_size", "num_batches"):
            if int(state_dict[key]) != current[key]:
                raise ValueError(
                    f"MixedBatchSampler state_dict has {key}={state_dict[key]}, but this "
                    f"sampler has {key}={current[key]}"
                )
        position = int(state_dict["position"])
        if not 0 <= position <= self.num_batches or int(state_dict["epoch"]) < 0:
            raise ValueError(
                f"MixedBatchSampler state_dict has epoch={state_dict['epoch']}, "
                f"position={position}; expected epoch >= 0 and position in [0, {self.num_batches}]"
            )
        self.epoch = int(state_dict["epoch"])
        self._position = position


def _validate(
    sizes: Sequence[int],
    ratios: Sequence[float],
    batch_size: int,
    num_batches: int | None,
    epoch_source: int,
    rank: int,
    world_size: int,
) -> None:
    """Rejects bad settings with a message naming the setting."""
    if len(sizes) != len(ratios) or not sizes:
        raise ValueError(
            f"sizes and ratios must be non-empty and of equal length, got {len(sizes)} sizes "
            f"and {len(ratios)} ratios"
        )
    for k, (size, ratio) in enumerate(zip(sizes, ratios)):
        if int(size) != size or size < 0:
            raise ValueError(f"sizes[{k}] must be a non-negative integer, got {size}")
        if not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratios[{k}] must be in [0, 1], got {ratio}")
        if ratio > 0 and size == 0:
            raise ValueError(f"source {k} has ratio {ratio} > 0 but no items (sizes[{k}] = 0)")
    if abs(math.fsum(ratios) - 1.0) > _RATIO_TOLERANCE:
        raise ValueError(f"ratios must sum to 1 (tolerance 1e-6), got sum {math.fsum(ratios):.9g}")
    positive = sum(1 for r in ratios if r > 0)
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
    if num_batches is None and ratios[epoch_source] <= 0:
        raise ValueError(
            f"epoch_source {epoch_source} has ratio 0, so an epoch over it never ends; "
            "pick a source with a positive ratio or set num_batches"
        )
