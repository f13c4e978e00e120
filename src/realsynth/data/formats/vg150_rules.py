"""The rules of a VG150 h5 file, vectorized over all rows (the full 108k-image file in seconds).

:func:`check_vg150_arrays` is the only place that decides whether a VG150 row is acceptable: the
loader (:class:`~realsynth.data.formats.vg150.VG150Dataset`) and ``realsynth data check`` both
call it. A problem of one image carries its h5 row as ``image``; box and label entries that no
row owns are never read and are not checked.

Boxes are checked in the file's own frame (``boxes_1024``: the image scaled so its longest side
is 1024), after Scene-Graph-Benchmark's decoding. The public file's encoder
(``vg_to_roidb.py``'s ``encode_box``) clamps boxes to the 1024 x 1024 canvas only, so a box a few
units past the scaled image's short side is how the public data is: that is a warning, and the
box is clipped to the image when loaded, as SGB does. A box outside the canvas cannot come from
that encoder and is an error (a wrong scale, a wrong ``box_scale``).
"""

from __future__ import annotations

import numpy as np

from realsynth.data.formats.vg150_files import VGArrays, decode_vg_boxes
from realsynth.data.problems import Findings

# In units of the file's frame (1/1024 of the longest side): the encoder rounds outward.
OUTSIDE_TOLERANCE = 1.0


def row_location(row: int, image_ids: np.ndarray) -> str:
    """``h5 row R (image_id N)``: how problems of one VG150 image name it."""
    return f"h5 row {row} (image_id {int(image_ids[row])})"


def _owners(
    findings: Findings, first: np.ndarray, last: np.ndarray, total: int, what: str, ids: np.ndarray
) -> np.ndarray:
    """Row owning each of ``total`` entries (-1: none); records inconsistent first/last pairs."""
    owner = np.full(total, -1, dtype=np.int64)
    none = (first == -1) & (last == -1)
    valid = (first >= 0) & (first <= last) & (last < total)
    for row in np.flatnonzero(~(none | valid)).tolist():
        findings.error(
            "invalid_file",
            row_location(row, ids),
            f"img_to_first_{what}/img_to_last_{what} = {int(first[row])}/{int(last[row])} is not "
            f"a range inside 0..{total - 1} (or -1/-1 for none)",
            row,
        )
    for row in np.flatnonzero(valid).tolist():
        owner[first[row] : last[row] + 1] = row
    return owner


def _check_labels(
    findings: Findings, values: np.ndarray, owner: np.ndarray, count: int, code: str, key: str
) -> None:
    """Records owned 1-based values outside 1..count."""
    for j in np.flatnonzero((owner >= 0) & ((values < 1) | (values > count))).tolist():
        findings.error(
            code, f"{key}[{j}]", f"value {int(values[j])} is not in 1..{count}", int(owner[j])
        )


def _check_boxes(
    findings: Findings, arrays: VGArrays, owner: np.ndarray, sizes: np.ndarray, ids: np.ndarray
) -> None:
    """Empty boxes (errors), boxes off the canvas (errors) or past the scaled image (warnings)."""
    scale, key = arrays.box_scale, f"boxes_{arrays.box_scale}"
    empty = (arrays.boxes[:, 2] <= 0) | (arrays.boxes[:, 3] <= 0)
    for j in np.flatnonzero(empty & (owner >= 0)).tolist():
        findings.error(
            "empty_box",
            f"{key}[{j}]",
            f"box {arrays.boxes[j].tolist()} (cx, cy, w, h) has no area",
            int(owner[j]),
        )
    owned = np.flatnonzero((owner >= 0) & ~empty)
    xyxy = decode_vg_boxes(arrays.boxes[owned])
    wh = sizes[owner[owned]].astype(np.float64)
    extent = wh * scale / wh.max(axis=1, keepdims=True)
    tol = OUTSIDE_TOLERANCE
    off_canvas = (xyxy < -tol).any(axis=1) | (xyxy > scale + tol).any(axis=1)
    past_image = (xyxy[:, 2:] > extent + tol).any(axis=1) & ~off_canvas
    for k in np.flatnonzero(off_canvas | past_image).tolist():
        j, row = int(owned[k]), int(owner[owned[k]])
        add = findings.error if off_canvas[k] else findings.warn
        add(
            "box_outside_image",
            f"{key}[{j}] of {row_location(row, ids)}",
            f"box xyxy {xyxy[k].astype(int).tolist()} lies outside the "
            f"{'canvas' if off_canvas[k] else 'image'} ({scale}x{scale} canvas; the "
            f"{int(wh[k, 0])}x{int(wh[k, 1])} image is {extent[k, 0]:.0f}x{extent[k, 1]:.0f} "
            f"at scale {scale})",
            row,
        )


def _check_relations(
    findings: Findings, arrays: VGArrays, owner: np.ndarray, ids: np.ndarray
) -> None:
    """Records relations whose box indices leave their image's boxes."""
    owned = np.flatnonzero(owner >= 0)
    rows = owner[owned]
    pairs = arrays.pairs[owned]
    inside = (pairs >= arrays.first_box[rows, None]) & (pairs <= arrays.last_box[rows, None])
    for k in np.flatnonzero(~inside.all(axis=1)).tolist():
        row = int(rows[k])
        findings.error(
            "cross_image_relation",
            f"relationships[{int(owned[k])}] of {row_location(row, ids)}",
            f"box indices {pairs[k].tolist()} are not among the image's boxes "
            f"{int(arrays.first_box[row])}..{int(arrays.last_box[row])}",
            row,
        )


def check_vg150_arrays(
    findings: Findings,
    arrays: VGArrays,
    image_ids: np.ndarray,
    image_sizes: np.ndarray,
    *,
    num_classes: int,
    num_predicates: int,
) -> None:
    """Record every problem of the h5 rows (errors and warnings, see the module docstring).

    Args:
        findings: where problems go; each carries its h5 row as ``image``.
        arrays: the h5 datasets.
        image_ids: int64 [I] image id of each row (``image_data.json`` aligned with the rows).
        image_sizes: int64 [I, 2] (width, height) of each row's image in pixels.
        num_classes, num_predicates: label counts from the dicts file.
    """
    uniq, counts = np.unique(image_ids, return_counts=True)
    for image_id in uniq[counts > 1].tolist():
        findings.error(
            "duplicate_id", f"image_data.json image_id {image_id}", "image id listed more than once"
        )
    box_owner = _owners(
        findings, arrays.first_box, arrays.last_box, len(arrays.labels), "box", image_ids
    )
    rel_owner = _owners(
        findings, arrays.first_rel, arrays.last_rel, len(arrays.predicates), "rel", image_ids
    )
    _check_labels(findings, arrays.labels, box_owner, num_classes, "unknown_category", "labels")
    _check_labels(
        findings, arrays.predicates, rel_owner, num_predicates, "unknown_predicate", "predicates"
    )
    _check_boxes(findings, arrays, box_owner, image_sizes, image_ids)
    _check_relations(findings, arrays, rel_owner, image_ids)
    if len(image_ids) == 0:
        findings.error("no_images", "h5 split", "the h5 file has no image rows")
    no_rels = (arrays.first_box >= 0) & (arrays.first_rel < 0)
    for row in np.flatnonzero(no_rels).tolist():
        findings.warn("no_relations", row_location(row, image_ids), "image has no relation", row)
