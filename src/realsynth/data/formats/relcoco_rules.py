"""The rules of a relcoco file, applied in one pass that also indexes what is valid.

:func:`index_relcoco` is the only place that decides whether a relcoco entry is acceptable: the
loader (:class:`~realsynth.data.formats.relcoco.RelCocoDataset`) and ``realsynth data check``
both call it. Problems that belong to one image carry its position in ``images`` (the loader can
skip that image); problems of the whole file do not (see :mod:`realsynth.data.problems`).

The index is flat numpy arrays (boxes, labels, relations, each with the image it belongs to)
rather than millions of small Python objects: a 100k-image file is indexed in about a second,
and DataLoader workers share the arrays without copying them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.formats.relcoco_relationships import index_relationships
from realsynth.data.formats.relcoco_trust import InstanceTrust, index_trust
from realsynth.data.problems import Findings

REQUIRED_KEYS = ("images", "annotations", "categories", "predicates", "relationships")
# Boxes may poke out of the image by rounding; beyond half a pixel it is a real error.
OUTSIDE_TOLERANCE_PX = 0.5


@dataclass
class RelCocoIndex:
    """What a relcoco file holds (B boxes, M relations, I images).

    Attributes:
        classes / predicates: names by 0-based index (file ids in increasing order).
        category_ids / predicate_ids: the file ids behind those indices.
        images: the ``images`` entries, in file order.
        image_positions: image id -> position in ``images`` (the first, if an id repeats).
        listed: per position, whether the entry is well formed and not a repeated id.
        boxes: float64 [B, 4] ``[x, y, w, h]`` pixels, in file order (NaN where malformed).
        labels: int64 [B] 0-based class (-1 where unknown); ``box_image`` int64 [B] its image.
        relations: int64 [M, 3] (subject box, object box, 0-based predicate), box indices
            counted within the image; ``relation_image`` int64 [M] its image.
        trust: per-box and per-relation ``loss_weight`` / ``ignore``, or None when the file
            has none (``relcoco_trust``).
    """

    classes: list[str]
    category_ids: list[int]
    predicates: list[str]
    predicate_ids: list[int]
    images: list[Any]
    image_positions: dict[int, int] = field(default_factory=dict)
    listed: list[bool] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    relation_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    trust: InstanceTrust | None = None

    @property
    def class_counts(self) -> dict[int, int]:
        """0-based class -> number of boxes with that class."""
        known = self.labels[self.labels >= 0]
        return dict(enumerate(np.bincount(known, minlength=len(self.classes)).tolist()))

    @property
    def predicate_counts(self) -> dict[int, int]:
        """0-based predicate -> number of valid relations with that predicate."""
        counts = np.bincount(self.relations[:, 2], minlength=len(self.predicates))
        return dict(enumerate(counts.tolist()))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_ids(findings: Findings, entries: list[Any], key: str) -> dict[int, str]:
    """id -> name of a ``categories`` or ``predicates`` list (whole-file problems)."""
    names: dict[int, str] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or "name" not in entry:
            findings.error(
                "invalid_file", f"{key}[{k}]", "expected an object with an int 'id' and a 'name'"
            )
        elif entry["id"] in names:
            findings.error(
                "duplicate_id", f"{key}[{k}]", f"id {entry['id']} is used twice in '{key}'"
            )
        else:
            names[entry["id"]] = str(entry["name"])
    return names


def _image_positions(findings: Findings, images: list[Any]) -> tuple[dict[int, int], list[bool]]:
    """Image id -> position, and which entries are usable; records malformed entries (image-level)
    and duplicate ids (whole file)."""
    positions: dict[int, int] = {}
    listed = [False] * len(images)
    for k, img in enumerate(images):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            findings.error("invalid_file", f"images[{k}]", "expected an object with an int 'id'", k)
            continue
        where = f"images[{k}] (id {img['id']})"
        if img["id"] in positions:
            findings.error(
                "duplicate_id", where, f"id {img['id']} also used by images[{positions[img['id']]}]"
            )
            continue
        positions[img["id"]] = k
        w, h = img.get("width"), img.get("height")
        if not isinstance(img.get("file_name"), str):
            findings.error("invalid_file", where, "'file_name' must be a string", k)
        elif not (_is_id(w) and _is_id(h) and w > 0 and h > 0):
            findings.error(
                "invalid_file", where, f"width/height must be positive ints, got {w}/{h}", k
            )
        else:
            listed[k] = True
    return positions, listed


def box_problem(bbox: Any, size: tuple[int, int] | None) -> tuple[str, str] | None:
    """(code, message) when ``bbox`` is not a valid ``[x, y, w, h]`` pixel box inside ``size``
    (width, height) with :data:`OUTSIDE_TOLERANCE_PX`; None when it is."""
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        return "bad_box", f"bbox must be [x, y, w, h] numbers in pixels, got {bbox!r}"
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return "bad_box", f"bbox has a non-finite value: {bbox}"
    if w <= 0 or h <= 0:
        return "empty_box", f"bbox {bbox} (x, y, w, h) has zero or negative width or height"
    tol = OUTSIDE_TOLERANCE_PX
    if size is not None and (
        x < -tol or y < -tol or x + w > size[0] + tol or y + h > size[1] + tol
    ):
        return (
            "box_outside_image",
            f"bbox {bbox} (x, y, w, h) lies outside the {size[0]}x{size[1]} image",
        )
    return None


def suspect_boxes(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """bool [B]: the boxes :func:`box_problem` could reject, judged on arrays.

    Args:
        boxes: float64 [B, 4] ``[x, y, w, h]`` pixels (NaN rows where malformed).
        sizes: float64 [B, 2] (width, height) of each box's image (inf: no valid size).
    """
    tol = OUTSIDE_TOLERANCE_PX
    return (
        ~np.isfinite(boxes).all(axis=1)
        | (boxes[:, 2] <= 0)
        | (boxes[:, 3] <= 0)
        | (boxes[:, :2] < -tol).any(axis=1)
        | (boxes[:, :2] + boxes[:, 2:] > sizes + tol).any(axis=1)
    )


def _annotation_where(k: int, ann: dict) -> str:
    return f"annotations[{k}]" + (f" (id {ann['id']})" if "id" in ann else "")


@dataclass
class _Boxes:
    """Boxes collected while the annotations are read (flat, in file order)."""

    source: list[int] = field(default_factory=list)  # position in ``annotations``
    image: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    bboxes: list[Any] = field(default_factory=list)


def _index_annotations(
    findings: Findings, anns: list, image_pos: dict, cat_pos: dict, num_images: int
) -> tuple[dict, _Boxes]:
    """Collect every annotation of a known image; annotation id -> (image, box within image).

    The loop does only lookups; the boxes are judged afterwards, all at once (:func:`_box_array`).
    """
    where_of: dict[int, tuple[int, int]] = {}
    per_image = [0] * num_images
    boxes = _Boxes()
    for k, ann in enumerate(anns):
        if type(ann) is not dict:
            findings.error("invalid_file", f"annotations[{k}]", "entry is not an object")
            continue
        pos = image_pos.get(ann.get("image_id"))
        if pos is None:
            findings.error(
                "unknown_image",
                _annotation_where(k, ann),
                f"image_id {ann.get('image_id')!r} is not an id in 'images'",
            )
            continue
        ann_id, category, bbox = ann.get("id"), ann.get("category_id"), ann.get("bbox")
        if category is None or bbox is None or not _is_id(ann_id):
            missing = [key for key in ("id", "category_id", "bbox") if key not in ann]
            findings.error(
                "invalid_file", _annotation_where(k, ann), f"lacks {missing or ['an int id']}", pos
            )
            continue
        if ann_id in where_of:
            findings.error(
                "duplicate_id", _annotation_where(k, ann), f"annotation id {ann_id} is used twice"
            )
            continue
        label = cat_pos.get(category, -1)
        if label < 0:
            findings.error(
                "unknown_category",
                _annotation_where(k, ann),
                f"category_id {category!r} is not an id in 'categories'",
                pos,
            )
        where_of[ann_id] = (pos, per_image[pos])
        per_image[pos] += 1
        boxes.source.append(k)
        boxes.image.append(pos)
        boxes.labels.append(label)
        boxes.bboxes.append(bbox)
    return where_of, boxes


def _box_array(findings: Findings, anns: list, index: RelCocoIndex, boxes: _Boxes) -> np.ndarray:
    """float64 [B, 4] of the collected boxes (NaN rows where malformed), after applying
    :func:`box_problem` to every box a vectorized pass marks as suspect."""
    table = np.full((len(index.images), 2), np.inf)  # (width, height); inf: no valid size
    for k, listed in enumerate(index.listed):
        if listed:
            table[k] = (index.images[k]["width"], index.images[k]["height"])
    sizes = table[np.asarray(boxes.image, dtype=np.int64)]
    bboxes = boxes.bboxes
    well_formed = (
        {type(b) for b in bboxes} <= {list}
        and {len(b) for b in bboxes} <= {4}
        and {type(v) for b in bboxes for v in b} <= {int, float}
    )
    if not well_formed:
        bboxes = [b if box_problem(b, None) is None else [math.nan] * 4 for b in bboxes]
    array = np.array(bboxes, dtype=np.float64).reshape(-1, 4)
    for i in np.flatnonzero(suspect_boxes(array, sizes)).tolist():
        size = tuple(int(v) for v in sizes[i]) if np.isfinite(sizes[i][0]) else None
        problem = box_problem(boxes.bboxes[i], size)
        if problem is not None:
            k = boxes.source[i]
            findings.error(problem[0], _annotation_where(k, anns[k]), problem[1], boxes.image[i])
    return array


def index_relcoco(data: Any, ann_file: str | Path) -> tuple[RelCocoIndex | None, Findings]:
    """Apply every relcoco rule to a parsed file and index its valid content.

    Args:
        data: the parsed JSON.
        ann_file: its path (for messages).

    Returns:
        (index, findings); the index is None when the top level is unusable. Images whose
        position appears in ``findings.bad_images()`` are indexed but must not be trained on.
    """
    findings = Findings()
    if not _has_top_level_lists(findings, data, ann_file):
        return None, findings
    categories = _label_ids(findings, data["categories"], "categories")
    predicates = _label_ids(findings, data["predicates"], "predicates")
    cat_ids, pred_ids = sorted(categories), sorted(predicates)
    images = data["images"]
    image_pos, listed = _image_positions(findings, images)
    index = RelCocoIndex(
        classes=[categories[i] for i in cat_ids],
        category_ids=cat_ids,
        predicates=[predicates[i] for i in pred_ids],
        predicate_ids=pred_ids,
        images=images,
        image_positions=image_pos,
        listed=listed,
    )
    cat_pos = {c: i for i, c in enumerate(cat_ids)}
    where_of, boxes = _index_annotations(
        findings, data["annotations"], image_pos, cat_pos, len(images)
    )
    index.boxes = _box_array(findings, data["annotations"], index, boxes)
    index.labels = np.asarray(boxes.labels, dtype=np.int64)
    index.box_image = np.asarray(boxes.image, dtype=np.int64)
    relations, owners, positions = index_relationships(
        findings,
        data["relationships"],
        image_pos,
        where_of,
        {p: i for i, p in enumerate(pred_ids)},
        images,
    )
    index.relations = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    index.relation_image = np.asarray(owners, dtype=np.int64)
    index.trust = index_trust(
        findings,
        data["annotations"],
        boxes.source,
        boxes.image,
        data["relationships"],
        positions,
        owners,
    )
    if not images:
        findings.error("no_images", str(ann_file), "the file lists no images")
    _warn_images_without_relations(findings, index)
    return index, findings


def _has_top_level_lists(findings: Findings, data: Any, ann_file: str | Path) -> bool:
    """Whether ``data`` is an object with every required top-level list (else an error)."""
    missing = [
        k for k in REQUIRED_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)
    ]
    if missing:
        findings.error(
            "invalid_file",
            str(ann_file),
            f"missing top-level list(s) {missing} (expected {list(REQUIRED_KEYS)})",
        )
    return not missing


def _warn_images_without_relations(findings: Findings, index: RelCocoIndex) -> None:
    """A warning for every listed image that kept no valid relation."""
    has_relation = np.zeros(len(index.images), dtype=bool)
    has_relation[index.relation_image] = True
    for k in np.flatnonzero(np.asarray(index.listed, dtype=bool) & ~has_relation).tolist():
        findings.warn(
            "no_relations", image_location(k, index.images[k]), "image has no valid relation", k
        )


def image_location(position: int, image: Any) -> str:
    """``images[k] (id N, file name)``: how problems of an image's file name it."""
    if not isinstance(image, dict):
        return f"images[{position}]"
    return f"images[{position}] (id {image.get('id')}, {image.get('file_name')})"
