"""Batches cross from loader workers as uint8 pixels and packed targets, and arrive as they were:
device-side normalization equals the CPU's bit for bit, and unpickled targets equal the
originals field for field."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reductions)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from realsynth.data.batch_transport import TargetList, batch_images, pack_targets
from realsynth.data.collate import collate_relations
from realsynth.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def _image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _items(sizes, *, uint8: bool, normalize: bool, stats) -> list[dict]:
    transforms = build_transforms(
        train=False, min_sizes=[], max_size=None, normalize=normalize, uint8=uint8, **stats
    )
    rng = np.random.default_rng(0)
    items = []
    for k, (w, h) in enumerate(sizes):
        target = {"boxes": torch.tensor([[1.0, 1.0, 2.0, 2.0]]), "labels": torch.tensor([k])}
        image, target = transforms(_image(rng, w, h), target, rng)
        items.append({**target, "image": image, "relations": torch.zeros(0, 3, dtype=torch.int64)})
    return items


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    normalize=st.booleans(),
    imagenet=st.booleans(),
)
def test_uint8_batches_normalized_on_the_device_equal_float_batches(sizes, normalize, imagenet):
    stats = {} if imagenet else {"mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.7]}
    floats = collate_relations(_items(sizes, uint8=False, normalize=normalize, stats=stats))
    small = collate_relations(_items(sizes, uint8=True, normalize=normalize, stats=stats))
    assert small["images"].dtype == torch.uint8 and floats["images"].dtype == torch.float32
    expected = (tuple(stats.get("mean", IMAGENET_MEAN)), tuple(stats.get("std", IMAGENET_STD)))
    assert small["pixel_stats"] == (expected if normalize else None)
    ours = batch_images(small, "cpu")
    assert ours.dtype == torch.float32
    assert torch.equal(ours, floats["images"])  # bit for bit, the padding's zeros included
    assert not torch.signbit(ours[small["pixel_mask"][:, None].expand_as(ours)]).any()
    assert "pixel_stats" not in small["targets"][0]


def test_float_batches_pass_through_unchanged():
    batch = collate_relations(_items([(3, 4)], uint8=False, normalize=True, stats={}))
    assert batch["pixel_stats"] is None
    assert torch.equal(batch_images(batch, "cpu"), batch["images"])


def _targets(count: int) -> TargetList:
    return TargetList(
        {
            "boxes": torch.rand(k + 1, 4),
            "labels": torch.arange(k + 1),
            "relations": torch.zeros(k % 2, 3, dtype=torch.int64),
            "orig_size": torch.tensor([10 + k, 20]),
            "loss_weight": 0.5 * k,
            "image_id": k,
            "file_name": f"{k}.jpg",
            "step": torch.tensor(k),  # 0-d
            **({"box_weights": torch.ones(k + 1)} if k % 2 else {}),  # only some targets
        }
        for k in range(count)
    )


def test_targets_pickle_packed_and_unpickle_equal():
    targets = _targets(5)
    packed, rest, count = pack_targets(list(targets))
    assert set(packed) == {"boxes", "labels", "relations", "orig_size", "step"}
    assert count == 5 and all("boxes" not in r for r in rest) and "box_weights" in rest[1]
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(targets)
    back = pickle.loads(buffer.getvalue())
    assert isinstance(back, TargetList) and len(back) == 5
    for ours, theirs in zip(back, targets):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
            else:
                assert ours[key] == value, key
    # Views of one packed tensor per field: the batch's boxes share one storage.
    storages = {t["boxes"].untyped_storage().data_ptr() for t in back}
    assert len(storages) == 1


class _Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        items = _items(
            [(int(rng.integers(2, 9)), int(rng.integers(2, 9)))],
            uint8=True,
            normalize=True,
            stats={},
        )
        return {**items[0], "image_id": index}


def test_a_loader_with_workers_delivers_what_one_without_does():
    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(
            _Items(), batch_size=4, num_workers=workers, collate_fn=collate_relations
        )
        return list(loader)

    for ours, theirs in zip(batches(2), batches(0)):
        assert torch.equal(batch_images(ours, "cpu"), batch_images(theirs, "cpu"))
        assert [t["image_id"] for t in ours["targets"]] == [
            t["image_id"] for t in theirs["targets"]
        ]
        for a, b in zip(ours["targets"], theirs["targets"]):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
