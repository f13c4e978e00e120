"""collate_relations: padding, mask, weights, source ids, skipped items."""

from __future__ import annotations

import pytest
import torch

from realsynth.data.collate import collate_relations


def item(h: int, w: int, value: float, **extra) -> dict:
    return {
        "image": torch.full((3, h, w), value),
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
        "labels": torch.tensor([1]),
        "relations": torch.zeros(0, 3, dtype=torch.int64),
        "image_id": int(value),
        **extra,
    }


def test_pads_to_largest_and_masks_padding() -> None:
    batch = collate_relations(
        [item(4, 5, 1.0), item(6, 2, 2.0, loss_weight=0.5, source_id=1, dataset_type="synthetic")]
    )
    images, mask = batch["images"], batch["pixel_mask"]
    assert images.shape == (2, 3, 6, 5) and mask.shape == (2, 6, 5)
    assert torch.all(images[0, :, :4, :5] == 1.0) and torch.all(images[0, :, 4:] == 0)
    assert torch.all(images[1, :, :, :2] == 2.0) and torch.all(images[1, :, :, 2:] == 0)
    assert mask[0].sum() == 6 * 5 - 4 * 5 and not mask[0, :4, :5].any()
    assert mask[1].sum() == 6 * 5 - 6 * 2 and not mask[1, :, :2].any()
    assert batch["loss_weights"].tolist() == [1.0, 0.5]
    assert batch["source_ids"].tolist() == [0, 1] and batch["source_ids"].dtype == torch.int64
    assert "image" not in batch["targets"][0]
    assert (
        batch["targets"][0]["dataset_type"] == "real"
        and batch["targets"][1]["dataset_type"] == "synthetic"
    )
    assert batch["targets"][1]["image_id"] == 2 and batch["num_skipped"] == 0


def test_none_items_are_dropped_and_counted() -> None:
    batch = collate_relations([None, item(3, 3, 1.0), None])
    assert batch["images"].shape == (1, 3, 3, 3) and batch["num_skipped"] == 2
    empty = collate_relations([None])
    assert empty["images"].shape[0] == 0 and empty["targets"] == [] and empty["num_skipped"] == 1


def test_rejects_non_image_tensor() -> None:
    with pytest.raises(ValueError, match=r"item 0 'image' must be a \[3, H, W\] tensor"):
        collate_relations([{"image": torch.zeros(4, 4)}])
