"""Image loading with clear errors, and the dataset base class shared by every format.

A format (relcoco, VG150) only says where an item's image is and what its annotation is
(:meth:`RelationDataset.annotation`); this base turns that into a dataset item: it loads the image,
applies the seeded transforms and converts boxes to the contract (cxcywh normalized to [0, 1]).

Bad samples: the format's rules run when a dataset is built (see :mod:`realsynth.data.problems`),
so a missing file or a box outside its image stops the run before it starts, or, with
``skip_bad_samples=True``, leaves the image out (listed in ``skipped``). What only shows when the
pixels are read (a corrupt file, a size that disagrees with the annotation) raises
:class:`BadSampleError` naming the file and the source; with ``skip_bad_samples=True`` the item is
a :class:`SkippedSample` instead, which :func:`realsynth.data.collate.collate_relations` drops and
names in the batch's ``skipped`` list so the trainer can report every distinct file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from realsynth.data.transforms import Transform, capped_size, finalize_item, item_rng

#: Modes ``Image.reduce`` works in directly (the others are converted to RGB first).
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK", "YCbCr"})


class BadSampleError(ValueError):
    """An item whose image is missing, unreadable or inconsistent with its annotation."""


@dataclass(frozen=True)
class SkippedSample:
    """An item left out (``skip_bad_samples``): which source, which file, and why.

    Attributes:
        source: the dataset's source name.
        file_name: the image file, as the annotation names it.
        reason: the problem found (a :class:`~realsynth.data.problems.Problem` at construction,
            the error's text when the pixels could not be read).
    """

    source: str
    file_name: str
    reason: object

    @property
    def key(self) -> str:
        """``source/file_name``: one name per distinct file, however often it is drawn."""
        return f"{self.source}/{self.file_name}"


def load_image(path: str | Path, *, source: str, max_size: int | None = None) -> Image.Image:
    """Opens an image file as RGB, its longer side reduced to ``max_size`` when larger (see
    :func:`decode_image`).

    Raises:
        BadSampleError: the file is missing or cannot be decoded; names the file and source.
    """
    return decode_image(path, source=source, max_size=max_size)[0]


def decode_image(
    path: str | Path | BinaryIO,
    *,
    source: str,
    max_size: int | None = None,
    name: str | Path | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes an image file as RGB, reduced while it is decoded when its longer side exceeds
    ``max_size``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``), any other format
    is shrunk by an integer factor (``Image.reduce``) before it is converted or resized, so a
    huge file never exists at full size in RGB floats (nor, for a JPEG, at all).

    Args:
        path: the image file, or a binary file object holding one (an image in a shard).
        source: the dataset's source name, for error messages.
        max_size: the longest side wanted, in pixels (None: the file's own size).
        name: the image as error messages name it (default: ``path``).

    Returns:
        (the RGB image, its longer side at most ``max_size``; the file's (width, height)).

    Raises:
        BadSampleError: the file is missing or cannot be decoded; names the file and source.
    """
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            size = image.size
            wanted = capped_size(*size, max_size)
            if wanted == size:
                return image.convert("RGB"), size
            return _reduced(image, wanted), size
    except FileNotFoundError as exc:
        raise BadSampleError(f"source '{source}': image file not found: {name}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadSampleError(f"source '{source}': cannot read image {name}: {exc}") from exc


def _reduced(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` (open, not yet loaded) decoded straight down to RGB of ``size`` (w, h)."""
    image.draft("RGB", size)  # JPEG: the smallest DCT scale still >= size; others: no-op
    image.load()
    factor = min(image.width // size[0], image.height // size[1])
    if factor >= 2:
        if image.mode in REDUCIBLE_MODES:
            image = image.reduce(factor)
        else:  # palette, bilevel, 16-bit: converted first (at full size, 1-3 bytes a pixel)
            image = image.convert("RGB").reduce(factor)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image.resize(size, Image.BILINEAR) if image.size != size else image


class RelationDataset(torch.utils.data.Dataset, abc.ABC):
    """Base of the relation datasets: seeded per-item transforms and bad-sample handling.

    Args:
        source: name used in error messages and in the items' ``source`` field.
        transforms: called as ``t(image, target, rng)``; None keeps the image as is.
        seed: base of the per-item generator ``item_rng(seed, epoch, index)``.
        skip_bad_samples: return a :class:`SkippedSample` for an item whose image is bad instead
            of raising (a format also leaves out images its rules reject).
    """

    #: When the file's size differs from the annotated one: False raises, True rescales the boxes
    #: (Scene-Graph-Benchmark's VG behaviour, whose image_data.json has a few wrong sizes).
    rescale_on_size_mismatch = False

    def __init__(
        self,
        *,
        source: str,
        transforms: Transform | None,
        seed: int,
        skip_bad_samples: bool,
    ) -> None:
        self.source = source
        self.transforms = transforms
        self.seed = int(seed)
        self.epoch = 0
        self.skip_bad_samples = skip_bad_samples
        #: Images left out when the dataset was built (``skip_bad_samples``), in file order.
        self.skipped: list[SkippedSample] = []

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose augmentations ``__getitem__`` draws."""
        self.epoch = int(epoch)

    @abc.abstractmethod
    def image_path(self, index: int) -> Path:
        """Path of item ``index``'s image file."""

    def image_file(self, index: int) -> Path | BinaryIO:
        """What item ``index``'s pixels are decoded from: its file's path (a format that keeps
        images inside bigger files returns a binary file object)."""
        return self.image_path(index)

    @abc.abstractmethod
    def annotation(self, index: int) -> dict[str, Any]:
        """Annotation of one image without reading pixels.

        Returns:
            ``boxes`` float32 [N, 4] xyxy in pixels of the annotated size, ``labels`` int64 [N]
            (0-based), ``relations`` int64 [M, 3] (subject, object, 0-based predicate),
            ``image_id``, ``orig_size`` int64 [2] annotated (h, w), ``file_name``, ``source``;
            optionally ``eval_boxes`` float32 [N, 4], the boxes as the format's reference code
            evaluates them (default: ``boxes``).
        """

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64 [C] objects per class, int64 [R] relations per predicate) of the dataset's
        annotations, as they are before per-item sampling (formats answer from their index)."""
        objects = np.zeros(len(self.classes), dtype=np.int64)
        relations = np.zeros(len(self.predicates), dtype=np.int64)
        for index in range(len(self)):
            ann = self.annotation(index)
            objects += np.bincount(ann["labels"].numpy(), minlength=len(objects))
            relations += np.bincount(ann["relations"][:, 2].numpy(), minlength=len(relations))
        return objects, relations

    def sample_annotation(self, target: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Per-item random choices on the annotation itself (none by default)."""
        return target

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        return self.get_item(index, item_rng(self.seed, self.epoch, index))

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any] | SkippedSample:
        """Loads item ``index`` using ``rng`` for its augmentation (a mixing dataset passes one
        derived from its global index).

        Returns:
            ``image`` float [3, H, W] (in [0, 1] unless the transforms normalize), ``boxes`` float
            [N, 4] cxcywh normalized, ``labels``, ``relations``, ``image_id``, ``orig_size`` (h, w)
            of the file, ``size`` (h, w) after transforms, ``eval_boxes`` xyxy pixels and
            ``eval_size`` (h, w) of the annotated frame, ``file_name``, ``source``; or a
            :class:`SkippedSample` for a bad image when ``skip_bad_samples`` is on.
        """
        try:
            image, target = self._load(index)
        except BadSampleError as exc:
            if self.skip_bad_samples:
                return SkippedSample(self.source, self.annotation(index)["file_name"], str(exc))
            raise
        target = self.sample_annotation(target, rng)
        if self.transforms is not None:
            image, target = self.transforms(image, target, rng)
        return finalize_item(image, target)

    def _load(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        target = self.annotation(index)
        # The frame evaluation compares boxes in (SGB: the annotated size), whatever the file's
        # actual size and the transforms do to ``boxes``.
        target.setdefault("eval_boxes", target["boxes"].clone())
        target["eval_size"] = target["orig_size"].clone()
        path = self.image_path(index)
        # Large files are reduced while decoded to the transforms' cap (INPUT.MAX_SIZE_*).
        max_size = getattr(self.transforms, "max_size", None)
        image, (width, height) = decode_image(
            self.image_file(index), source=self.source, max_size=max_size, name=path
        )
        ann_h, ann_w = (int(v) for v in target["orig_size"])
        if (ann_h, ann_w) != (height, width):
            if not self.rescale_on_size_mismatch:
                raise BadSampleError(
                    f"source '{self.source}': image {path} is {width}x{height} (w x h) but its "
                    f"annotation says {ann_w}x{ann_h}"
                )
            scale = torch.tensor([width / ann_w, height / ann_h] * 2, dtype=torch.float32)
            target["boxes"] = target["boxes"] * scale
        target["orig_size"] = torch.tensor([height, width], dtype=torch.int64)
        if image.size != (width, height):  # decoded reduced: boxes follow the pixels
            scale = [image.width / width, image.height / height] * 2
            target["boxes"] = target["boxes"] * torch.tensor(scale, dtype=torch.float32)
        return image, target
