"""Transforms: hand-computed box geometry, flip map, resize rule, seeded randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from realsynth.data.demo import DEMO_PREDICATES, demo_predicate_flip_map
from realsynth.data.transforms import (
    IMAGENET_MEAN,
    RandomHorizontalFlip,
    RandomResize,
    build_transforms,
    finalize_item,
    item_rng,
    predicate_flip_indices,
)


def target(boxes: list[list[float]], relations: list[list[int]] | None = None) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "relations": torch.tensor(relations or [], dtype=torch.int64).reshape(-1, 3),
    }


def test_finalize_converts_to_normalized_cxcywh() -> None:
    item = finalize_item(Image.new("RGB", (100, 50)), target([[10, 5, 30, 25], [-5, 0, 120, 60]]))
    assert torch.allclose(item["boxes"][0], torch.tensor([0.2, 0.3, 0.2, 0.4]))
    assert torch.allclose(item["boxes"][1], torch.tensor([0.5, 0.5, 1.0, 1.0]))  # clipped
    assert item["size"].tolist() == [50, 100] and item["image"].shape == (3, 50, 100)


def test_flip_mirrors_boxes_pixels_and_predicates() -> None:
    pixels = np.zeros((10, 100, 3), dtype=np.uint8)
    pixels[:, 10:30] = 255
    flip = RandomHorizontalFlip(1.0, {0: 1, 1: 0})
    image, out = flip(
        Image.fromarray(pixels),
        target([[10, 0, 30, 10]], [[0, 0, 0], [0, 0, 1], [0, 0, 2]]),
        item_rng(0, 0, 0),
    )
    assert out["boxes"].tolist() == [[70, 0, 90, 10]]
    assert out["relations"][:, 2].tolist() == [1, 0, 2]
    flipped = np.asarray(image)
    assert flipped[:, 70:90].min() == 255 and flipped[:, :70].max() == 0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 60), st.floats(0, 40), st.floats(0, 40), st.floats(0, 20)),
        min_size=1,
        max_size=5,
    )
)
def test_double_flip_is_identity(raw: list[tuple[float, float, float, float]]) -> None:
    boxes = [[x, y, x + w, y + h] for x, y, w, h in raw]
    flip = RandomHorizontalFlip(1.0, {0: 1, 1: 0})
    start = target(boxes, [[0, 0, 0], [0, 0, 2]])
    image, once = flip(Image.new("RGB", (100, 60)), start, item_rng(0, 0, 0))
    _, twice = flip(image, once, item_rng(0, 0, 1))
    assert torch.allclose(twice["boxes"], start["boxes"], atol=1e-4)
    assert torch.equal(twice["relations"], start["relations"])


def test_flip_map_by_name() -> None:
    indices = predicate_flip_indices(demo_predicate_flip_map(), DEMO_PREDICATES)
    left, right = DEMO_PREDICATES.index("left of"), DEMO_PREDICATES.index("right of")
    assert indices == {left: right, right: left}
    with pytest.raises(ValueError, match="'beside'"):
        predicate_flip_indices({"beside": "left of"}, DEMO_PREDICATES)
    with pytest.raises(ValueError, match="own inverse"):
        RandomHorizontalFlip(0.5, {0: 1, 1: 2})


def test_resize_rule_and_box_scaling() -> None:
    image, out = RandomResize([25])(
        Image.new("RGB", (100, 50)), target([[10, 10, 20, 40]]), item_rng(0, 0, 0)
    )
    assert image.size == (50, 25) and out["boxes"].tolist() == [[5, 5, 10, 20]]
    # 40 on the short side would make the long side 80 > 60: capped to 60 x 30.
    image, _ = RandomResize([40], max_size=60)(
        Image.new("RGB", (100, 50)), target([[0, 0, 1, 1]]), item_rng(0, 0, 0)
    )
    assert image.size == (60, 30)


def test_item_rng_is_pure_and_validated() -> None:
    assert item_rng(1, 2, 3).random() == item_rng(1, 2, 3).random()
    assert item_rng(1, 2, 3).random() != item_rng(1, 3, 3).random()
    with pytest.raises(ValueError, match="non-negative"):
        item_rng(-1, 0, 0)


def test_normalize_only_when_asked() -> None:
    gray = Image.new("RGB", (8, 8), (255, 255, 255))
    plain, _ = build_transforms(train=False, min_sizes=[8], max_size=None)(
        gray, target([[0, 0, 1, 1]]), item_rng(0, 0, 0)
    )
    assert torch.all(plain == 1.0)
    norm, _ = build_transforms(train=False, min_sizes=[8], max_size=None, normalize=True)(
        gray, target([[0, 0, 1, 1]]), item_rng(0, 0, 0)
    )
    assert torch.allclose(
        norm[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_empty_min_sizes_keeps_the_native_size_and_still_flips():
    image = Image.new("RGB", (40, 30))
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 30.0]]),
        "labels": torch.tensor([0]),
        "relations": torch.zeros((0, 3), dtype=torch.int64),
    }
    t = build_transforms(train=True, min_sizes=[], max_size=None, flip_prob=1.0)
    out, flipped = t(image, dict(target), np.random.default_rng(0))
    assert tuple(out.shape) == (3, 30, 40)
    assert flipped["boxes"].tolist() == [[30.0, 0.0, 40.0, 30.0]]
    out, same = build_transforms(train=False, min_sizes=[], max_size=None)(
        image, dict(target), np.random.default_rng(0)
    )
    assert tuple(out.shape) == (3, 30, 40)
    assert same["boxes"].tolist() == [[0.0, 0.0, 10.0, 30.0]]
