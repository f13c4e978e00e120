"""The rules of a relcoco file, applied in one pass that also indexes what is valid.

:func:`index_relcoco` is the only place that decides whether a relcoco entry is acceptable: the
loader (:class:`~realsynth.data.formats.relcoco.RelCocoDataset`) and ``realsynth data check``
both call it. Problems that belong to one image carry its position in ``images`` (the loader can
skip that image); problems of the whole file do not (see :mod:`realsynth.data.problems`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realsynth.data.problems import Findings

REQUIRED_KEYS = ("images", "annotations", "categories", "predicates", "relationships")
# Boxes may poke out of the image by rounding; beyond half a pixel it is a real error.
OUTSIDE_TOLERANCE_PX = 0.5


@dataclass
class RelCocoIndex:
    """What a relcoco file holds, by image position.

    Attributes:
        classes / predicates: names by 0-based index (file ids in increasing order).
        category_ids / predicate_ids: the file ids behind those indices.
        images: the ``images`` entries, in file order.
        boxes: per image, ``[x, y, w, h]`` pixel boxes of its annotations, in file order.
        labels: per image, 0-based class of each box.
        relations: per image, (subject box, object box, 0-based predicate) of each relation.
        image_positions: image id -> position in ``images`` (the first, if an id repeats).
        class_counts / predicate_counts: 0-based index -> count over the valid entries.
    """

    classes: list[str]
    category_ids: list[int]
    predicates: list[str]
    predicate_ids: list[int]
    images: list[dict[str, Any]]
    boxes: list[list[list[float]]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    relations: list[list[tuple[int, int, int]]] = field(default_factory=list)
    image_positions: dict[int, int] = field(default_factory=dict)
    class_counts: Counter = field(default_factory=Counter)
    predicate_counts: Counter = field(default_factory=Counter)


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


def _image_positions(findings: Findings, images: list[Any]) -> dict[int, int]:
    """Image id -> position; records malformed entries (image-level) and duplicate ids (file)."""
    positions: dict[int, int] = {}
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
    return positions


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


def _index_annotations(
    findings: Findings, data: dict, index: RelCocoIndex, image_pos: dict, cat_pos: dict
) -> dict:
    """Fill the index's boxes and labels; returns annotation id -> (image position, box index)."""
    where_of: dict[int, tuple[int, int]] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            findings.error("invalid_file", f"annotations[{k}]", "entry is not an object")
            continue
        where = f"annotations[{k}]" + (f" (id {ann['id']})" if "id" in ann else "")
        pos = image_pos.get(ann.get("image_id"))
        if pos is None:
            findings.error(
                "unknown_image", where, f"image_id {ann.get('image_id')!r} is not an id in 'images'"
            )
            continue
        missing = [key for key in ("id", "category_id", "bbox") if key not in ann]
        if missing or not _is_id(ann["id"]):
            findings.error("invalid_file", where, f"lacks {missing or ['an int id']}", pos)
            continue
        if ann["id"] in where_of:
            findings.error("duplicate_id", where, f"annotation id {ann['id']} is used twice")
            continue
        image = index.images[pos]
        size = (image.get("width"), image.get("height"))
        problem = box_problem(ann["bbox"], size if all(_is_id(v) for v in size) else None)
        if problem is not None:
            findings.error(problem[0], where, problem[1], pos)
        if ann["category_id"] not in cat_pos:
            findings.error(
                "unknown_category",
                where,
                f"category_id {ann['category_id']!r} is not an id in 'categories'",
                pos,
            )
            label = -1
        else:
            label = cat_pos[ann["category_id"]]
            index.class_counts[label] += 1
        where_of[ann["id"]] = (pos, len(index.boxes[pos]))
        index.boxes[pos].append(ann["bbox"])
        index.labels[pos].append(label)
    return where_of


def _relation_image(rel: dict, image_pos: dict, where_of: dict) -> int | None:
    """The image a relationship belongs to: its own image_id, else its subject's or object's."""
    if rel.get("image_id") in image_pos:
        return image_pos[rel["image_id"]]
    for key in ("subject_id", "object_id"):
        if rel.get(key) in where_of:
            return where_of[rel[key]][0]
    return None


def _index_relationships(
    findings: Findings,
    data: dict,
    index: RelCocoIndex,
    image_pos: dict,
    where_of: dict,
    pred_pos: dict,
) -> None:
    seen: set[tuple] = set()
    for k, rel in enumerate(data["relationships"]):
        where = f"relationships[{k}]"
        if not isinstance(rel, dict):
            findings.error("invalid_file", where, "entry is not an object")
            continue
        pos = _relation_image(rel, image_pos, where_of)
        missing = [key for key in ("subject_id", "object_id", "predicate_id") if key not in rel]
        if missing:
            findings.error("invalid_file", where, f"lacks {missing}", pos)
            continue
        sub, obj, pred = rel["subject_id"], rel["object_id"], rel["predicate_id"]
        unknown = [
            f"{key} {rel[key]!r}" for key in ("subject_id", "object_id") if rel[key] not in where_of
        ]
        if unknown:
            findings.error(
                "unknown_annotation", where, f"{' and '.join(unknown)} not an annotation id", pos
            )
            continue
        (s_pos, s_box), (o_pos, o_box) = where_of[sub], where_of[obj]
        image_ok = "image_id" not in rel or image_pos.get(rel["image_id"]) == s_pos
        if o_pos != s_pos or not image_ok:
            findings.error(
                "cross_image_relation",
                where,
                f"subject {sub} is in image {index.images[s_pos]['id']}, object {obj} in image "
                f"{index.images[o_pos]['id']}, the relation says image {rel.get('image_id')!r}",
                s_pos,
            )
            continue
        if pred not in pred_pos:
            findings.error(
                "unknown_predicate",
                where,
                f"predicate_id {pred!r} is not an id in 'predicates'",
                s_pos,
            )
            continue
        if sub == obj:
            findings.warn(
                "self_relation", where, f"subject and object are the same annotation {sub}", s_pos
            )
        if (sub, obj, pred) in seen:
            findings.warn(
                "duplicate_relation", where, f"({sub}, {obj}, {pred}) listed more than once", s_pos
            )
        seen.add((sub, obj, pred))
        index.relations[s_pos].append((s_box, o_box, pred_pos[pred]))
        index.predicate_counts[pred_pos[pred]] += 1


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
    missing = [
        k for k in REQUIRED_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)
    ]
    if missing:
        findings.error(
            "invalid_file",
            str(ann_file),
            f"missing top-level list(s) {missing} (expected {list(REQUIRED_KEYS)})",
        )
        return None, findings
    categories = _label_ids(findings, data["categories"], "categories")
    predicates = _label_ids(findings, data["predicates"], "predicates")
    cat_ids, pred_ids = sorted(categories), sorted(predicates)
    index = RelCocoIndex(
        classes=[categories[i] for i in cat_ids],
        category_ids=cat_ids,
        predicates=[predicates[i] for i in pred_ids],
        predicate_ids=pred_ids,
        images=list(data["images"]),
    )
    index.boxes = [[] for _ in index.images]
    index.labels = [[] for _ in index.images]
    index.relations = [[] for _ in index.images]
    image_pos = index.image_positions = _image_positions(findings, index.images)
    cat_pos = {c: i for i, c in enumerate(cat_ids)}
    pred_pos = {p: i for i, p in enumerate(pred_ids)}
    where_of = _index_annotations(findings, data, index, image_pos, cat_pos)
    _index_relationships(findings, data, index, image_pos, where_of, pred_pos)
    if not index.images:
        findings.error("no_images", str(ann_file), "the file lists no images")
    for k, img in enumerate(index.images):
        if is_listed_image(index, k) and not index.relations[k]:
            findings.warn("no_relations", image_location(k, img), "image has no valid relation", k)
    return index, findings


def is_listed_image(index: RelCocoIndex, position: int) -> bool:
    """Whether ``images[position]`` is a well-formed entry (not a repeat of an earlier id)."""
    image = index.images[position]
    return (
        isinstance(image, dict)
        and index.image_positions.get(image.get("id")) == position
        and isinstance(image.get("file_name"), str)
        and _is_id(image.get("width"))
        and _is_id(image.get("height"))
    )


def image_location(position: int, image: dict[str, Any]) -> str:
    """``images[k] (id N, file name)``: how problems of an image's file name it."""
    return f"images[{position}] (id {image.get('id')}, {image.get('file_name')})"
