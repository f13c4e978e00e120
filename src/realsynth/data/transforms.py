"""Seeded image + target transforms for relation detection.

While transforms run, a target holds ``boxes`` as float32 ``[N, 4]`` **xyxy in pixels** of the
current image, ``labels`` int64 ``[N]`` and ``relations`` int64 ``[M, 3]`` (subject index, object
index, predicate). :func:`finalize_item` then converts boxes to the dataset contract: cxcywh
normalized to ``[0, 1]`` by the final image size.

Every transform is called as ``t(image, target, rng)`` with a ``numpy.random.Generator`` that the
dataset derives from ``(seed, epoch, index)`` (:func:`item_rng`), so an item gets the same
augmentation whatever the number of DataLoader workers and wherever a run was resumed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from realsynth.utils.box_ops import (
    box_xyxy_to_cxcywh,
    clip_boxes_to_image,
    horizontal_flip_boxes,
    normalize_boxes,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Image.Image | torch.Tensor


class Transform(Protocol):
    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]: ...


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-item generator, a pure function of ``(seed, epoch, index)`` (all >= 0)."""
    if seed < 0 or epoch < 0 or index < 0:
        raise ValueError(
            f"item_rng needs non-negative seed/epoch/index, got {seed}/{epoch}/{index}"
        )
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _image_size(image: ImageLike) -> tuple[int, int]:
    """Returns (width, height) of a PIL image or a [C, H, W] tensor."""
    if isinstance(image, Image.Image):
        return image.size
    return int(image.shape[-1]), int(image.shape[-2])


class Compose:
    """Applies transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    @property
    def max_size(self) -> int | None:
        """The smallest cap on the longer side among the steps (None: no step caps it).

        A dataset decodes its images already reduced to this size
        (:meth:`~realsynth.data.images.RelationDataset.get_item`), so a huge file never exists
        at full size as floats.
        """
        caps = [t.max_size for t in self.transforms if getattr(t, "max_size", None) is not None]
        return min(caps) if caps else None

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _resized_hw(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """DETR's rule: shorter side -> ``size`` unless the longer side would exceed ``max_size``."""
    if max_size is not None:
        short, long = min(width, height), max(width, height)
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if width <= height:
        return int(round(size * height / width)), size
    return size, int(round(size * width / height))


def capped_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so the longer side is at most ``max_size``
    (unchanged when it already is, or when ``max_size`` is None)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _scale_boxes(target: dict[str, Any], old: tuple[int, int], new: tuple[int, int]) -> dict:
    """The target with its xyxy pixel boxes moved from an ``old`` (w, h) image to a ``new`` one."""
    scale = torch.tensor([new[0] / old[0], new[1] / old[1]] * 2, dtype=torch.float32)
    target = dict(target)
    target["boxes"] = clip_boxes_to_image(target["boxes"] * scale, new[0], new[1])
    return target


class LimitSize:
    """Shrinks a PIL image whose longer side exceeds ``max_size`` (aspect kept; boxes scaled
    with it); smaller images are left as they are. Draws nothing from the generator.

    Args:
        max_size: the longest side allowed, in pixels.
    """

    def __init__(self, max_size: int) -> None:
        if int(max_size) <= 0:
            raise ValueError(f"LimitSize max_size must be positive, got {max_size}")
        self.max_size = int(max_size)

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        if not isinstance(image, Image.Image):
            raise TypeError("LimitSize expects a PIL image; put it before ToTensor")
        new = capped_size(*image.size, self.max_size)
        if new == image.size:
            return image, target
        old = image.size
        return image.resize(new, Image.BILINEAR), _scale_boxes(target, old, new)

    def __repr__(self) -> str:
        return f"LimitSize(max_size={self.max_size})"


class RandomResize:
    """Resizes a PIL image so its shorter side is a size drawn from ``sizes``, capped by
    ``max_size`` on the longer side; boxes are scaled with it.

    Args:
        sizes: candidate shorter-side lengths in pixels (one is drawn per item).
        max_size: optional cap on the longer side in pixels.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"RandomResize sizes must be non-empty positive ints, got {sizes!r}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"RandomResize max_size must be positive, got {max_size}")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        if not isinstance(image, Image.Image):
            raise TypeError("RandomResize expects a PIL image; put it before ToTensor")
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        width, height = image.size
        new_h, new_w = _resized_hw(width, height, size, self.max_size)
        if (new_w, new_h) == (width, height):
            return image, target
        image = image.resize((new_w, new_h), Image.BILINEAR)
        return image, _scale_boxes(target, (width, height), (new_w, new_h))

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirrors the image with probability ``p``; boxes are mirrored and predicates remapped.

    Args:
        p: flip probability in [0, 1].
        predicate_flip_map: 0-based predicate index -> index after a flip (e.g. "left of" ->
            "right of"); predicates not in the map keep their index. Build it from names with
            :func:`predicate_flip_indices`.
    """

    def __init__(self, p: float = 0.5, predicate_flip_map: Mapping[int, int] | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = float(p)
        self.predicate_flip_map = dict(predicate_flip_map or {})
        for a, b in self.predicate_flip_map.items():
            if self.predicate_flip_map.get(b, b) != a:
                raise ValueError(
                    f"predicate_flip_map must be its own inverse: {a}->{b} but {b}->"
                    f"{self.predicate_flip_map.get(b, b)}"
                )

    def _remap(self, relations: torch.Tensor) -> torch.Tensor:
        if not self.predicate_flip_map or relations.numel() == 0:
            return relations
        size = max(int(relations[:, 2].max()), *self.predicate_flip_map.keys()) + 1
        table = torch.arange(size, dtype=torch.int64)
        for a, b in self.predicate_flip_map.items():
            table[a] = b
        out = relations.clone()
        out[:, 2] = table[relations[:, 2]]
        return out

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        # Always draw so the stream consumed per item does not depend on p.
        if rng.random() >= self.p:
            return image, target
        width, _ = _image_size(image)
        if isinstance(image, Image.Image):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = image.flip(-1)
        target = dict(target)
        target["boxes"] = horizontal_flip_boxes(target["boxes"], width)
        target["relations"] = self._remap(target["relations"])
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, predicate_flip_map={self.predicate_flip_map})"


class ToTensor:
    """PIL RGB image -> float32 ``[3, H, W]`` in [0, 1]."""

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        return to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


class ToUint8Tensor:
    """PIL RGB image -> uint8 ``[3, H, W]``, its normalization left to the training device.

    The target gets ``pixel_stats``: the (mean, std) that
    :func:`~realsynth.data.batch_transport.batch_images` applies on the device after scaling to
    [0, 1] (None: scaling only). A quarter of the bytes of float32 cross from a loader worker.
    """

    def __init__(self, pixel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> None:
        self.pixel_stats = pixel_stats

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        if isinstance(image, torch.Tensor):
            raise TypeError("ToUint8Tensor takes a PIL image; this pipeline already made a tensor")
        array = np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array).permute(2, 0, 1), {**target, "pixel_stats": self.pixel_stats}

    def __repr__(self) -> str:
        return f"ToUint8Tensor(pixel_stats={self.pixel_stats})"


class Normalize:
    """Standardizes a ``[3, H, W]`` tensor per channel: ``(x - mean) / std``."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs 3 means and 3 positive stds, got {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(
        self, image: ImageLike, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[ImageLike, dict[str, Any]]:
        return (to_tensor(image) - self.mean) / self.std, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def to_tensor(image: ImageLike) -> torch.Tensor:
    """PIL image (any mode) or tensor -> float32 ``[3, H, W]``; PIL pixels scaled to [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image
    array = np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def finalize_item(image: ImageLike, target: dict[str, Any]) -> dict[str, Any]:
    """Turns a transformed (image, target) into a dataset item.

    Returns:
        The target plus ``image`` float ``[3, H, W]``, ``boxes`` float ``[N, 4]`` cxcywh
        normalized by the final ``(W, H)``, and ``size`` int64 ``[2]`` = (H, W).
    """
    tensor = to_tensor(image)
    height, width = int(tensor.shape[-2]), int(tensor.shape[-1])
    boxes = clip_boxes_to_image(target["boxes"].to(torch.float32), width, height)
    cxcywh = normalize_boxes(box_xyxy_to_cxcywh(boxes), width, height)
    item = dict(target)
    item["image"] = tensor
    item["boxes"] = cxcywh
    item["size"] = torch.tensor([height, width], dtype=torch.int64)
    return item


def predicate_flip_indices(
    name_map: Mapping[str, str], predicates: Sequence[str]
) -> dict[int, int]:
    """Translates a flip map given by predicate name into 0-based indices of one dataset.

    Args:
        name_map: e.g. ``{"left of": "right of", "right of": "left of"}``.
        predicates: the dataset's predicate names in index order.

    Raises:
        ValueError: a name is not one of ``predicates``.
    """
    index = {name: i for i, name in enumerate(predicates)}
    unknown = sorted({n for pair in name_map.items() for n in pair if n not in index})
    if unknown:
        raise ValueError(
            f"predicate_flip_map names {unknown} are not predicates of this dataset "
            f"(known: {list(predicates)})"
        )
    return {index[a]: index[b] for a, b in name_map.items()}


def build_transforms(
    *,
    train: bool,
    min_sizes: Sequence[int],
    max_size: int | None,
    flip_prob: float = 0.5,
    predicate_flip_map: Mapping[int, int] | None = None,
    normalize: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    uint8: bool = False,
) -> Compose:
    """Standard pipeline: (train) flip + random resize; (eval) resize to ``min_sizes[-1]``.

    Args:
        train: whether to add random augmentation.
        min_sizes: shorter-side sizes in pixels; eval uses the last one; empty keeps every
            image at its native size (small synthetic renders, the demo data) up to
            ``max_size``.
        max_size: cap on the longer side in pixels, applied to every image, native sizes
            included (None: no cap). The pipeline's :attr:`Compose.max_size` tells a dataset
            to decode large images already reduced.
        flip_prob: horizontal flip probability (train only).
        predicate_flip_map: 0-based predicate index map applied on flips
            (see :func:`predicate_flip_indices`).
        normalize: append :class:`Normalize`; without it images stay in [0, 1].
        uint8: end with :class:`ToUint8Tensor` instead: uint8 images whose scaling and
            normalization (``mean`` / ``std`` when ``normalize``) happen on the training device
            (:func:`~realsynth.data.batch_transport.batch_images`), with the same result.
    """
    steps: list[Transform] = []
    sizes = list(min_sizes)
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob, predicate_flip_map))
    if sizes:
        steps.append(RandomResize(sizes if train else sizes[-1:], max_size))
    elif max_size is not None:
        steps.append(LimitSize(max_size))
    if uint8:
        steps.append(ToUint8Tensor((tuple(mean), tuple(std)) if normalize else None))
    else:
        steps.append(ToTensor())
        if normalize:
            steps.append(Normalize(mean, std))
    return Compose(steps)
