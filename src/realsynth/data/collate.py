"""Batch collation for relation datasets: padded images, a padding mask and target dicts."""

from __future__ import annotations

from typing import Any

import torch

from realsynth.data.batch_transport import Allocate, TargetList, new_batch_tensor
from realsynth.data.images import SkippedSample


def collate_relations(
    items: list[dict[str, Any] | SkippedSample | None], allocate: Allocate | None = None
) -> dict[str, Any]:
    """Collates dataset items into a batch (use as a DataLoader's ``collate_fn``).

    :class:`SkippedSample` items (bad images skipped by a dataset with ``skip_bad_samples=True``)
    and ``None`` items (the same from a third-party dataset) are dropped, counted in
    ``num_skipped`` and, when named, listed in ``skipped``.

    Args:
        items: dicts with ``image`` float or uint8 [3, H_i, W_i] and target keys (``boxes`` cxcywh
            normalized, ``labels``, ``relations``, ``image_id``, ``orig_size``, ...); optional
            ``loss_weight`` (default 1.0), ``source_id`` (default 0), ``dataset_type`` (default
            "real") and ``source`` (default "").
        allocate: makes the zeroed ``images`` and ``pixel_mask`` tensors, ``(shape, dtype) ->
            tensor`` (a loader worker's slot: :class:`~realsynth.data.slot_loader.SlotDataLoader`);
            default :func:`~realsynth.data.batch_transport.new_batch_tensor`.

    Returns:
        ``images`` [B, 3, H, W] of the items' dtype, zero-padded at the bottom/right to the
        largest item (uint8 images: :func:`~realsynth.data.batch_transport.batch_images` makes
        them the model's floats, with ``pixel_stats``, the items' shared normalization);
        ``pixel_mask`` bool [B, H, W], True on padding; ``targets`` list of B dicts holding every
        key but ``image`` (with the defaults above filled in); ``loss_weights`` float32 [B];
        ``source_ids`` int64 [B]; ``num_skipped`` int; ``skipped`` list of ``source/file_name``
        of the named skipped items. ``targets`` is a :class:`TargetList`: sent from a loader
        worker, its tensors travel packed, one per field for the whole batch.
    """
    kept = [item for item in items if item is not None and not isinstance(item, SkippedSample)]
    skipped = [item.key for item in items if isinstance(item, SkippedSample)]
    num_skipped = len(items) - len(kept)
    if not kept:
        return _empty_batch(num_skipped, skipped)
    _check_images(kept)
    images, pixel_mask = _pad_images([item["image"] for item in kept], allocate or new_batch_tensor)
    pixel_stats = _pixel_stats(kept)
    targets = TargetList()
    for item in kept:
        target = {k: v for k, v in item.items() if k not in ("image", "pixel_stats")}
        target.setdefault("loss_weight", 1.0)
        target.setdefault("source_id", 0)
        target.setdefault("dataset_type", "real")
        target.setdefault("source", "")
        targets.append(target)
    return {
        "images": images,
        "pixel_mask": pixel_mask,
        "pixel_stats": pixel_stats,
        "targets": targets,
        "loss_weights": torch.tensor(
            [float(t["loss_weight"]) for t in targets], dtype=torch.float32
        ),
        "source_ids": torch.tensor([int(t["source_id"]) for t in targets], dtype=torch.int64),
        "num_skipped": num_skipped,
        "skipped": skipped,
    }


def _empty_batch(num_skipped: int, skipped: list[str]) -> dict[str, Any]:
    """The batch of a step whose every item was skipped (the loop takes no step on it)."""
    return {
        "images": torch.zeros(0, 3, 0, 0),
        "pixel_mask": torch.zeros(0, 0, 0, dtype=torch.bool),
        "pixel_stats": None,
        "targets": TargetList(),
        "loss_weights": torch.zeros(0),
        "source_ids": torch.zeros(0, dtype=torch.int64),
        "num_skipped": num_skipped,
        "skipped": skipped,
    }


def _pixel_stats(items: list[dict[str, Any]]) -> Any:
    """The normalization every uint8 item leaves to the device (one for the whole batch)."""
    found = {item.get("pixel_stats") for item in items}
    if len(found) > 1:
        raise ValueError(
            f"collate_relations: items disagree on pixel_stats: {sorted(map(str, found))}"
        )
    return found.pop()


def _check_images(items: list[dict[str, Any]]) -> None:
    """Every item's ``image`` is a [3, H, W] tensor (names the first that is not)."""
    for i, item in enumerate(items):
        image = item.get("image")
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"collate_relations: item {i} 'image' must be a [3, H, W] tensor, got {shape}"
            )
        if image.dtype != items[0]["image"].dtype:
            raise ValueError(
                f"collate_relations: item {i} 'image' is {image.dtype}, item 0's is "
                f"{items[0]['image'].dtype}: one batch holds one pixel type"
            )


def _pad_images(
    images: list[torch.Tensor], allocate: Allocate
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [3, H_i, W_i] -> (zero-padded [B, 3, H, W], pixel_mask bool [B, H, W], True on
    padding), padded at the bottom/right to the largest height and width."""
    height = max(int(image.shape[1]) for image in images)
    width = max(int(image.shape[2]) for image in images)
    batch = allocate((len(images), 3, height, width), images[0].dtype)
    pixel_mask = allocate((len(images), height, width), torch.bool).fill_(True)
    for i, image in enumerate(images):
        h, w = image.shape[1:]
        batch[i, :, :h, :w] = image
        pixel_mask[i, :h, :w] = False
    return batch, pixel_mask


def target_to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated target dict with its tensors on ``device`` (other values unchanged)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
