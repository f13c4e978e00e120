"""A DataLoader whose workers hand batches over through slots they keep (:mod:`batch_slots`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from realsynth.data.batch_slots import SLOT_FREE, SlotBatch, SlotCollate, SlotUnpickler


class SlotDataLoader(DataLoader):
    """A :class:`torch.utils.data.DataLoader` whose workers send batches through kept slots.

    It takes DataLoader's arguments and yields the same batches; with ``num_workers > 0`` the
    ``collate_fn`` runs as a :class:`~realsynth.data.batch_slots.SlotCollate` with
    ``prefetch_factor + 1`` slots per worker, and each batch's tensors are copied out of the
    worker's slot (into pinned memory with ``pin_memory=True``). With no workers, or
    ``collate_fn=None``, it is a plain DataLoader.

    ``slot_receiver`` is the latest iteration's :class:`SlotReceiver` (one per iteration, since
    each has its own workers; with ``persistent_workers=True`` one for the loader's life): its
    ``through_slots`` and ``ordinary`` count the batches.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_workers > 0 and collate_fn is not None:
            slots = (2 if prefetch_factor is None else prefetch_factor) + 1
            collate_fn = SlotCollate(collate_fn, num_slots=slots)
        super().__init__(
            dataset,
            collate_fn=collate_fn,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            **kwargs,
        )
        self.slot_receiver = SlotReceiver()

    def __iter__(self) -> Iterator[Any]:
        if not isinstance(self.collate_fn, SlotCollate):
            return super().__iter__()
        if not self.persistent_workers:  # new workers: nothing of the last ones is needed
            self.slot_receiver = SlotReceiver()
        return _Received(super().__iter__(), self.slot_receiver)


class _Received:
    """The batches of a DataLoader iterator, each :class:`SlotBatch` opened."""

    def __init__(self, batches: Iterator[Any], receiver: SlotReceiver) -> None:
        self.batches, self.receiver = batches, receiver

    def __iter__(self) -> _Received:
        return self

    def __next__(self) -> Any:
        sent = next(self.batches)
        return self.receiver.open(sent) if isinstance(sent, SlotBatch) else sent

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class _Held:
    """What the training process holds of one worker: its slot states and slot buffers
    ({slot: (version, uint8 buffer)})."""

    states: torch.Tensor | None = None
    buffers: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)


class SlotReceiver:
    """The training process's side of one set of workers: their buffers by process id, batches
    copied out of them.

    Attributes:
        workers: what is held of each worker, by process id.
        through_slots / ordinary: how many batches came through a slot, and the ordinary way
            (a slot still filled: after an abandoned iteration).
    """

    def __init__(self) -> None:
        self.workers: dict[int, _Held] = {}
        self.through_slots = self.ordinary = 0

    def open(self, sent: SlotBatch) -> Any:
        """The batch ``sent`` describes, its tensors copies; its slot is free again after."""
        held = self.workers.setdefault(sent.pid, _Held())
        if "states" in sent.attached:
            held.states = sent.attached["states"]
            held.states[0] = 1
        if sent.slot is None:
            self.ordinary += 1
            _free_read(held.states, sent.number)
            return sent.batch
        self.through_slots += 1
        num_slots = (len(held.states) - 1) // 2
        if "buffer" in sent.attached:
            held.buffers[sent.slot] = (sent.version, sent.attached["buffer"])
            held.states[1 + num_slots + sent.slot] = sent.version
        version, buffer = held.buffers.get(sent.slot, (None, None))
        if version != sent.version:
            raise RuntimeError(
                f"SlotDataLoader: worker {sent.pid} sent slot {sent.slot} version "
                f"{sent.version}, the training process holds {version}"
            )
        batch = SlotUnpickler(sent, buffer).load()
        # Each copy's source view was released (an acquire-release reference count) before
        # this store, so the copies have read the slot before the worker may see it free.
        _free_read(held.states, sent.number)
        return batch


def _free_read(states: torch.Tensor | None, number: int) -> None:
    """Frees the slots of batch ``number`` and of the worker's earlier batches: a worker's
    batches arrive in the order it made them, so an earlier one still in a slot was thrown away
    by the loader (an abandoned iteration) and will never be read. The worker writes only free
    slots, so none of these changes while they are freed."""
    if states is None:
        return
    filled = states[1 : 1 + (len(states) - 1) // 2]
    filled[(filled > 0) & (filled <= number)] = SLOT_FREE
