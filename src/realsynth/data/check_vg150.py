"""Checks of a VG150 folder (see :mod:`realsynth.data.check` for the problem codes).

Array checks are vectorized over the h5 so the full 108k-image file takes seconds. Image sizes
that disagree with ``image_data.json`` are warnings here: the loader rescales the boxes as
Scene-Graph-Benchmark does (the public file has a few wrong sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from realsynth.data.check import CheckReport, check_image_files, count_names
from realsynth.data.formats.vg150 import (
    H5_REQUIRED,
    VG_CORRUPTED_IMAGE_IDS,
    find_vg150_files,
    load_vg_dicts,
)

OUTSIDE_TOLERANCE_PX = 1.0


def _where(row: int, image_ids: np.ndarray) -> str:
    return f"h5 row {row} (image_id {int(image_ids[row])})"


def _owners(
    report: CheckReport, first: np.ndarray, last: np.ndarray, total: int, what: str, ids: np.ndarray
) -> np.ndarray:
    """Row owning each of ``total`` entries (-1: none); reports inconsistent first/last pairs."""
    owner = np.full(total, -1, dtype=np.int64)
    none = (first == -1) & (last == -1)
    valid = (first >= 0) & (first <= last) & (last < total)
    for row in np.flatnonzero(~(none | valid)).tolist():
        report.error(
            "invalid_file",
            _where(row, ids),
            f"img_to_first_{what}/img_to_last_{what} = {int(first[row])}/{int(last[row])} is not a "
            f"range inside 0..{total - 1} (or -1/-1 for none)",
        )
    for row in np.flatnonzero(valid).tolist():
        owner[first[row] : last[row] + 1] = row
    return owner


def _check_boxes(
    report: CheckReport,
    cxcywh: np.ndarray,
    owner: np.ndarray,
    sizes: np.ndarray,
    scale: int,
    ids: np.ndarray,
) -> None:
    empty = (cxcywh[:, 2] <= 0) | (cxcywh[:, 3] <= 0)
    for j in np.flatnonzero(empty).tolist():
        report.error(
            "empty_box",
            f"boxes_{scale}[{j}]",
            f"box {cxcywh[j].tolist()} (cx, cy, w, h) has no area",
        )
    owned = np.flatnonzero((owner >= 0) & ~empty)
    wh = sizes[owner[owned]].astype(np.float64)
    factor = wh.max(axis=1, keepdims=True) / scale
    b = cxcywh[owned].astype(np.float64)
    x1y1 = (b[:, :2] - b[:, 2:] / 2) * factor
    x2y2 = (b[:, :2] + b[:, 2:] / 2) * factor
    tol = OUTSIDE_TOLERANCE_PX
    outside = (x1y1 < -tol).any(axis=1) | (x2y2 > wh + tol).any(axis=1)
    for k in np.flatnonzero(outside).tolist():
        j, row = int(owned[k]), int(owner[owned[k]])
        report.error(
            "box_outside_image",
            f"boxes_{scale}[{j}] of {_where(row, ids)}",
            f"box xyxy {np.round(np.concatenate([x1y1[k], x2y2[k]]), 1).tolist()} px outside the "
            f"{int(wh[k, 0])}x{int(wh[k, 1])} image",
        )


def _check_labels(
    report: CheckReport, values: np.ndarray, count: int, code: str, key: str
) -> np.ndarray:
    """Reports values outside 1..count; returns the valid ones, 0-based."""
    bad = (values < 1) | (values > count)
    for j in np.flatnonzero(bad).tolist():
        report.error(code, f"{key}[{j}]", f"value {int(values[j])} is not in 1..{count}")
    return values[~bad] - 1


def _check_relations(
    report: CheckReport, h5: dict[str, np.ndarray], rel_owner: np.ndarray, ids: np.ndarray
) -> None:
    first, last = h5["img_to_first_box"], h5["img_to_last_box"]
    owned = np.flatnonzero(rel_owner >= 0)
    rows = rel_owner[owned]
    pairs = h5["relationships"][owned]
    inside = (pairs >= first[rows, None]) & (pairs <= last[rows, None])
    for k in np.flatnonzero(~inside.all(axis=1)).tolist():
        row = int(rows[k])
        report.error(
            "cross_image_relation",
            f"relationships[{int(owned[k])}] of {_where(row, ids)}",
            f"box indices {pairs[k].tolist()} outside the image's boxes "
            f"{int(first[row])}..{int(last[row])}",
        )


def _load(report: CheckReport, files: dict[str, Path], scale: int) -> tuple | None:
    """(names, h5 arrays, image_data) or None after reporting why they cannot be read."""
    try:
        names = load_vg_dicts(files["dicts"])
        with h5py.File(files["h5"], "r") as f:
            missing = [k for k in (*H5_REQUIRED, f"boxes_{scale}") if k not in f]
            if missing:
                report.error("invalid_file", str(files["h5"]), f"missing h5 datasets {missing}")
                return None
            h5 = {k: f[k][:] for k in (*H5_REQUIRED, f"boxes_{scale}")}
        with open(files["image_data"], encoding="utf-8") as f:
            image_data = [
                e for e in json.load(f) if int(e["image_id"]) not in VG_CORRUPTED_IMAGE_IDS
            ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.error(
            "invalid_file", str(files["dicts"].parent), f"cannot read the VG150 files: {exc}"
        )
        return None
    if len(image_data) != len(h5["split"]):
        report.error(
            "invalid_file",
            str(files["image_data"]),
            f"{len(image_data)} images after dropping corrupted ids "
            f"{sorted(VG_CORRUPTED_IMAGE_IDS)} "
            f"but the h5 has {len(h5['split'])} rows",
        )
        return None
    return names, h5, image_data


def check_vg150(
    folder: Path, image_root: Path, *, check_image_content: bool, box_scale: int = 1024
) -> CheckReport:
    """Checks a VG150 folder and its images under ``image_root``."""
    report = CheckReport(path=str(folder), format="vg150")
    try:
        files = find_vg150_files(folder)
    except FileNotFoundError as exc:
        report.error("missing_file", str(folder), str(exc))
        return report
    loaded = _load(report, files, box_scale)
    if loaded is None:
        return report
    (classes, predicates), h5, image_data = loaded
    ids = np.array([int(e["image_id"]) for e in image_data], dtype=np.int64)
    sizes = np.array([[int(e["width"]), int(e["height"])] for e in image_data], dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    for image_id in uniq[counts > 1].tolist():
        report.error(
            "duplicate_id", f"image_data.json image_id {image_id}", "image id listed more than once"
        )
    box_owner = _owners(
        report, h5["img_to_first_box"], h5["img_to_last_box"], len(h5["labels"]), "box", ids
    )
    rel_owner = _owners(
        report, h5["img_to_first_rel"], h5["img_to_last_rel"], len(h5["predicates"]), "rel", ids
    )
    labels = _check_labels(report, h5["labels"][:, 0], len(classes), "unknown_category", "labels")
    preds = _check_labels(
        report, h5["predicates"][:, 0], len(predicates), "unknown_predicate", "predicates"
    )
    _check_boxes(report, h5[f"boxes_{box_scale}"], box_owner, sizes, box_scale, ids)
    _check_relations(report, h5, rel_owner, ids)
    report.num_images, report.num_objects, report.num_relations = (
        len(ids),
        len(labels),
        len(h5["predicates"]),
    )
    report.class_counts = count_names(
        dict(enumerate(np.bincount(labels, minlength=len(classes)).tolist())), classes
    )
    report.predicate_counts = count_names(
        dict(enumerate(np.bincount(preds, minlength=len(predicates)).tolist())), predicates
    )
    no_rels = (h5["img_to_first_box"] >= 0) & (h5["img_to_first_rel"] < 0)
    for row in np.flatnonzero(no_rels).tolist():
        report.warn("no_relations", _where(row, ids), "image has boxes but no relations")
    entries = [
        (_where(r, ids), f"{ids[r]}.jpg", int(sizes[r, 0]), int(sizes[r, 1]))
        for r in range(len(ids))
    ]
    check_image_files(
        report, image_root, entries, check_content=check_image_content, size_mismatch_is_error=False
    )
    return report
