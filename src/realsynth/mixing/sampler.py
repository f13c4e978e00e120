"""MixedBatchSampler: batches with an exact per-source composition, whatever order a loader
would put the indices in (see docs/architecture.md for its guarantees).

Global indices follow :class:`realsynth.mixing.mixed_dataset.MixedDataset`: source k occupies
``[offset_k, offset_k + sizes[k])``, offsets being cumulative sizes in the given order.

The sampler sees one infinite stream of global batches ``g = 0, 1, 2, ...``. Batch ``g`` holds
``counts_k(g)`` items of source k (see :mod:`realsynth.mixing.batch_composition`), taken from
source k's own infinite stream (see :mod:`realsynth.mixing.permutation`) at positions
``[X_k(g), X_k(g) + counts_k(g))``, ``X_k(g)`` being the items of k in batches before ``g``.
Epoch ``e`` is global batches ``[e * L, (e + 1) * L)``; rank ``r`` of ``W`` takes ``r, r + W, ...``
of them. Everything is a pure function of ``(seed, epoch, batch index)``, so resuming costs
nothing and no memory grows with the sources' sizes.

Shares may follow step schedules (:class:`realsynth.mixing.step_schedule.StepSchedule`): global
batch ``g`` belongs to optimizer step ``g // W`` and gets that step's shares, with the same
floor / ceil and running-count guarantees (see :mod:`realsynth.mixing.scheduled_composition`).
Constant shares keep the exact-fraction schedule of :mod:`realsynth.mixing.batch_composition`,
so a run without schedules yields the same stream as before schedules existed. Under a
changing schedule the epoch length ``L`` is fixed: ``num_batches``, or by default one pass over
the epoch source at its share after the schedule's last change. An epoch only numbers the
augmentation draws (``set_epoch``); each source's stream runs on across epochs either way.

The sampler is also the one authority for the loss weights: every source's weight at every step
comes from :class:`realsynth.mixing.weight_history.WeightHistory` (constant or scheduled
``loss_weights``, then adaptive decisions). With ``with_steps`` every index travels as an
``(index, step, weight)`` triple, so the weight is fixed when the batch is drawn, in the process
that decides (a loader worker only reads it). Adaptive decisions (:meth:`change_mix`) take
effect only at or after the share horizon, before which no batch has been drawn, so shares and
weights of a batch never depend on when a worker built it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from realsynth.mixing.permutation import KeyedStream
from realsynth.mixing.sampler_settings import (
    ShareSchedule,
    as_schedules,
    loss_weight_history,
    share_schedule,
    validate_settings,
)
from realsynth.mixing.sampler_state import resume_point
from realsynth.mixing.shard_windows import ShardWindowStream
from realsynth.mixing.share_history import ShareHistory
from realsynth.mixing.step_schedule import StepSchedule

__all__ = ["MixedBatchSampler"]

# Indices generated per vectorized chunk: large enough to amortize numpy overhead, small
# enough to stay in cache and keep time to first batch short.
_CHUNK_INDICES = 1 << 16


class MixedBatchSampler(Sampler[list[int]]):
    """Yields lists of global indices, every batch with the exact per-source composition.

    Args:
        sizes: items per source, in global index order.
        ratios: share of every batch per source, each in [0, 1]: floats summing to 1 (+-1e-6),
            or step schedules (a float is a constant), whose values are divided by their sum
            at every step.
        batch_size: items per batch (global indices per yielded list).
        seed: seed of all permutations and draws.
        replacement: ``False``: passes without repeats, a new permutation per pass.
            ``True``: independent uniform draws inside each source.
        num_batches: batches per rank per epoch; default one pass over ``epoch_source``.
        epoch_source: the source whose size defines an epoch (by convention 0, the real data).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        with_steps: yield ``(index, step, weight)`` triples, ``step`` being the optimizer step
            the batch is drawn for and ``weight`` the loss weight in force for the index's
            source at that step (:meth:`weights_at`).
        share_horizon: adaptive mixing (constant ``ratios`` only): batches are drawn only for
            steps before this one until :meth:`change_mix` moves it (see
            :mod:`realsynth.mixing.share_history`). None: fixed or scheduled shares and weights.
        loss_weights: every source's per-sample loss weight, finite and >= 0, or a step
            schedule of it; default 1.0 each.
        shard_sizes: per source, int [S] items per shard of a source read from shards (None
            for the others): its passes visit ``shard_window`` shards at a time (see
            :mod:`realsynth.mixing.shard_windows`); ignored with ``replacement``.
        shard_window: shards whose items are shuffled together.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        ratios: Sequence[float | StepSchedule],
        batch_size: int,
        *,
        seed: int = 0,
        replacement: bool = False,
        num_batches: int | None = None,
        epoch_source: int = 0,
        rank: int = 0,
        world_size: int = 1,
        with_steps: bool = False,
        share_horizon: int | None = None,
        loss_weights: Sequence[float | StepSchedule] | None = None,
        shard_sizes: Sequence[np.ndarray | None] | None = None,
        shard_window: int = 8,
    ) -> None:
        schedules = as_schedules(ratios)
        validate_settings(sizes, schedules, batch_size, num_batches, epoch_source, rank, world_size)
        self.weight_history = loss_weight_history(loss_weights, len(sizes))
        self.sizes = [int(s) for s in sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.replacement = bool(replacement)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.with_steps = bool(with_steps)
        self.ratio_schedules = schedules
        self.is_scheduled = not all(s.is_constant for s in schedules)
        self.share_horizon = None if share_horizon is None else int(share_horizon)
        self.schedule: ShareSchedule
        self.shares, self.schedule = share_schedule(
            schedules, self.batch_size, self.world_size, adaptive=self.share_horizon is not None
        )
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes[:-1])]).astype(np.int64)
        self.shard_window = int(shard_window)
        self._streams = _source_streams(
            self.sizes,
            schedules,
            self.seed,
            self.replacement,
            shard_sizes=shard_sizes,
            shard_window=self.shard_window,
        )
        if num_batches is None:
            num_batches = self._one_pass(epoch_source)
        self.num_batches = int(num_batches)
        self.epoch = 0
        self._position = 0

    def _one_pass(self, epoch_source: int) -> int:
        """Batches per rank of one pass over ``epoch_source`` at its (final) share."""
        per_batch = self.shares[epoch_source] * self.batch_size
        if per_batch <= 0:
            when = " after the schedules' last change" if self.is_scheduled else ""
            raise ValueError(
                f"epoch_source {epoch_source} has ratio 0{when}, so an epoch over it never "
                "ends; pick a source with a positive ratio or set num_batches"
            )
        one_pass = math.ceil(self.sizes[epoch_source] / per_batch)
        return math.ceil(one_pass / self.world_size)

    @property
    def shares_change(self) -> bool:
        """Whether the shares depend on the step (a changing schedule or adaptive shares)."""
        return self.is_scheduled or self.share_horizon is not None

    @property
    def weights_change(self) -> bool:
        """Whether the loss weights depend on the step (a changing schedule or adaptive)."""
        return self.weight_history.is_scheduled or self.share_horizon is not None

    def change_mix(
        self,
        step: int,
        *,
        horizon: int,
        ratios: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
    ) -> bool:
        """One adaptive decision: ``ratios`` (normalized) and / or loss ``weights`` in force from
        optimizer step ``step`` on (None keeps those in force), and batches may be drawn for
        steps before ``horizon``. Returns whether the shares or the weights in force changed.

        Raises:
            ValueError: not an adaptive sampler, ``step`` before the current horizon (batches up
                to there may be drawn already), ``horizon < step``, weights while the planned
                weights follow a schedule, or invalid ratios / weights (nothing is changed).
        """
        if self.share_horizon is None:
            raise ValueError("adaptive changes need an adaptive sampler (share_horizon set)")
        if step < self.share_horizon or horizon < step:
            raise ValueError(
                f"adaptive change: step {step} must be >= the horizon {self.share_horizon} "
                f"(earlier batches may be drawn already) and <= the new horizon {horizon}"
            )
        if weights is not None:
            self.weight_history.check(step, weights)  # refuse before changing anything
        changed = False
        if ratios is not None:
            assert isinstance(self.schedule, ShareHistory)
            changed = self.schedule.change(step, ratios)
        if weights is not None:
            changed = self.weight_history.change(step, weights) or changed
        self.share_horizon = int(horizon)
        return changed

    def change_shares(self, step: int, ratios: Sequence[float], *, horizon: int) -> bool:
        """Adaptive shares: :meth:`change_mix` with ``ratios`` only."""
        return self.change_mix(step, horizon=horizon, ratios=ratios)

    def change_weights(self, step: int, weights: Sequence[float], *, horizon: int) -> bool:
        """Adaptive loss weights: :meth:`change_mix` with ``weights`` only."""
        return self.change_mix(step, horizon=horizon, weights=weights)

    def _horizon_position(self) -> int:
        """First position of this epoch whose step is past the share horizon."""
        if self.share_horizon is None:
            return self.num_batches
        # Position p of epoch e on any rank is drawn for step e * num_batches + p.
        return max(0, self.share_horizon - self.epoch * self.num_batches)

    def target_shares(self, step: int) -> list[float]:
        """Every source's target share of the batches of optimizer step ``step`` (0-based)."""
        return self.schedule.shares(np.array([step], dtype=np.int64))[0].tolist()

    def weights_at(self, step: int) -> list[float]:
        """Every source's loss weight in force for the batches of optimizer step ``step``
        (0-based): the one the items of those batches carry."""
        return self.weight_history.at(step)

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

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int, float]]]:
        per_chunk = max(1, _CHUNK_INDICES // self.batch_size)
        # Chunks grow from one batch so that the first batch is ready at once.
        chunk = 1
        while self._position < self.num_batches:
            limit = self._horizon_position()
            if self._position >= limit:
                raise RuntimeError(
                    f"adaptive mixing: the batch of step {self.share_horizon} was asked for "
                    "before its shares were decided; the loader prefetches more batches than "
                    "the decision interval: raise the interval or use fewer loader workers"
                )
            stop = min(self.num_batches, self._position + chunk, limit)
            chunk = min(per_chunk, 4 * chunk)
            # One flat list sliced per batch: far fewer live containers for the garbage
            # collector to scan than ndarray.tolist() on the 2-D array.
            indices, owner = self._draw(self._position, stop)
            flat = indices.ravel().tolist()
            owners = owner.ravel().tolist() if self.with_steps else []
            for begin in range(0, len(flat), self.batch_size):
                batch = flat[begin : begin + self.batch_size]
                if self.with_steps:
                    step = self.global_batch(self._position) // self.world_size
                    weights = self.weights_at(step)
                    sources = owners[begin : begin + self.batch_size]
                    batch = [(index, step, weights[k]) for index, k in zip(batch, sources)]
                self._position += 1
                yield batch
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
        return self._draw(start, stop)[0]

    def _draw(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`batches` and the source of every index (int16, same shape)."""
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
        return out, owner

    def state_dict(self) -> dict[str, Any]:
        """Progress of the live iterator plus the settings a resume must agree on (and, under a
        changing schedule, the schedules' definitions)."""
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "position": self._position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_batches": self.num_batches,
        }
        if self.is_scheduled:
            state["ratio_schedules"] = [s.definition() for s in self.ratio_schedules]
        if isinstance(self.schedule, ShareHistory):
            state["share_history"] = self.schedule.state_dict()
            state["weight_history"] = self.weight_history.state_dict()
            state["share_horizon"] = self.share_horizon
        return state

    def load_share_history(self, state_dict: dict[str, Any]) -> None:
        """Adaptive: replays the share and weight changes of a saved state (any world size)."""
        if isinstance(self.schedule, ShareHistory) and "share_history" in state_dict:
            self.schedule.load_state_dict(state_dict["share_history"])
            # A state saved before weights were kept here holds no weight change.
            no_change = {"steps": [], "values": []}
            self.weight_history.load_state_dict(state_dict.get("weight_history", no_change))
            self.share_horizon = int(state_dict["share_horizon"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resumes at ``state_dict``'s epoch and position; settings must match.

        Raises:
            ValueError: a key is missing, or seed / batch size / world size / epoch length
                differ from this sampler's.
        """
        self.epoch, self._position = resume_point(state_dict, self.state_dict())
        self.load_share_history(state_dict)


def _source_streams(
    sizes: Sequence[int],
    schedules: Sequence[StepSchedule],
    seed: int,
    replacement: bool,
    *,
    shard_sizes: Sequence[np.ndarray | None] | None,
    shard_window: int,
) -> list[KeyedStream | ShardWindowStream | None]:
    """Every source's infinite stream of items (None for a source never drawn from)."""
    streams: list[KeyedStream | ShardWindowStream | None] = []
    for k, (size, schedule) in enumerate(zip(sizes, schedules)):
        shards = shard_sizes[k] if shard_sizes is not None else None
        if schedule.extremes()[1] <= 0:
            streams.append(None)
        elif shards is not None and not replacement:
            if int(np.sum(shards)) != size:
                raise ValueError(f"source {k}: shard sizes sum to {np.sum(shards)}, not {size}")
            streams.append(ShardWindowStream(shards, window=shard_window, seed=seed, stream_id=k))
        else:
            streams.append(KeyedStream(size, seed=seed, stream_id=k, replacement=replacement))
    return streams
