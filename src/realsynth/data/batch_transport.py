"""What a batch costs between a loader worker and the training process, and making it small.

A DataLoader worker hands its batch to the training process by pickling it; every tensor becomes
a shared-memory block and a file descriptor. A batch of 32 images with seven small annotation
tensors each made 228 of them, and float32 pixels are four times the bytes of the decoded image.
Two measures fix that, invisibly to the code that reads batches:

- images travel as uint8 ``[B, 3, H, W]`` (the transforms stop before the float conversion) and
  become floats on the training device (:func:`batch_images`), normalized there with the
  ``pixel_stats`` the batch carries: the same arithmetic as on the CPU, bit for bit;
- :class:`TargetList` pickles a batch's targets as one tensor per field for the whole batch
  plus the lengths, and unpickles them as per-image views of those tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

#: (mean, std) per RGB channel, on the [0, 1] scale, or None for no normalization.
PixelStats = tuple[tuple[float, float, float], tuple[float, float, float]] | None


def batch_images(batch: dict[str, Any], device: torch.device | str) -> torch.Tensor:
    """The batch's images on ``device`` as float ``[B, 3, H, W]``, as the model takes them.

    uint8 images are scaled to [0, 1] and, when the batch has ``pixel_stats``, standardized
    ``(x - mean) / std`` per channel on ``device``; the padding (``pixel_mask`` True) is 0, as
    it is for images that travel as floats. Float images are moved as they are.
    """
    images = batch["images"].to(device, non_blocking=True)
    if images.dtype != torch.uint8:
        return images
    pixels = images.float().div_(255.0)
    stats = batch.get("pixel_stats")
    if stats is None:
        return pixels  # the padding is 0 / 255 = 0 already
    mean, std = (
        torch.tensor(v, dtype=torch.float32, device=pixels.device).view(3, 1, 1) for v in stats
    )
    pixels = (pixels - mean) / std
    mask = batch["pixel_mask"].to(pixels.device, non_blocking=True)
    return pixels.masked_fill_(mask[:, None], 0.0)


def new_batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed tensor for a batch: in shared memory when made in a loader worker, so that
    sending it to the training process moves a file descriptor instead of copying the pixels
    once more (what ``default_collate`` does for the tensors it stacks)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    numel = 1
    for size in shape:
        numel *= size
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape).zero_()


class TargetList(list):
    """A batch's target dicts that pickle as a few packed tensors.

    On pickling (a loader worker sending the batch), every field that is a tensor in every
    target, with one dtype and one trailing shape, is concatenated along its first dimension for
    the whole batch (0-d tensors are stacked); the rest (ids, names, optional fields some targets
    lack) travel as they are. Unpickled, each target's tensors are views of the packed ones:
    one shared-memory block per field instead of one per field per image.
    """

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return unpack_targets, pack_targets(list(self))


#: ``(shape, dtype) -> zeroed tensor``: where a batch's tensors are made.
Allocate = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def pack_targets(
    targets: list[dict[str, Any]], allocate: Allocate | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """(packed fields {key: (tensor, lengths or None)}, per-target rest, count); the packed
    tensors are made by ``allocate`` (default :func:`new_batch_tensor`)."""
    allocate = new_batch_tensor if allocate is None else allocate
    packed: dict[str, Any] = {}
    keys = set(targets[0]) if targets else set()
    for target in targets[1:]:
        keys &= set(target)
    for key in sorted(keys):
        values = [t[key] for t in targets]
        if not all(isinstance(v, torch.Tensor) for v in values):
            continue
        first = values[0]
        if any(v.dtype != first.dtype or v.shape[1:] != first.shape[1:] for v in values):
            continue
        if any(v.dim() != first.dim() for v in values):
            continue
        if first.dim() == 0:
            packed[key] = (torch.stack(values), None)
        else:
            lengths = [int(v.shape[0]) for v in values]
            out = allocate((sum(lengths), *first.shape[1:]), first.dtype)
            packed[key] = (torch.cat(values, out=out), lengths)
    rest = [{k: v for k, v in t.items() if k not in packed} for t in targets]
    return packed, rest, len(targets)


def unpack_targets(packed: dict[str, Any], rest: list[dict[str, Any]], count: int) -> TargetList:
    targets = [dict(r) for r in rest]
    for key, (tensor, lengths) in packed.items():
        for target, view in zip(targets, _views(tensor, lengths, count)):
            target[key] = view
    return TargetList(targets)


def _views(tensor: torch.Tensor, lengths: list[int] | None, count: int) -> Iterable[torch.Tensor]:
    if lengths is None:
        return (tensor[i] for i in range(count))
    return torch.split(tensor, lengths)
