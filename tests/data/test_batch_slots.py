"""Batches that cross through a worker's kept slots arrive as they were made: equal to a loader
without workers, whatever the batch holds, through growing buffers, abandoned iterations and
spawned workers; a buffer crosses once per version and a filled slot is never written."""

from __future__ import annotations

import pickle
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reductions)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data._utils import pin_memory, worker

from realsynth.data.batch_slots import SlotBatch, SlotCollate
from realsynth.data.collate import collate_relations
from realsynth.data.slot_loader import SlotDataLoader, SlotReceiver
from realsynth.data.transforms import build_transforms


class _Growing(torch.utils.data.Dataset):
    """uint8 images whose size grows with the index (later batches outgrow the slots)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        transforms = build_transforms(
            train=False, min_sizes=[], max_size=None, normalize=True, uint8=True
        )
        w, h = 4 + index, 3 + int(rng.integers(0, 2 + index))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        count = 1 + index % 3
        target = {"boxes": torch.rand(count, 4, generator=torch.Generator().manual_seed(index))}
        target["labels"] = torch.arange(count)
        image, target = transforms(Image.fromarray(pixels), target, rng)
        return {
            **target,
            "image": image,
            "relations": torch.zeros(index % 2, 3, dtype=torch.int64),
            "image_id": index,
            "file_name": f"{index}.jpg",
        }


def _assert_same(ours, theirs, where: str = "batch") -> None:
    assert type(ours) is type(theirs), where
    if isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
        assert torch.equal(ours, theirs), where
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in theirs:
            _assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for k, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same(a, b, f"{where}[{k}]")
    else:
        assert ours == theirs, where


def _plain_batches(dataset, collate_fn, batch_size: int = 4) -> list:
    return list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn))


def test_two_workers_deliver_what_no_worker_does_through_growing_slots():
    loader = SlotDataLoader(_Growing(), batch_size=4, num_workers=2, collate_fn=collate_relations)
    ours = list(loader)
    _assert_same(ours, _plain_batches(_Growing(), collate_relations))
    receiver = loader.slot_receiver
    assert receiver.through_slots == 6 and receiver.ordinary == 0
    assert len(receiver.workers) == 2


def _odd_collate(items: list[dict]) -> dict:
    """A user's collate without ``allocate``: odd dtypes, views, 0-d and empty tensors."""
    images = torch.stack([item["image"] for item in items])
    return {
        "images_t": images.transpose(2, 3),  # not contiguous
        "half": images.to(torch.float16)[:, :1],
        "flags": images[:, 0, 0] > 128,
        "count": torch.tensor(len(items)),
        "empty": torch.zeros(0, 5, dtype=torch.int8),
        "nested": [(item["image_id"], item["labels"]) for item in items],
        "names": [item["file_name"] for item in items],
    }


class _Fixed(_Growing):
    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        return {**item, "image": torch.full((3, 5, 6), index, dtype=torch.uint8)}


def test_a_collate_without_allocate_crosses_whole():
    loader = SlotDataLoader(_Fixed(), batch_size=5, num_workers=2, collate_fn=_odd_collate)
    ours = list(loader)
    theirs = _plain_batches(_Fixed(), _odd_collate, batch_size=5)
    for a, b in zip(ours, theirs):
        _assert_same(a, b)
        assert a["images_t"].is_contiguous()  # copied out into a fresh tensor
    assert loader.slot_receiver.through_slots == len(theirs)


def test_abandoned_iterations_of_persistent_workers_leave_no_slot_stuck():
    loader = SlotDataLoader(
        _Growing(),
        batch_size=4,
        num_workers=2,
        collate_fn=collate_relations,
        persistent_workers=True,
    )
    receiver = loader.slot_receiver
    for _ in range(3):
        batches = iter(loader)
        next(batches)  # abandoned: the loader throws the rest of the epoch away
    assert loader.slot_receiver is receiver  # the same workers, the same receiver
    for _ in range(2):
        before = receiver.ordinary, receiver.through_slots
        _assert_same(list(loader), _plain_batches(_Growing(), collate_relations))
        # The slots of thrown-away batches are freed by the first batch each worker delivers:
        # at most the tasks a worker took before that travel the ordinary way.
        assert receiver.ordinary - before[0] <= 2 * 2
        assert receiver.through_slots + receiver.ordinary - sum(before) == 6


class _Uneven(torch.utils.data.IterableDataset):
    """Worker 0 yields everything, worker 1 nothing: worker 0 takes every task in flight."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        return iter(range(12) if info is None or info.id == 0 else ())


def _rows(items: list[int], allocate=None) -> torch.Tensor:
    out = (allocate or (lambda shape, dtype: torch.zeros(shape, dtype=dtype)))(
        (len(items), 500), torch.int64
    )
    out[:] = torch.tensor(items)[:, None]
    return out


def test_two_live_iterators_never_share_a_slot():
    loader = SlotDataLoader(_Uneven(), batch_size=1, num_workers=2, collate_fn=_rows)
    first = iter(loader)
    got = [next(first)]
    time.sleep(0.3)  # worker 0 fills its slots with batches the first iterator has not read
    second = iter(loader)  # new workers, a new receiver: the first's slots are left alone
    got += list(first)
    assert [int(b[0, 0]) for b in got] == list(range(12))
    assert all(bool((b == b[0, 0]).all()) for b in got)
    assert [int(b[0, 0]) for b in second] == list(range(12))


def _twice(items: list[int], allocate=None) -> dict:
    """A slot tensor held twice, and an outside tensor that makes the slot grow at item 3."""
    x = (allocate or (lambda shape, dtype: torch.zeros(shape, dtype=dtype)))((300,), torch.int64)
    x.fill_(items[0])
    return {"x": x, "again": x, "y": torch.full((1 if items[0] < 3 else 900,), items[0])}


def test_a_tensor_held_twice_arrives_once_through_a_growing_slot():
    loader = SlotDataLoader(list(range(6)), batch_size=1, num_workers=1, collate_fn=_twice)
    for k, batch in enumerate(loader):
        assert batch["again"] is batch["x"] and bool((batch["x"] == k).all())
        assert batch["y"].shape == ((1,) if k < 3 else (900,)) and bool((batch["y"] == k).all())
    assert loader.slot_receiver.through_slots == 6


def test_spawned_workers_make_their_own_slots():
    loader = SlotDataLoader(
        _Growing(),
        batch_size=6,
        num_workers=1,
        collate_fn=collate_relations,
        multiprocessing_context="spawn",
    )
    _assert_same(list(loader), _plain_batches(_Growing(), collate_relations, batch_size=6))
    assert loader.slot_receiver.through_slots == 4


@pytest.fixture
def as_worker():
    """Run collate functions as loader worker 0 does, in this process."""
    worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    yield
    worker._worker_info = None


def _cross(collate: SlotCollate, receiver: SlotReceiver, items) -> tuple[SlotBatch, object]:
    sent = pickle.loads(ForkingPickler.dumps(collate(items)))
    return sent, receiver.open(sent)


def test_a_buffer_crosses_once_per_version(as_worker):
    collate, receiver = SlotCollate(collate_relations, num_slots=2), SlotReceiver()
    items = [_Fixed()[i] for i in range(4)]
    first = [_cross(collate, receiver, items[:2]) for _ in range(2)]
    assert [sorted(sent.attached) for sent, _ in first] == [["buffer", "states"], ["buffer"]]
    again = [_cross(collate, receiver, items[:2]) for _ in range(4)]
    assert all(not sent.attached and sent.version == 1 for sent, _ in again)
    bigger, batch = _cross(collate, receiver, items)  # twice the images: slot 0 grows
    assert bigger.slot == 0 and bigger.version == 2 and list(bigger.attached) == ["buffer"]
    _assert_same(batch, collate_relations(items))
    # Images, mask and the targets' packed fields lie in the slot: a few tensors, not per image.
    assert len(bigger.placements) <= 10


def test_a_filled_slot_is_never_written(as_worker):
    collate, receiver = SlotCollate(collate_relations, num_slots=1), SlotReceiver()
    items = [_Fixed()[i] for i in range(2)]
    _cross(collate, receiver, items)
    held = pickle.loads(ForkingPickler.dumps(collate(items)))  # sent, not yet opened
    assert held.slot == 0
    fallback = collate(items)  # the only slot is filled: this batch travels the ordinary way
    assert fallback.slot is None
    _assert_same(fallback.batch, collate_relations(items))
    _assert_same(receiver.open(held), collate_relations(items))
    assert collate(items).slot == 0  # freed by the copy out
    assert receiver.ordinary == 0 and receiver.through_slots == 2


def test_pinning_thread_marks_the_copies_pinned(as_worker):
    sent = SlotCollate(collate_relations, num_slots=1)([_Fixed()[0]])
    assert pin_memory.pin_memory(sent) is sent and sent.pinned


_DTYPES = [torch.uint8, torch.int8, torch.int64, torch.float16, torch.float32, torch.bool]
_tensors = st.builds(
    lambda shape, dtype, seed, transpose: _random_tensor(shape, dtype, seed, transpose),
    st.lists(st.integers(0, 5), min_size=0, max_size=3),
    st.sampled_from(_DTYPES),
    st.integers(0, 1000),
    st.booleans(),
)
_batches = st.recursive(
    _tensors | st.integers() | st.text(max_size=5) | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _random_tensor(shape, dtype, seed, transpose) -> torch.Tensor:
    values = torch.randint(-100, 100, shape, generator=torch.Generator().manual_seed(seed))
    tensor = values.to(dtype)
    return tensor.transpose(0, -1) if transpose and tensor.dim() > 1 else tensor


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(_batches, min_size=1, max_size=5))
def test_any_batch_structure_crosses_equal(batches):
    worker._worker_info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    try:
        collate, receiver = SlotCollate(lambda items: items[0], num_slots=2), SlotReceiver()
        for batch in batches:
            _, back = _cross(collate, receiver, [batch])
            _assert_same(back, batch)
    finally:
        worker._worker_info = None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_batch_that_travels_the_ordinary_way_is_pinned_too():
    sent = SlotBatch(pid=1, number=1, slot=None, batch={"x": torch.ones(3)})
    assert sent.pin_memory().batch["x"].is_pinned()
