"""Checks of a relcoco annotation file (see :mod:`realsynth.data.check` for the problem codes)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from realsynth.data.check import CheckReport, check_image_files, count_names
from realsynth.data.formats.relcoco import REQUIRED_KEYS

# Boxes may poke out of the image by rounding; beyond half a pixel it is a real error.
OUTSIDE_TOLERANCE_PX = 0.5


def _id_map(report: CheckReport, entries: list[Any], key: str) -> dict[Any, int]:
    """id -> position, reporting entries without an id and duplicate ids."""
    positions: dict[Any, int] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            report.error("invalid_file", f"{key}[{k}]", "entry is not an object with an 'id'")
        elif entry["id"] in positions:
            report.error(
                "duplicate_id",
                f"{key}[{k}]",
                f"id {entry['id']} also used by {key}[{positions[entry['id']]}]",
            )
        else:
            positions[entry["id"]] = k
    return positions


def _check_images(
    report: CheckReport, images: list[Any], positions: dict[Any, int]
) -> dict[Any, tuple[int, int]]:
    """Image id -> (width, height) for images with valid metadata (first of duplicate ids)."""
    sizes = {}
    for k, img in enumerate(images):
        if not isinstance(img, dict) or positions.get(img.get("id")) != k:
            continue
        w, h = img.get("width"), img.get("height")
        if not isinstance(img.get("file_name"), str):
            report.error("invalid_file", f"images[{k}] (id {img['id']})", "missing 'file_name'")
        elif not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            report.error(
                "invalid_file",
                f"images[{k}] (id {img['id']})",
                f"width/height must be positive ints, got {w}/{h}",
            )
        else:
            sizes[img["id"]] = (w, h)
    return sizes


def _box_problem(bbox: Any, size: tuple[int, int] | None) -> tuple[str, str] | None:
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
    ):
        return "bad_box", f"bbox must be [x, y, w, h] numbers, got {bbox!r}"
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return "bad_box", f"bbox has a non-finite value: {bbox}"
    if w <= 0 or h <= 0:
        return "empty_box", f"bbox {bbox} has zero or negative area"
    if size is not None:
        tol = OUTSIDE_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > size[0] + tol or y + h > size[1] + tol:
            return (
                "box_outside_image",
                f"bbox {bbox} (x, y, w, h) outside the {size[0]}x{size[1]} image",
            )
    return None


def _check_annotations(
    report: CheckReport,
    anns: list[Any],
    sizes: dict[Any, tuple[int, int]],
    image_ids: dict,
    cat_pos: dict,
) -> tuple[dict[Any, Any], Counter]:
    """Returns annotation id -> image id (for annotations that passed) and category id counts."""
    ann_image: dict[Any, Any] = {}
    categories: Counter = Counter()
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict) or "id" not in ann:
            continue
        where = f"annotations[{k}] (id {ann['id']})"
        if ann.get("image_id") not in image_ids:
            report.error(
                "unknown_image", where, f"image_id {ann.get('image_id')!r} is not in 'images'"
            )
            continue
        if ann.get("category_id") not in cat_pos:
            report.error(
                "unknown_category",
                where,
                f"category_id {ann.get('category_id')!r} is not in 'categories'",
            )
        else:
            categories[cat_pos[ann["category_id"]]] += 1
        problem = _box_problem(ann.get("bbox"), sizes.get(ann["image_id"]))
        if problem is not None:
            report.error(problem[0], where, problem[1])
        ann_image.setdefault(ann["id"], ann["image_id"])
    return ann_image, categories


def _check_relationships(
    report: CheckReport, rels: list[Any], ann_image: dict, pred_pos: dict
) -> tuple[set, Counter]:
    """Returns the ids of images with at least one relation, and predicate counts."""
    with_rels: set = set()
    predicates: Counter = Counter()
    seen: set = set()
    for k, rel in enumerate(rels):
        where = f"relationships[{k}]"
        if not isinstance(rel, dict):
            report.error("invalid_file", where, "entry is not an object")
            continue
        sub, obj, pred = rel.get("subject_id"), rel.get("object_id"), rel.get("predicate_id")
        missing = [n for n, v in (("subject_id", sub), ("object_id", obj)) if v not in ann_image]
        if missing:
            report.error(
                "unknown_annotation",
                where,
                f"{' and '.join(missing)} not an annotation id ({sub}, {obj})",
            )
            continue
        image = ann_image[sub]
        if ann_image[obj] != image or rel.get("image_id", image) != image:
            report.error(
                "cross_image_relation",
                where,
                f"subject {sub} is in image {image}, object {obj} in image {ann_image[obj]}, "
                f"relation says image {rel.get('image_id')}",
            )
            continue
        if pred not in pred_pos:
            report.error(
                "unknown_predicate", where, f"predicate_id {pred!r} is not in 'predicates'"
            )
            continue
        if sub == obj:
            report.warn("self_relation", where, f"subject and object are the same annotation {sub}")
        if (sub, obj, pred) in seen:
            report.warn(
                "duplicate_relation", where, f"({sub}, {obj}, {pred}) listed more than once"
            )
        seen.add((sub, obj, pred))
        with_rels.add(image)
        predicates[pred_pos[pred]] += 1
    return with_rels, predicates


def check_relcoco(ann_file: Path, image_root: Path, *, check_image_content: bool) -> CheckReport:
    """Checks a relcoco file and its images under ``image_root``."""
    report = CheckReport(path=str(ann_file), format="relcoco")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        report.error("missing_file", str(ann_file), "annotation file not found")
        return report
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.error("invalid_file", str(ann_file), f"not valid JSON: {exc}")
        return report
    missing = [
        k for k in REQUIRED_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)
    ]
    if missing:
        report.error("invalid_file", str(ann_file), f"missing top-level list(s) {missing}")
        return report
    image_ids = _id_map(report, data["images"], "images")
    _id_map(report, data["annotations"], "annotations")
    cat_pos = {
        c: i for i, c in enumerate(sorted(_id_map(report, data["categories"], "categories")))
    }
    pred_pos = {
        p: i for i, p in enumerate(sorted(_id_map(report, data["predicates"], "predicates")))
    }
    names = {
        key: {
            e["id"]: str(e.get("name", e["id"]))
            for e in data[key]
            if isinstance(e, dict) and "id" in e
        }
        for key in ("categories", "predicates")
    }
    sizes = _check_images(report, data["images"], image_ids)
    ann_image, categories = _check_annotations(
        report, data["annotations"], sizes, image_ids, cat_pos
    )
    with_rels, predicates = _check_relationships(report, data["relationships"], ann_image, pred_pos)
    report.num_images = len(data["images"])
    report.num_objects = len(data["annotations"])
    report.num_relations = len(data["relationships"])
    report.class_counts = count_names(categories, [names["categories"][c] for c in sorted(cat_pos)])
    report.predicate_counts = count_names(
        predicates, [names["predicates"][p] for p in sorted(pred_pos)]
    )
    entries = []
    for k, img in enumerate(data["images"]):
        if isinstance(img, dict) and img.get("id") in sizes and image_ids[img["id"]] == k:
            where = f"images[{k}] (id {img['id']}, {img['file_name']})"
            if img["id"] not in with_rels:
                report.warn("no_relations", where, "image has no relations")
            entries.append((where, img["file_name"], *sizes[img["id"]]))
    check_image_files(report, image_root, entries, check_content=check_image_content)
    return report
