"""Batches that cross from loader workers through buffers the workers keep, not ones made per batch.

A DataLoader worker normally hands a batch over by moving every tensor into a fresh shared-memory
block and sending its file descriptor; the training process maps each block again and touches
its pages for the first time. For decoded images that costs about a third of decoding them.

:class:`SlotDataLoader` keeps ``prefetch_factor + 1`` shared buffers ("slots") per worker. The
worker collates into its next slot (:func:`~realsynth.data.collate.collate_relations` allocates
its batch tensors there; other tensors are copied in) and sends a :class:`SlotBatch`: the batch
pickled with every tensor replaced by its place in the slot. The training process copies the
tensors out (into pinned memory when the loader pins) and marks the slot free. A buffer and the
worker's slot states cross once each, when they are made or grow, until the training process
says it holds them.

The worker never waits: a slot the training process has not freed makes that batch travel the
ordinary way. Each slot records the number of the batch in it. A worker's batches reach the
training process in the order it made them, so opening batch n also frees the slots of the
worker's earlier batches that were never read (an iteration abandoned with persistent workers
leaves some; the loader throws them away).
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.pin_memory import pin_memory

from realsynth.data.batch_transport import TargetList, pack_targets, unpack_targets

_ALIGN = 64
SLOT_FREE = 0
#: (byte offset in the slot, dtype, shape) of each tensor of a :class:`SlotBatch`.
Placement = tuple[int, torch.dtype, tuple[int, ...]]


@dataclass
class SlotBatch:
    """What a worker sends for one batch.

    Attributes:
        pid: the worker's process id (the training process keeps its buffers by it).
        number: the batch's number among the worker's batches (1, 2, ...).
        slot: the slot holding the tensors, or None when the batch travels the ordinary way
            (then ``batch`` is it).
        version: the slot's buffer version (a grown buffer is a new version).
        payload: the batch pickled, each tensor a persistent id: its index in ``placements``.
        placements: where each tensor lies in the slot.
        attached: the worker's ``states`` (until held) and the slot's ``buffer`` (when the
            training process does not hold this version), as shared tensors.
        batch: the batch itself when ``slot`` is None.
        pinned: copy the tensors out into pinned memory (set by the loader's pinning thread).
    """

    pid: int
    number: int
    slot: int | None
    version: int = 0
    payload: bytes = b""
    placements: list[Placement] = field(default_factory=list)
    attached: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: Any = None
    pinned: bool = False

    def pin_memory(self) -> SlotBatch:
        """Called by the DataLoader's pinning thread: the copies out will be pinned (a batch
        that travels the ordinary way is pinned here)."""
        self.pinned = True
        if self.slot is None:
            self.batch = pin_memory(self.batch)
        return self


class SlotCollate:
    """A collate function that, in a loader worker, collates into the worker's slots.

    Outside a worker it is ``collate_fn``. A ``collate_fn`` with an ``allocate`` keyword (a
    ``(shape, dtype) -> zeroed tensor`` function) allocates its batch tensors in the slot.

    Args:
        collate_fn: the collate function (items -> batch).
        num_slots: slots per worker; ``prefetch_factor + 1`` never makes a worker wait for one.
    """

    def __init__(self, collate_fn: Callable[..., Any], num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"SlotCollate: num_slots must be >= 1, got {num_slots}")
        self.collate_fn, self.num_slots = collate_fn, num_slots
        self.takes_allocate = _takes_allocate(collate_fn)
        self._worker: _WorkerSlots | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_worker": None}  # a worker makes its own slots

    def __call__(self, items: list[Any]) -> Any:
        if get_worker_info() is None:
            return self.collate_fn(items)
        if self._worker is None:
            self._worker = _WorkerSlots(self.num_slots)
        return self._worker.collate(self.collate_fn, items, self.takes_allocate)


def _takes_allocate(collate_fn: Callable[..., Any]) -> bool:
    try:
        return "allocate" in inspect.signature(collate_fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


class _WorkerSlots:
    """One worker's slots: ``states`` int64 [1 + 2 S] shared: [0] 1 once the training process
    holds ``states``; [1 + s] 0 when slot s is free, else the number of the batch in it;
    [1 + S + s] the buffer version of slot s the training process holds."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.states = torch.zeros(1 + 2 * num_slots, dtype=torch.int64).share_memory_()
        self.buffers: list[torch.Tensor | None] = [None] * num_slots
        self.versions = [0] * num_slots
        self.count = 0

    def collate(self, collate_fn: Callable[..., Any], items: list[Any], allocate: bool) -> Any:
        slot = self.count % self.num_slots
        self.count += 1
        number, pid = self.count, os.getpid()
        attached = {} if int(self.states[0]) else {"states": self.states}
        if int(self.states[1 + slot]) != SLOT_FREE:
            return SlotBatch(pid, number, None, attached=attached, batch=collate_fn(items))
        arena = _Arena(self.buffers[slot])
        batch = collate_fn(items, allocate=arena.tensor) if allocate else collate_fn(items)
        payload, tensors = _dumps(batch, arena)
        placements, buffer = arena.place(tensors)
        if buffer is not self.buffers[slot]:
            self.buffers[slot] = buffer
            self.versions[slot] += 1
        version = self.versions[slot]
        if int(self.states[1 + self.num_slots + slot]) != version:
            attached["buffer"] = buffer
        self.states[1 + slot] = number  # filled: this worker writes it again once it is freed
        return SlotBatch(pid, number, slot, version, payload, placements, attached)


class _Arena:
    """Allocation in a slot's buffer (uint8 [capacity]) one tensor after the other, each at a
    multiple of 64 bytes; what does not fit is ordinary memory, copied in by :meth:`place`."""

    def __init__(self, buffer: torch.Tensor | None) -> None:
        self.buffer, self.used = buffer, 0

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zeroed tensor of ``shape``, in the buffer when it fits."""
        nbytes = _nbytes(shape, dtype)
        start = _aligned(self.used)
        if self.buffer is None or start + nbytes > len(self.buffer):
            return torch.zeros(shape, dtype=dtype)
        self.used = start + nbytes
        return _view(self.buffer, start, dtype, shape).zero_()

    def place(self, tensors: list[torch.Tensor]) -> tuple[list[Placement], torch.Tensor]:
        """Where each tensor lies in the slot (copying in those outside it), and the buffer:
        a new, larger shared one when they do not fit the current one."""
        inside = [self._offset(t) for t in tensors]
        need = self.used
        for t, offset in zip(tensors, inside):
            if offset is None:
                need = _aligned(need) + t.nbytes
        buffer, end = self.buffer, self.used
        if buffer is None or need > len(buffer):
            total = sum(_aligned(t.nbytes) for t in tensors)  # everything is copied in
            buffer = torch.zeros(total + total // 4 + _ALIGN, dtype=torch.uint8).share_memory_()
            inside, end = [None] * len(tensors), 0
        placements = []
        for t, offset in zip(tensors, inside):
            if offset is None:
                offset, end = _aligned(end), _aligned(end) + t.nbytes
                _view(buffer, offset, t.dtype, tuple(t.shape)).copy_(t)
            placements.append((offset, t.dtype, tuple(t.shape)))
        return placements, buffer

    def _offset(self, t: torch.Tensor) -> int | None:
        """Byte offset of ``t`` in the buffer when it is a contiguous tensor allocated there."""
        if self.buffer is None or not t.is_contiguous():
            return None
        if t.untyped_storage().data_ptr() != self.buffer.untyped_storage().data_ptr():
            return None
        return t.storage_offset() * t.element_size()


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count * dtype.itemsize


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    return buffer[offset : offset + _nbytes(shape, dtype)].view(dtype).view(shape)


def _plain(obj: Any) -> bool:
    """A tensor the slot carries: dense, on the CPU, without autograd history."""
    return (
        isinstance(obj, torch.Tensor)
        and obj.layout == torch.strided
        and obj.device.type == "cpu"
        and not obj.requires_grad
        and not obj.is_quantized
    )


class _SlotPickler(pickle.Pickler):
    """Pickles a batch with its tensors out of line (listed in ``tensors``) and a
    :class:`TargetList`'s fields packed into the arena."""

    def __init__(self, file: io.BytesIO, arena: _Arena) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arena, self.tensors = arena, []
        self.indices: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> int | None:
        if not _plain(obj):
            return None
        # One placement per tensor object (pickle asks before its own memo): a tensor the batch
        # holds twice arrives as one tensor held twice.
        index = self.indices.setdefault(id(obj), len(self.tensors))
        if index == len(self.tensors):
            self.tensors.append(obj)
        return index

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is TargetList:
            return unpack_targets, pack_targets(list(obj), allocate=self.arena.tensor)
        return NotImplemented


def _dumps(batch: Any, arena: _Arena) -> tuple[bytes, list[torch.Tensor]]:
    buffer = io.BytesIO()
    pickler = _SlotPickler(buffer, arena)
    pickler.dump(batch)
    return buffer.getvalue(), pickler.tensors


class SlotUnpickler(pickle.Unpickler):
    """Rebuilds a :class:`SlotBatch`'s batch, copying each tensor out of the slot."""

    def __init__(self, sent: SlotBatch, buffer: torch.Tensor) -> None:
        super().__init__(io.BytesIO(sent.payload))
        self.sent, self.buffer = sent, buffer
        self.copies: dict[int, torch.Tensor] = {}

    def persistent_load(self, index: int) -> torch.Tensor:
        if index not in self.copies:
            offset, dtype, shape = self.sent.placements[index]
            out = torch.empty(shape, dtype=dtype, pin_memory=self.sent.pinned)
            self.copies[index] = out.copy_(_view(self.buffer, offset, dtype, shape))
        return self.copies[index]
