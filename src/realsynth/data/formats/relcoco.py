"""relcoco: COCO detection JSON plus ``predicates`` and ``relationships``.

File layout::

    {"images": [{"id", "file_name", "width", "height"}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h] (pixels)}],
     "categories": [{"id", "name"}],
     "predicates": [{"id", "name"}],
     "relationships": [{"image_id", "subject_id", "object_id", "predicate_id"}]}

``subject_id`` / ``object_id`` are annotation ids. Category and predicate ids map to contiguous
0-based indices in increasing id order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realsynth.data.formats.relcoco_cache import load_cached_index, save_cached_index
from realsynth.data.formats.relcoco_fast import CleanRelCoco, read_clean_relcoco
from realsynth.data.formats.relcoco_rules import (
    REQUIRED_KEYS,
    RelCocoIndex,
    image_location,
    index_relcoco,
)
from realsynth.data.formats.relcoco_trust import InstanceTrust
from realsynth.data.image_files import ImageEntry, check_image_files, list_files
from realsynth.data.images import RelationDataset, SkippedSample
from realsynth.data.problems import DatasetProblems, raise_or_skip
from realsynth.data.transforms import Transform
from realsynth.utils.atomic import atomic_write_text
from realsynth.utils.box_ops import box_xywh_to_xyxy
from realsynth.utils.gc_pause import gc_paused


def load_relcoco_json(ann_file: str | Path) -> Any:
    """Reads a relcoco file (the rules in ``relcoco_rules`` judge its content).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid UTF-8 JSON (names the file and the position).
    """
    try:
        with open(ann_file, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{ann_file}: not valid JSON: {exc}") from None


class RelCocoDataset(RelationDataset):
    """A relcoco annotation file and its image folder.

    Every rule of :func:`~realsynth.data.formats.relcoco_rules.index_relcoco` is applied at
    construction, and (``check_files``) every listed image file must exist. Problems of the whole
    file always raise; problems of single images raise too unless ``skip_bad_samples``, which
    leaves those images out and lists them in :attr:`skipped`.

    Args:
        ann_file: the JSON file.
        image_root: folder that ``file_name`` is relative to.
        transforms: seeded transforms ``t(image, target, rng)``.
        source: name in error messages and items (default: the JSON's parent folder name).
        seed: base of the per-item augmentation generator.
        skip_bad_samples: leave out images with problems (and return a ``SkippedSample`` for an
            image that turns out unreadable when loaded) instead of raising.
        check_files: check at construction that every image file exists (one directory scan).
        index_cache: a folder for the binary cache of a large file's index (see
            :mod:`~realsynth.data.formats.relcoco_cache`); None parses the JSON every time.

    Attributes:
        classes: category names by 0-based index; ``category_ids`` the file ids.
        predicates: predicate names by 0-based index; ``predicate_ids`` the file ids.
        skipped: the images left out at construction, with the first problem of each.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: invalid JSON; :class:`~realsynth.data.problems.DatasetProblems` listing the
            count and first locations of every kind of problem.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        *,
        transforms: Transform | None = None,
        source: str | None = None,
        seed: int = 0,
        skip_bad_samples: bool = False,
        check_files: bool = True,
        index_cache: str | Path | None = None,
    ) -> None:
        ann_file = Path(ann_file)
        super().__init__(
            source=source or ann_file.parent.name or "relcoco",
            transforms=transforms,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
        )
        self.ann_file = ann_file
        self.image_root = Path(image_root)
        cache = Path(index_cache) if index_cache is not None else None
        cached = load_cached_index(cache, ann_file) if cache is not None else None
        if cached is None or not self._from_cache(cached, check_files):
            self._build(check_files, skip_bad_samples, cache)

    def _build(self, check_files: bool, skip_bad_samples: bool, cache: Path | None) -> None:
        """Index the file (a clean one streamed, any other judged entry by entry), keep the valid
        images, and cache a clean index."""
        with gc_paused():
            clean = read_clean_relcoco(self.ann_file)
        if clean is not None and check_files:
            names = clean.names
            if len(list_files(self.image_root, names)) < len(set(names)):
                clean = None  # the full rules name what is missing
        if clean is None:
            self._build_judged(check_files, skip_bad_samples, cache)
            return
        self.classes, self.category_ids = clean.classes, clean.category_ids
        self.predicates, self.predicate_ids = clean.predicates, clean.predicate_ids
        self._names, self._name_starts = clean.packed_names or _pack_names(clean.names)
        self._image_ids, self._sizes = clean.image_ids, clean.sizes
        self._pack_rows(clean, np.arange(len(clean.image_ids)), len(clean.image_ids))
        if cache is not None:
            save_cached_index(cache, self.ann_file, self._arrays())

    def _build_judged(self, check_files: bool, skip_bad_samples: bool, cache: Path | None) -> None:
        """Parse the file, apply every rule entry by entry, keep the valid images (and cache a
        clean index)."""
        ann_file = self.ann_file
        with gc_paused():
            index, findings = index_relcoco(load_relcoco_json(ann_file), ann_file)
        what = f"{ann_file} (source '{self.source}')"
        if index is None:
            raise DatasetProblems(what, findings, skippable=False)
        if check_files:
            broken = findings.bad_images()
            entries = [
                ImageEntry(img["file_name"], (0, 0), k)
                for k, img in enumerate(index.images)
                if index.listed[k] and k not in broken
            ]
            locate = lambda k: image_location(k, index.images[k])  # noqa: E731
            check_image_files(findings, self.image_root, entries, locate, check_content=False)
        bad = raise_or_skip(what, findings, skip=skip_bad_samples)
        self.classes, self.category_ids = index.classes, index.category_ids
        self.predicates, self.predicate_ids = index.predicates, index.predicate_ids
        self.skipped = [
            SkippedSample(self.source, _file_name(index.images[k], k), p)
            for k, p in sorted(bad.items())
        ]
        self._keep(index, np.array([k for k in range(len(index.images)) if k not in bad], np.int64))
        if cache is not None and not findings.errors:
            save_cached_index(cache, ann_file, self._arrays())

    def _arrays(self) -> dict[str, Any]:
        """Everything the items are read from (what the index cache holds)."""
        out: dict[str, Any] = {k: getattr(self, f"_{k}") for k in _ARRAYS}
        out.update({k: getattr(self, k) for k in _LABELS})
        if self._trust is not None:
            out.update({f"trust_{k}": getattr(self._trust, k) for k in _TRUST})
        return out

    def _from_cache(self, cached: dict[str, Any], check_files: bool) -> bool:
        """Take the cached index; False (nothing taken) when an image file has gone since."""
        if check_files:
            names = _unpacked_names(cached["names"], cached["name_starts"])
            if len(list_files(self.image_root, names)) < len(set(names)):
                return False  # the full build names what is missing
        for key in _ARRAYS:
            setattr(self, f"_{key}", cached[key])
        for key in _LABELS:
            setattr(self, key, list(cached[key]))
        trust = {k: cached.get(f"trust_{k}") for k in _TRUST}
        self._trust = InstanceTrust(**trust) if trust["box_weights"] is not None else None
        return True

    def _keep(self, index: RelCocoIndex, keep: np.ndarray) -> None:
        """Pack the kept images' boxes and relations contiguously, image after image."""
        images = index.images
        self._names, self._name_starts = _pack_names(
            str(images[k]["file_name"]) for k in keep.tolist()
        )
        self._image_ids = np.array([images[k]["id"] for k in keep.tolist()], dtype=np.int64)
        self._sizes = np.array(
            [(images[k]["height"], images[k]["width"]) for k in keep.tolist()], dtype=np.int64
        ).reshape(-1, 2)
        self._pack_rows(index, keep, len(images))

    def _pack_rows(self, index: RelCocoIndex | CleanRelCoco, keep: np.ndarray, num: int) -> None:
        """The kept images' boxes and relations, contiguous image after image."""
        kept = np.zeros(num, dtype=bool)
        kept[keep] = True
        boxes, self._box_starts = _packed(index.box_image, kept, keep)
        self._boxes = index.boxes[boxes].astype(np.float32)
        self._labels = index.labels[boxes]
        relations, self._relation_starts = _packed(index.relation_image, kept, keep)
        self._relations = index.relations[relations]
        self._trust = index.trust.take(boxes, relations) if index.trust is not None else None

    def __len__(self) -> int:
        return len(self._image_ids)

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        objects = np.bincount(self._labels, minlength=len(self.classes))
        relations = np.bincount(self._relations[:, 2], minlength=len(self.predicates))
        return objects.astype(np.int64), relations.astype(np.int64)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.file_name(index)

    def file_name(self, index: int) -> str:
        """Item ``index``'s image file, relative to ``image_root``."""
        return _packed_name(self._names, self._name_starts, index)

    def annotation(self, index: int) -> dict[str, Any]:
        b0, b1 = self._box_starts[index], self._box_starts[index + 1]
        r0, r1 = self._relation_starts[index], self._relation_starts[index + 1]
        out = {
            # Copies: the index may be a read-only memory map (the index cache).
            "boxes": box_xywh_to_xyxy(torch.from_numpy(self._boxes[b0:b1].copy())),
            "labels": torch.from_numpy(self._labels[b0:b1].copy()),
            "relations": torch.from_numpy(self._relations[r0:r1].copy()),
            "image_id": int(self._image_ids[index]),
            "orig_size": torch.from_numpy(self._sizes[index].copy()),
            "file_name": self.file_name(index),
            "source": self.source,
        }
        if self._trust is not None:  # only files that carry trust fields: otherwise as before
            trust = self._trust
            out["box_weights"] = torch.from_numpy(trust.box_weights[b0:b1].copy())
            out["box_ignore"] = torch.from_numpy(trust.box_ignore[b0:b1].copy())
            out["relation_weights"] = torch.from_numpy(trust.relation_weights[r0:r1].copy())
            out["relation_ignore"] = torch.from_numpy(trust.relation_ignore[r0:r1].copy())
        return out


#: The index's arrays (attribute ``_NAME``) and label lists, as the index cache holds them.
_ARRAYS = (
    "names",
    "name_starts",
    "image_ids",
    "sizes",
    "boxes",
    "labels",
    "box_starts",
    "relations",
    "relation_starts",
)
_LABELS = ("classes", "category_ids", "predicates", "predicate_ids")
_TRUST = ("box_weights", "box_ignore", "relation_weights", "relation_ignore")


def _pack_names(names: Any) -> tuple[np.ndarray, np.ndarray]:
    """File names as one uint8 buffer [total bytes] and int64 starts [I + 1]: no Python object
    per image for DataLoader workers to touch (and copy, page by page)."""
    encoded = [name.encode("utf-8", "surrogatepass") for name in names]
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=starts[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), starts


def _unpacked_names(buffer: np.ndarray, starts: np.ndarray) -> list[str]:
    """Every packed name, decoded at once (an ASCII buffer's byte offsets are its character
    offsets: one decode and slices, instead of a decode per name)."""
    text = buffer.tobytes().decode("utf-8", "surrogatepass")
    bounds = starts.tolist()
    if len(text) != len(buffer):
        return [_packed_name(buffer, starts, k) for k in range(len(bounds) - 1)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _packed_name(buffer: np.ndarray, starts: np.ndarray, index: int) -> str:
    return buffer[starts[index] : starts[index + 1]].tobytes().decode("utf-8", "surrogatepass")


def _file_name(image: Any, position: int) -> str:
    return str(image.get("file_name")) if isinstance(image, dict) else f"images[{position}]"


def _packed(
    image_of: np.ndarray, kept: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray | slice, np.ndarray]:
    """Rows of the kept images, grouped image by image in ``keep`` order (file order within an
    image), and where each image's rows start (int64 [len(keep) + 1]). The rows are a slice
    when they are all of them in file order already (every image kept, rows image by image)."""
    counts = np.bincount(image_of, minlength=len(kept))[keep]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    in_file_order = len(keep) == len(kept) and bool((np.diff(image_of) >= 0).all())
    if in_file_order and bool((keep == np.arange(len(kept))).all()):
        return slice(None), starts
    order, _ = grouped(image_of, len(kept))
    return order[kept[image_of[order]]], starts


def _image_entries(
    image: Mapping[str, Any], image_id: int, first_ann_id: int, classes: int, predicates: int
) -> tuple[dict, list[dict], list[dict]]:
    boxes = np.asarray(image.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(image.get("labels", []), dtype=np.int64).reshape(-1)
    relations = np.asarray(image.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    name = image.get("file_name", f"#{image_id}")
    if len(labels) != len(boxes):
        raise ValueError(
            f"write_relcoco: image {name}: {len(boxes)} boxes but {len(labels)} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"write_relcoco: image {name}: labels must be in [0, {classes})")
    if relations.size and (relations[:, :2].min() < 0 or relations[:, :2].max() >= len(boxes)):
        raise ValueError(
            f"write_relcoco: image {name}: relation box index out of [0, {len(boxes)})"
        )
    if relations.size and (relations[:, 2].min() < 0 or relations[:, 2].max() >= predicates):
        raise ValueError(f"write_relcoco: image {name}: predicates must be in [0, {predicates})")
    info = {
        "id": image_id,
        "file_name": str(image["file_name"]),
        "width": int(image["width"]),
        "height": int(image["height"]),
    }
    anns = []
    for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        w, h = box[2] - box[0], box[3] - box[1]
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [box[0], box[1], w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    rels = [
        {
            "image_id": image_id,
            "subject_id": first_ann_id + s,
            "object_id": first_ann_id + o,
            "predicate_id": p + 1,
        }
        for s, o, p in relations.tolist()
    ]
    return info, anns, rels


def write_relcoco(
    path: str | Path,
    *,
    classes: Sequence[str],
    predicates: Sequence[str],
    images: Sequence[Mapping[str, Any]],
) -> Path:
    """Writes a relcoco file atomically; ids are assigned 1.. in the given order.

    Args:
        path: output JSON path.
        classes: category names (category id = index + 1).
        predicates: predicate names (predicate id = index + 1).
        images: one mapping per image with ``file_name``, ``width``, ``height``, ``boxes``
            [N, 4] xyxy in pixels, ``labels`` [N] 0-based and ``relations`` [M, 3]
            (subject index, object index, 0-based predicate).

    Returns:
        The written path.
    """
    out: dict[str, list] = {k: [] for k in REQUIRED_KEYS}
    out["categories"] = [{"id": i + 1, "name": str(n)} for i, n in enumerate(classes)]
    out["predicates"] = [{"id": i + 1, "name": str(n)} for i, n in enumerate(predicates)]
    next_ann = 1
    for k, image in enumerate(images):
        info, anns, rels = _image_entries(image, k + 1, next_ann, len(classes), len(predicates))
        next_ann += len(anns)
        out["images"].append(info)
        out["annotations"].extend(anns)
        out["relationships"].extend(rels)
    return atomic_write_text(path, json.dumps(out, separators=(",", ":")))


def grouped(image_of: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by image, file order kept within each image.

    Args:
        image_of: int64 [N] image position of each row.
        num_images: I.

    Returns:
        (order int64 [N], starts int64 [I + 1]): image k's rows are
        ``order[starts[k]:starts[k + 1]]``.
    """
    order = np.argsort(image_of, kind="stable")
    starts = np.searchsorted(image_of[order], np.arange(num_images + 1))
    return order, starts
